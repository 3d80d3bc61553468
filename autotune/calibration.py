"""Calibration: the factor spectra of a short real training run of the user's model.

Calibration (:func:`calibrate`): train the user's model for a few steps with ``tk.Kron(rank=None)``
on real batches, then take each block's factor spectrum as the eigenvalues of the factor
statistics ``factor_a``/``factor_b`` (exact ``eigvalsh``; the tracked ``eig_a``/``eig_b`` are
Rayleigh quotients in a basis refreshed only every T steps, which flattens the spectrum by
Schur–Horn, so they are the fallback when no factor is stored).

The spectra feed the rank rule (:mod:`autotune.rank_rule`) and the sketched choice
(:mod:`autotune.sketch_choice`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import tritonkron as tk
from tritonkron.optim import BLOCKS
from tritonkron.state import EIG_A, EIG_B, FACTOR_A, FACTOR_B, READY

__all__ = ["Calibration", "ParamSpectra", "calibrate", "calibration_beta2"]


@dataclass(frozen=True)
class ParamSpectra:
    """Factor spectra of one matrix parameter after calibration.

    Attributes:
        name: the parameter's name in the model.
        shape: the parameter's shape.
        dtype: the parameter's dtype.
        block_size: the block size it was calibrated with.
        spectra_a: per block group, descending eigenvalues of factor A ``[B, m]`` (ready blocks).
        spectra_b: per block group, descending eigenvalues of factor B ``[B, n]``.
        factors_a: per block group, factor A ``[B, m, m]`` (None when the state has no factor).
        factors_b: per block group, factor B ``[B, n, n]`` (or None).
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    block_size: int
    spectra_a: tuple[Tensor, ...]
    spectra_b: tuple[Tensor, ...]
    factors_a: tuple[Tensor | None, ...]
    factors_b: tuple[Tensor | None, ...]


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`: spectra per matrix parameter and the loss curve."""

    spectra: tuple[ParamSpectra, ...]
    losses: tuple[float, ...]


def calibration_beta2(steps: int, cap: float = 0.98) -> float:
    """Statistics retention β₂ for a calibration of ``steps`` steps: min(cap, 0.01^(1/steps)).

    A block's statistics start from its first gradient with floored eigenvalues (docs/maths.md §4.3);
    with this β₂ that start weighs at most 1 % after ``steps`` steps, so the floor does not
    masquerade as a flat tail; longer calibrations are capped at ``cap``.
    """
    if steps < 2:
        raise ValueError(f"calibration needs at least 2 steps; got {steps}")
    return min(cap, 0.01 ** (1.0 / (steps - 1)))


def _descending(factor: Tensor | None, tracked: Tensor) -> Tensor:
    """A block factor's spectrum, descending: the float64 eigenvalues of the stored ``factor`` (as
    float32), else the ``tracked`` eigenvalues of a rotated factor."""
    values = tracked if factor is None else torch.linalg.eigvalsh(factor.to(torch.float64)).to(torch.float32)
    return values.sort(dim=-1, descending=True).values


def calibrate(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    steps: int,
    block_sizes: Mapping[str, int],
    *,
    lr: float = 3e-4,
    divergence: str = "logdet",
    precondition_every: int = 10,
    on_step: Callable[[int, float], None] | None = None,
) -> Calibration:
    """Train ``model`` for ``steps`` steps with ``tk.Kron(rank=None)`` and read its factor spectra.

    Args:
        model: the user's model (it is trained in place).
        loss_fn: ``loss_fn(model)`` → scalar loss on a fresh batch of real data.
        steps: calibration steps (≥ 2).
        block_sizes: block size per parameter name (``model.named_parameters()``); absent names
            get 1024.
        lr: learning rate of the calibration run.
        divergence: factor rule whose statistics are measured.
        precondition_every: basis refresh period.
        on_step: called as ``on_step(step, loss)`` after each step.

    Returns:
        The spectra of every matrix parameter that received a non-zero gradient.

    Raises:
        ValueError: a non-scalar or non-finite loss.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    matrices = [(name, p) for name, p in named if p.dim() >= 2 and p.numel() > 0]
    others = [p for _, p in named if p.dim() < 2 or p.numel() == 0]
    groups: list[dict] = [{"params": [p], "block_size": block_sizes.get(name, 1024)} for name, p in matrices]
    if others:
        groups.append({"params": others})
    beta2 = calibration_beta2(steps)
    # β₂ follows the calibration's short horizon, often ≤ β₁², where Adam's bound does not exist;
    # the spectra are those of the unbounded direction's trajectory.
    opt = tk.Kron(
        groups,
        lr=lr,
        betas=(0.9, beta2),
        divergence=divergence,
        precondition_every=precondition_every,
        bound=None,
    )
    losses: list[float] = []
    model.train()
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn(model) must return a scalar tensor; got {type(loss).__name__}")
        if not bool(torch.isfinite(loss)):
            raise ValueError(f"calibration loss is not finite at step {step}: {float(loss)}")
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    spectra = [_param_spectra(name, p, opt, block_sizes.get(name, 1024)) for name, p in matrices]
    return Calibration(tuple(s for s in spectra if s is not None), tuple(losses))


def _param_spectra(name: str, p: Tensor, opt: tk.Kron, block_size: int) -> ParamSpectra | None:
    state = opt.state.get(p, {})
    if BLOCKS not in state:
        return None
    spectra_a, spectra_b, factors_a, factors_b = [], [], [], []
    for group in state[BLOCKS]:
        ready = group[READY]
        if not bool(ready.any()):
            continue
        fa = group[FACTOR_A][ready] if FACTOR_A in group else None
        fb = group[FACTOR_B][ready] if FACTOR_B in group else None
        spectra_a.append(_descending(fa, group[EIG_A][ready]))
        spectra_b.append(_descending(fb, group[EIG_B][ready]))
        factors_a.append(fa)
        factors_b.append(fb)
    if not spectra_a:
        return None
    return ParamSpectra(
        name,
        tuple(p.shape),
        p.dtype,
        block_size,
        tuple(spectra_a),
        tuple(spectra_b),
        tuple(factors_a),
        tuple(factors_b),
    )
