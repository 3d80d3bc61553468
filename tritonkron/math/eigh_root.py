"""Reference eigendecomposition with a fallback ladder, and the eigh inverse root (ground truth).

- :func:`eigh_with_fallback`: S = Q diag(λ) Qᵀ for S = (A + Aᵀ)/2, retrying in float64 and then
  with growing relative damping, so that a failing ``torch.linalg.eigh`` does not abort training.
- :func:`inverse_root_eigh`: A^{-1/p} = Q diag(max(λ, λ_floor)^{-1/p}) Qᵀ from that decomposition.

Both are batched over leading dimensions ``[..., d, d]`` and pure PyTorch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from tritonkron.math.checks import (
    check_nonnegative,
    check_p,
    check_square,
    dtype_name,
    eye_like,
    symmetrize,
    work_dtype,
)

__all__ = [
    "EighFailure",
    "EighResult",
    "damping_scale",
    "eigh_ladder",
    "eigh_with_fallback",
    "inverse_root_eigh",
]

logger = logging.getLogger(__name__)

_DAMPING_START_EXPONENT = -10  # first relative damping rung 1e-10; each next rung is 100× larger
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class EighFailure(RuntimeError):
    """Every rung of the :func:`eigh_with_fallback` ladder failed."""


@dataclass(frozen=True)
class EighResult:
    """Eigendecomposition of (A + Aᵀ)/2 + damping·s·I (s = tr A / d, see :func:`eigh_with_fallback`).

    Attributes:
        eigenvalues: ``[..., d]`` ascending.
        eigenvectors: ``[..., d, d]`` orthonormal columns.
        attempts: number of ``torch.linalg.eigh`` calls made (1 when the first one succeeded).
        damping: relative damping δ finally added (0.0 if none).
        upcast: whether the accepted decomposition was computed in float64 for a non-float64 A.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    attempts: int
    damping: float
    upcast: bool


def damping_scale(S: Tensor) -> Tensor:
    """s = tr S / d per member ``[...]``; mean |diag S|, max |S_ij| or 1 where that is not positive."""
    diag = S.diagonal(dim1=-2, dim2=-1)
    scale = diag.mean(dim=-1)
    for fallback in (diag.abs().mean(dim=-1), S.abs().amax(dim=(-2, -1)), torch.ones_like(scale)):
        scale = torch.where(scale > 0, scale, fallback)
    return scale


def _ladder(dtype: torch.dtype, max_damping: float) -> list[tuple[torch.dtype, float]]:
    """Rungs (dtype, δ): A's work dtype, float64, then float64 with δ = 1e-10, 1e-8, … , max_damping."""
    rungs = [(dtype, 0.0)] + ([(torch.float64, 0.0)] if dtype != torch.float64 else [])
    exponent = _DAMPING_START_EXPONENT
    while 10.0**exponent < max_damping:
        rungs.append((torch.float64, 10.0**exponent))
        exponent += 2
    if max_damping > 0:
        rungs.append((torch.float64, max_damping))
    return rungs


def eigh_ladder(S: Tensor, max_damping: float) -> EighResult:
    """Run the ladder (:func:`eigh_with_fallback`) on symmetric ``S`` (float32/64, read like
    ``torch.linalg.eigh``: lower triangle); results in the dtype of the accepted rung.

    Raises:
        EighFailure: every rung raised or gave non-finite output.
    """
    errors: list[str] = []
    rungs = _ladder(S.dtype, max_damping)
    for attempt, (dtype, delta) in enumerate(rungs, start=1):
        B = S.to(dtype)
        if delta > 0:
            B = B + (delta * damping_scale(B))[..., None, None] * eye_like(B)
        try:
            L, Q = torch.linalg.eigh(B)
        except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
            if isinstance(err, _OOM):
                raise
            errors.append(f"{type(err).__name__}: {err}")
            continue
        if not (bool(torch.isfinite(L).all()) and bool(torch.isfinite(Q).all())):
            errors.append("non-finite eigendecomposition")
            continue
        if attempt > 1:
            logger.debug("eigh succeeded on attempt %d (%s, damping %g)", attempt, dtype, delta)
        return EighResult(L, Q, attempt, delta, dtype == torch.float64 and S.dtype != torch.float64)
    tried = ", ".join(dtype_name(dt) + (f" + {d:g}·(tr A/d)·I" if d else "") for dt, d in rungs)
    raise EighFailure(f"eigh failed in all {len(rungs)} attempts ({tried}); last error: {errors[-1]}")


