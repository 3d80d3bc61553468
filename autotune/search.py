"""Per-shape search: block size, calibrated ranks, kernel configs and CPU knobs → tuning entries.

For each distinct (matrix shape, dtype) of a model's matrix parameters, in this order:

1. **Block size** (:func:`choose_block_size`): every candidate of
   :func:`autotune.space.block_size_candidates` is run as a real ``tk.Kron`` step on a
   stand-alone parameter of that shape (fresh per candidate), timed over whole refresh cycles,
   and its optimizer state counted. Larger blocks precondition more cross-correlations (a
   block ignores those between blocks), so the choice is the *largest* candidate whose state
   stays within ``memory_budget`` floats per parameter element and whose step time stays within
   ``time_budget`` × the fastest candidate's; the least-memory candidate if none fits.
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
5. **Kernel configs** (CUDA, or forced): every op of :data:`autotune.space.KERNEL_OPS` on the
   largest block stack, each config timed on its own fresh inputs; the winner is kept only when
   its output matches the default launch's on identical inputs.
6. **Predictions**: step time and optimizer-state bytes at full rank, at the tuned rank (dense
   factors) and with ``sketch=True`` at the sketched choice (without it: the dense ranks, ℓ = 2k).
7. **CPU knobs** (CPU only): thread count and inverse-root method (eigh vs Newton–Schulz).

This module runs the steps in that order (:func:`tune_model`). The steps themselves live in
:mod:`autotune.step_timing` (1, 6, 7), :mod:`autotune.rank_search` (2–4) and
:mod:`autotune.kernel_search` (5); the options and result records in :mod:`autotune.search_types`.
All public names are importable from here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from autotune.kernel_search import tune_kernel, tune_shape_kernels
from autotune.measure import cpu_threads
from autotune.rank_search import _tune_ranks
from autotune.search_types import KernelResult, Reporter, SearchOptions, ShapeResult, TuneResult
from autotune.step_timing import _cpu_knobs, _predict, choose_block_size
from tritonkron._env import triton_interpret
from tritonkron.kernels import HAS_TRITON
from tritonkron.reference.blocking import matrix_shape
from tritonkron.tuning import TuningTable, device_name, dtype_name

__all__ = [
    "KernelResult",
    "Reporter",
    "SearchOptions",
    "ShapeResult",
    "TuneResult",
    "choose_block_size",
    "tune_kernel",
    "tune_model",
    "tune_shape_kernels",
]

Key = tuple[tuple[int, int], str]  # (matrix shape, dtype name)


class _Silent:
    def start(self, total: int) -> None:
        del total

    def advance(self, label: str) -> None:
        del label


def _shapes(model: nn.Module) -> dict[Key, ShapeResult]:
    shapes: dict[Key, ShapeResult] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or p.dim() < 2 or p.numel() == 0:
            continue
        shape = matrix_shape(p.shape)
        key = (shape, dtype_name(p.dtype))
        shapes.setdefault(key, ShapeResult(shape=shape, dtype=p.dtype, names=[])).names.append(name)
    return shapes


def tune_model(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    opts: SearchOptions | None = None,
    reporter: Reporter | None = None,
) -> TuneResult:
    """Tune every matrix-parameter shape of ``model`` (steps in the module docstring).

    Args:
        model: the user's model, on the device to tune for (it is trained by the calibration).
        loss_fn: ``loss_fn(model)`` → scalar loss on a fresh batch of real data.
        opts: search options.
        reporter: progress sink.

    Returns:
        The tuning table (not yet saved) and the per-shape details.

    Raises:
        ValueError: the model has no matrix parameters, calibration failed, or a kernel search was
            requested where Triton cannot run.
    """
    opts = opts or SearchOptions()
    reporter = reporter or _Silent()
    shapes = _shapes(model)
    if not shapes:
        raise ValueError("the model has no trainable parameters with ≥ 2 dims: nothing to tune")
    device = next(model.parameters()).device
    kernels = opts.tune_kernels if opts.tune_kernels is not None else device.type == "cuda" and HAS_TRITON
    if kernels and not (HAS_TRITON and (device.type == "cuda" or triton_interpret())):
        raise ValueError("kernel search needs Triton and a CUDA model (or TRITON_INTERPRET=1 on the CPU)")
    results = list(shapes.values())
    reporter.start(len(results) * (4 + opts.sketch) + opts.steps + opts.sketch + (device.type == "cpu"))
    threads = torch.get_num_threads()
    if device.type == "cpu":
        cpu = _cpu_knobs(results, device, opts)
        for r in results:
            r.knobs.update(cpu)
        threads = cpu["cpu_threads"]
        reporter.advance(f"cpu: {threads} threads, inverse root by {cpu['root_method']}")
    with cpu_threads(threads):
        for r in results:
            choose_block_size(r, device, opts)
            reporter.advance(f"{r.shape[0]}x{r.shape[1]}: block size {r.block_size}")
        losses = _tune_ranks(results, model, loss_fn, opts, reporter)
        for r in results:
            if kernels and r.dtype != torch.float64:
                tune_shape_kernels(r, device, opts)
            reporter.advance(f"{r.shape[0]}x{r.shape[1]}: kernels {'tuned' if r.kernels else 'skipped'}")
        for r in results:
            _predict(r, device, opts)
            reporter.advance(f"{r.shape[0]}x{r.shape[1]}: predicted step time and memory")
    table = TuningTable(device=device_name(device), entries=[r.entry() for r in results])
    return TuneResult(table, tuple(results), losses)
