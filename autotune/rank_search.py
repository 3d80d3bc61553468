"""Rank search: calibrate the user's model, then set each shape's ranks, Newton–Schulz steps and sketched ranks.

Steps 2–4 of :mod:`autotune.search` (the rules are in :mod:`autotune.rank`):

2. **Ranks** (:mod:`autotune.rank`): one calibration run of the user's model and data with
   ``tk.Kron(rank=None)`` at the chosen block sizes, then the rank rule per factor.
3. **Newton–Schulz steps**: iterations of the coupled Newton inverse square root to reach the
   residual target ``ns_tol`` on the calibrated factors (``knobs["ns_steps_a"/"ns_steps_b"]``).
4. **Sketched ranks** (``sketch``, on by default): the choice for ``tk.Kron(rank="auto",
   sketch=True)``. Its block size is :func:`autotune.space.sketch_block_size` (the unsplit
   largest dim up to 4096); when that differs from the dense block of some shape, a second
   calibration from the same initial weights gives the spectra at the sketched layout. Then
   :func:`autotune.sketch_choice.sketch_ranks` picks k_A, k_B and the sketch rank ℓ under the
   cost cap ℓ ≤ max(``sketch_budget`` · max(m, n), 32).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from autotune import space
from autotune.calibration import ParamSpectra, calibrate
from autotune.rank_rule import layer_ranks
from autotune.search_types import Reporter, SearchOptions, ShapeResult
from autotune.sketch_choice import sketch_ranks
from tritonkron.ops.inverse_root.methods import RootStatus, newton_schulz_inverse_root


def _ns_steps(factors: list[Tensor], tol: float) -> int | None:
    """Newton–Schulz iterations to reach residual ``tol`` on every factor (None: not within 100)."""
    steps = 0
    for X in factors:
        result = newton_schulz_inverse_root(X.float(), 2, max_iters=100, tol=tol)
        if result.status is not RootStatus.CONVERGED:
            return None
        steps = max(steps, result.iterations)
    return steps


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of ``model.state_dict()`` (to restore the weights after a calibration)."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _calibrated_spectra(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    opts: SearchOptions,
    block_sizes: dict[str, int],
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[tuple[float, ...], dict[str, ParamSpectra]]:
    """Calibrate at ``block_sizes`` with the options' steps, learning rate, divergence and
    preconditioning period; returns the losses and the spectra by parameter name."""
    calibration = calibrate(
        model,
        loss_fn,
        opts.steps,
        block_sizes,
        lr=opts.lr,
        divergence=opts.divergence,
        precondition_every=opts.precondition_every,
        on_step=on_step,
    )
    return calibration.losses, {ps.name: ps for ps in calibration.spectra}


def _spectra_of(result: ShapeResult, by_name: dict[str, ParamSpectra]) -> list[ParamSpectra]:
    """The calibrated spectra of the parameters of ``result``'s shape."""
    return [by_name[name] for name in result.names if name in by_name]


def _tune_ranks(
    results: list[ShapeResult],
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    opts: SearchOptions,
    reporter: Reporter,
) -> tuple[float, ...]:
    """Calibrate at the chosen block sizes, then set ranks and Newton–Schulz steps per shape.

    With ``opts.sketch`` also the sketched choice of every shape, from a second calibration (from
    the same initial weights) when some shape's sketched block size differs from its dense one.
    """
    initial = _state_copy(model)
    losses, by_name = _calibrated_spectra(
        model,
        loss_fn,
        opts,
        {name: r.block_size for r in results for name in r.names},
        on_step=lambda step, loss: reporter.advance(f"calibration step {step} loss {loss:.4g}"),
    )
    for r in results:
        spectra = _spectra_of(r, by_name)
        if spectra:
            r.rank_a, r.rank_b = layer_ranks(spectra, opts.mass, opts.flatness, opts.rank_budget)
            for side in ("a", "b"):
                factors = [f for ps in spectra for f in getattr(ps, f"factors_{side}") if f is not None]
                r.knobs[f"ns_steps_{side}"] = _ns_steps(factors, opts.ns_tol) if factors else None
        ranks = f"{r.rank_a.rank if r.rank_a else '-'}/{r.rank_b.rank if r.rank_b else '-'}"
        reporter.advance(f"{r.shape[0]}x{r.shape[1]}: ranks {ranks}")
    if opts.sketch:
        _tune_sketch(results, model, loss_fn, opts, reporter, initial, by_name)
    return losses


def _tune_sketch(
    results: list[ShapeResult],
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    opts: SearchOptions,
    reporter: Reporter,
    initial: dict[str, Tensor],
    dense: dict[str, ParamSpectra],
) -> None:
    """Set each shape's sketched block size, ranks and ℓ (step 4 of the module docstring)."""
    for r in results:
        r.sketch_block = space.sketch_block_size(r.shape, r.block_size)
    by_name = dense
    if any(r.sketch_block != r.block_size for r in results):
        current = _state_copy(model)
        model.load_state_dict(initial)
        _, by_name = _calibrated_spectra(
            model, loss_fn, opts, {name: r.sketch_block for r in results for name in r.names}
        )
        model.load_state_dict(current)  # the model ends as after the dense calibration
    reporter.advance("sketch calibration " + ("done" if by_name is not dense else "reused"))
    for r in results:
        spectra = _spectra_of(r, by_name)
        if spectra:
            r.sketch = sketch_ranks(spectra, opts.mass, opts.flatness, opts.sketch_budget)
            label = f"k {r.sketch.rank_a.rank}/{r.sketch.rank_b.rank}, ℓ {r.sketch.sketch_rank}"
        else:
            label = "no spectra"
        reporter.advance(f"{r.shape[0]}x{r.shape[1]}: sketch {label}")