def eigh_with_fallback(A: Tensor, *, max_damping: float = 1e-3) -> EighResult:
    """Eigendecomposition S = Q diag(λ) Qᵀ of S = (A + Aᵀ)/2 that retries instead of failing.

    Ladder (the first rung that does not raise and gives finite outputs is accepted):

    1. ``torch.linalg.eigh`` in A's dtype (float16/bfloat16 are computed in float32);
    2. in float64 (skipped for float64 A);
    3. in float64 on S + δ·s·I with s = tr S / d (mean |diag S| when the trace is not positive),
       δ = 1e-10, 1e-8, 1e-6, 1e-4, … (×100) and finally δ = ``max_damping``.

    The whole batch moves down the ladder together. The damped decomposition is returned as is
    (eigenvalues of S + δ·s·I; subtract δ·s to get S's, the eigenvectors are the same).

    Args:
        A: ``[..., d, d]`` symmetric matrices, floating point.
        max_damping: largest relative damping δ tried (0 disables the damping rungs).

    Returns:
        :class:`EighResult` with ``eigenvalues [..., d]`` (ascending) and ``eigenvectors
        [..., d, d]`` in A's dtype, the number of attempts, δ and whether float64 was used.

    Raises:
        ValueError: A is not a square floating-point tensor, or contains NaN/Inf (no ladder).
        EighFailure: every rung failed.
    """
    check_square(A, finite=True)
    max_damping = check_nonnegative(max_damping, "max_damping")
    res = eigh_ladder(symmetrize(A.to(work_dtype(A.dtype))), max_damping)
    return EighResult(
        res.eigenvalues.to(A.dtype), res.eigenvectors.to(A.dtype), res.attempts, res.damping, res.upcast
    )


def inverse_root_eigh(A: Tensor, p: int, *, eps: float = 0.0) -> Tensor:
    """A^{-1/p} = Q diag(max(λ, λ_floor)^{-1/p}) Qᵀ from :func:`eigh_with_fallback`.

    Floor rule: λ_floor = max(eps, ε_mach·λ_max, tiny), per matrix, with ε_mach and tiny of the
    work dtype (float32 or float64). Eigenvalues below ε_mach·λ_max are not resolved by eigh, so
    for PSD, rank-deficient or slightly indefinite input they are clamped (negative ones too) and
    the result stays finite. SPD input with ``eps=0`` and condition number below 1/ε_mach is not
    clamped at all: the result is the exact formula.

    Args:
        A: ``[..., d, d]`` symmetric positive (semi-)definite, floating point.
        p: root, a positive integer.
        eps: absolute eigenvalue floor (≥ 0).

    Returns:
        ``[..., d, d]`` symmetric A^{-1/p} in A's dtype (computed in float32/float64).

    Raises:
        ValueError: invalid A (non-square, not floating point, non-finite), p or eps.
        EighFailure: the eigh ladder failed.
    """
    check_square(A, finite=True)
    p = check_p(p)
    eps = check_nonnegative(eps, "eps")
    work = work_dtype(A.dtype)
    if A.numel() == 0:
        return torch.empty_like(A)
    res = eigh_ladder(symmetrize(A.to(work)), 1e-3)
    L, Q = res.eigenvalues, res.eigenvectors
    floor = (L[..., -1:] * torch.finfo(work).eps).clamp_min(max(eps, torch.finfo(work).tiny))
    w = torch.maximum(L, floor).pow(-1.0 / p)  # [..., d]
    return symmetrize((Q * w.unsqueeze(-2)) @ Q.transpose(-1, -2)).to(A.dtype)
