"""Reference coupled Newton (Newton–Schulz) iteration for the inverse p-th root A^{-1/p}.

The iteration of Guo & Higham (2006), unfused: exactly the iteration that
``tritonkron.ops.inverse_root.triton`` runs, so that tests can tell "the iteration is wrong" from
"the kernel is wrong"::

    X₀ = I / c,   M₀ = A / cᵖ
    T_k = ((p+1) I − M_k) / p,   X_{k+1} = X_k T_k,   M_{k+1} = T_kᵖ M_k
    X_k → A^{-1/p},  M_k → I,  residual r_k = ‖M_k − I‖_F / √d

Batched over leading dimensions ``[..., d, d]``, pure PyTorch. :class:`NewtonProgress` (the
per-member stopping rule) and the constants below are shared with the kernel.

References:
    C.-H. Guo and N. J. Higham, "A Schur–Newton method for the matrix p-th root and its
    inverse", SIAM J. Matrix Anal. Appl. 28(3), 788–804, 2006.
    Distributed Shampoo (facebookresearch/optimizers), ``matrix_functions.py``, coupled Newton.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from tritonkron.math.checks import (
    check_count,
    check_nonnegative,
    check_p,
    check_square,
    eye_like,
    frobenius,
    symmetrize,
    work_dtype,
)
from tritonkron.options import parse_enum

__all__ = [
    "BOUND_SQUARINGS",
    "InverseRootResult",
    "NewtonProgress",
    "RootScaling",
    "RootStatus",
    "Square",
    "check_newton_options",
    "coupled_newton_init",
    "coupled_newton_step",
    "newton_residual",
    "newton_schulz_inverse_root",
    "spectral_bound",
]

_DIVERGENCE_GROWTH = 1.5  # residual above this multiple of its best value counts as growth …
_DIVERGENCE_PATIENCE = 3  # … and this many consecutive growing iterations mean DIVERGED
BOUND_SQUARINGS = 3  # λ_max bound ‖A^8‖_F^{1/8}: at most d^{1/16}·λ_max (1.41× at d = 257)
_DEFAULT_TOL = {torch.float64: 1e-12, torch.float32: 1e-6}

Square = Callable[[Tensor], Tensor]
"""B ↦ B² of symmetric ``[B, d, d]`` matrices (the λ_max bound's squarings)."""


class RootStatus(str, enum.Enum):
    """Outcome of an iterative root computation (ordered from best to worst)."""

    CONVERGED = "converged"
    MAX_ITERS = "max_iters"
    DIVERGED = "diverged"


class RootScaling(str, enum.Enum):
    """Upper bound β ≥ λ_max(A) used to scale the coupled Newton start (cᵖ = β)."""

    LAMBDA_MAX = "lambda_max"
    FROBENIUS = "frobenius"
    TRACE = "trace"


@dataclass(frozen=True)
class InverseRootResult:
    """Result of :func:`newton_schulz_inverse_root`.

    Attributes:
        root: ``[..., d, d]`` in A's dtype; per member, the iterate with the smallest residual.
        status: the worst status over the batch (DIVERGED > MAX_ITERS > CONVERGED).
        residual: ``[...]`` residual ‖M − I‖_F/√d of the returned root of each member.
        iterations: number of iteration steps run (the most any member needed).
        converged: ``[...]`` bool, whether each member reached the tolerance.
    """

    root: Tensor
    status: RootStatus
    residual: Tensor
    iterations: int
    converged: Tensor


def _matmul_square(B: Tensor) -> Tensor:
    """B² by ``torch.matmul``."""
    return B @ B


def spectral_bound(
    A: Tensor, scaling: str | RootScaling = "lambda_max", *, square: Square = _matmul_square
) -> Tensor:
    """Upper bound β ≥ λ_max(A) per matrix, used as cᵖ = β in :func:`coupled_newton_init`.

    - ``"lambda_max"``: β = ‖A^m‖_F^{1/m} with m = 2³ (three normalised squarings). For symmetric
      A, ‖A^m‖_F = (Σ_i |λ_i|^{2m})^{1/2} lies in [ρ^m, √d·ρ^m] (ρ = max_i |λ_i|), so
      ρ ≤ β ≤ d^{1/(2m)}·ρ: a guaranteed bound, tight up to d^{1/16}.
    - ``"frobenius"``: β = ‖A‖_F ≥ ρ (tight up to √d).
    - ``"trace"``: β = tr A, ≥ λ_max only for PSD A; where tr A ≤ 0 the Frobenius bound is used.

    Args:
        A: ``[..., d, d]`` symmetric.
        scaling: one of "lambda_max", "frobenius", "trace".
        square: B ↦ B² for the squarings (``torch.matmul``; the Triton launcher passes its kernel).

    Returns:
        ``[...]`` non-negative bounds (0 only for the zero matrix).
    """
    scaling = parse_enum(scaling, RootScaling, "scaling")
    s = A.abs().amax(dim=(-2, -1))  # normalise first so that the squares cannot overflow
    B = A / torch.where(s > 0, s, 1.0)[..., None, None]
    bound = frobenius(B)
    if scaling is RootScaling.TRACE:
        trace = B.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
        bound = torch.where(trace > 0, trace, bound)
    elif scaling is RootScaling.LAMBDA_MAX:
        B = B / bound.clamp_min(torch.finfo(B.dtype).tiny)[..., None, None]
        for j in range(1, BOUND_SQUARINGS + 1):
            B = square(B)
            n_j = frobenius(B).clamp_min(torch.finfo(B.dtype).tiny)
            bound = bound * n_j ** (0.5**j)  # ‖A^{2^j}‖_F^{1/2^j} = s·n₀·Π n_i^{1/2^i}
            B = B / n_j[..., None, None]
    return bound * s


def coupled_newton_init(
    A: Tensor, p: int, *, scaling: str | RootScaling = "lambda_max", square: Square = _matmul_square
) -> tuple[Tensor, Tensor]:
    """Start of the coupled Newton iteration: X₀ = I/c, M₀ = A/cᵖ with cᵖ = β = :func:`spectral_bound`.

    For SPD A, β ≥ λ_max puts spec(M₀) = {λ_i/β} in (0, 1] ⊂ (0, p+1), the convergence region
    (see :func:`newton_schulz_inverse_root`). β = 0 (the zero matrix) is replaced by 1.

    Args:
        A: ``[..., d, d]`` symmetric.
        p: root, a positive integer.
        scaling: how β is computed (see :func:`spectral_bound`).
        square: B ↦ B² for the bound's squarings (see :func:`spectral_bound`).

    Returns:
        ``(X₀, M₀)``, both ``[..., d, d]`` in A's dtype.
    """
    beta = spectral_bound(A, scaling, square=square)
    beta = torch.where(beta > 0, beta, 1.0)[..., None, None]
    X0 = eye_like(A) * beta.pow(-1.0 / p)
    return X0.expand_as(A).clone(), A / beta


def coupled_newton_step(X: Tensor, M: Tensor, p: int) -> tuple[Tensor, Tensor]:
    """One unfused coupled Newton step: T = ((p+1) I − M)/p,  X ← X T,  M ← Tᵖ M.

    Tᵖ M is applied as repeated left multiplication by T² (then T once if p is odd): for p = 4
    that is T² (T² M), the order the Triton kernel uses.

    Args:
        X: ``[..., d, d]`` root iterate.
        M: ``[..., d, d]`` coupled iterate (→ I).
        p: root, a positive integer.

    Returns:
        ``(X_new, M_new)``, ``[..., d, d]`` each.
    """
    p = check_p(p)
    T = ((p + 1) * eye_like(M) - M) / p
    X_new = X @ T
    T2 = T @ T
    M_new = M
    for _ in range(p // 2):
        M_new = T2 @ M_new
    if p % 2:
        M_new = T @ M_new
    return X_new, M_new


def newton_residual(M: Tensor) -> Tensor:
    """r = ‖M − I‖_F / √d per matrix ``[B]``."""
    return frobenius(M - eye_like(M)) / math.sqrt(M.shape[-1])


def check_newton_options(
    max_iters: object, tol: object, scaling: object, work: torch.dtype
) -> tuple[int, float, RootScaling]:
    """(max_iters, tol, scaling) checked; tol None → the default of the work dtype (1e-6 float32,
    1e-12 float64).

    Raises:
        ValueError: max_iters not an integer ≥ 0, tol not a finite number ≥ 0, unknown scaling.
    """
    max_iters = check_count(max_iters, "max_iters")
    tol = _DEFAULT_TOL[work] if tol is None else check_nonnegative(tol, "tol")
    return max_iters, tol, parse_enum(scaling, RootScaling, "scaling")


@dataclass
class NewtonProgress:
    """Per-member bookkeeping of a batched Newton iteration (shared by the reference and the kernel).

    A member converges when its residual r ≤ tol; it diverges when r or X becomes non-finite or r
    stays above ``_DIVERGENCE_GROWTH`` × its best value for ``_DIVERGENCE_PATIENCE`` consecutive
    steps. Each member keeps the iterate with its smallest residual.
    """

    best: Tensor
    X_best: Tensor
    converged: Tensor
    diverged: Tensor
    strikes: Tensor
    tol: float

    @classmethod
    def start(cls, X: Tensor, residual: Tensor, tol: float) -> NewtonProgress:
        """State before the first step, from the initial iterate X₀ and its residual ``[B]``."""
        return cls(
            residual,
            X,
            residual <= tol,
            ~torch.isfinite(residual),
            torch.zeros_like(residual, dtype=torch.int64),
            tol,
        )

    def active(self) -> Tensor:
        """Members still iterating ``[B]``."""
        return ~(self.converged | self.diverged)

    def record(self, X: Tensor, r: Tensor, finite: Tensor, active: Tensor) -> None:
        """Account one step: new iterates X ``[B, d, d]``, residuals r and finiteness ``[B]``."""
        improved = active & finite & (r < self.best)
        self.best = torch.where(improved, r, self.best)
        self.X_best = torch.where(improved[:, None, None], X, self.X_best)
        growing = active & finite & (r > _DIVERGENCE_GROWTH * self.best)
        self.strikes = torch.where(growing, self.strikes + 1, torch.where(active, 0, self.strikes))
        self.diverged = self.diverged | (active & (~finite | (self.strikes >= _DIVERGENCE_PATIENCE)))
        self.converged = self.converged | (active & finite & (r <= self.tol))

    def status(self) -> RootStatus:
        """The worst status over the batch."""
        if bool(self.diverged.any()):
            return RootStatus.DIVERGED
        if bool(self.converged.all()):
            return RootStatus.CONVERGED
        return RootStatus.MAX_ITERS


def newton_schulz_inverse_root(
    A: Tensor,
    p: int,
    *,
    max_iters: int = 100,
    tol: float | None = None,
    scaling: str | RootScaling = "lambda_max",
) -> InverseRootResult:
    """Inverse p-th root by the coupled Newton iteration (Guo & Higham 2006), batched.

    With cᵖ = β ≥ λ_max(A) (:func:`spectral_bound`):

        X₀ = I/c,  M₀ = A/cᵖ;   T_k = ((p+1) I − M_k)/p,  X_{k+1} = X_k T_k,  M_{k+1} = T_kᵖ M_k.

    Why it converges: all iterates are polynomials in A, so they share A's eigenvectors, and
    M_k = X_kᵖ A. Each eigenvalue of M follows m ↦ f(m) = m((p+1−m)/p)ᵖ, which on (0, p+1) is
    positive, increasing on (0, 1], decreasing on [1, p+1) with f(1) = 1. So f maps (0, p+1) into
    (0, 1] and f(m) > m on (0, 1): every m_k rises monotonically to 1 (linearly, by ≈((p+1)/p)ᵖ
    while small, then quadratically), M_k → I and X_k → A^{-1/p}. For SPD A, β ≥ λ_max puts
    spec(M₀) in (0, 1]. A negative eigenvalue moves away from 0 (m < 0 ⇒ f(m) < m) ever faster,
    so indefinite input diverges.

    Stopping: r_k = ‖M_k − I‖_F/√d per member. A member converges when r_k ≤ tol; it diverges when
    r_k or X_k is non-finite, or r_k > 1.5·min_{j≤k} r_j for 3 consecutive steps. Converged and
    diverged members are frozen; the loop ends when none is left or after ``max_iters`` steps.

    Args:
        A: ``[..., d, d]`` symmetric positive definite, floating point (symmetrised as (A+Aᵀ)/2;
            float16/bfloat16 are computed in float32).
        p: root, a positive integer.
        max_iters: maximum number of steps (≥ 0).
        tol: residual tolerance; None → 1e-6 (float32 work dtype) or 1e-12 (float64).
        scaling: "lambda_max" (default), "frobenius" or "trace" (see :func:`spectral_bound`).

    Returns:
        :class:`InverseRootResult`; ``root`` holds, per member, the iterate with the smallest
        residual (the last good X of a diverging member), in A's dtype.

    Raises:
        ValueError: invalid A, p, max_iters, tol or scaling.
    """
    check_square(A, finite=True)
    p = check_p(p)
    work = work_dtype(A.dtype)
    max_iters, tol, scaling = check_newton_options(max_iters, tol, scaling, work)
    batch, d = A.shape[:-2], A.shape[-1]
    S = symmetrize(A.to(work)).reshape(math.prod(batch), d, d)  # [B, d, d]
    if S.numel() == 0:
        ok = torch.ones(batch, dtype=torch.bool, device=A.device)
        return InverseRootResult(
            torch.empty_like(A), RootStatus.CONVERGED, torch.zeros(batch, dtype=work, device=A.device), 0, ok
        )

    X, M = coupled_newton_init(S, p, scaling=scaling)
    progress = NewtonProgress.start(X, newton_residual(M), tol)
    iterations = 0
    while iterations < max_iters and bool((active := progress.active()).any()):
        X_new, M_new = coupled_newton_step(X, M, p)
        iterations += 1
        keep = active[:, None, None]
        X, M = torch.where(keep, X_new, X), torch.where(keep, M_new, M)
        r = newton_residual(M)
        progress.record(X, r, torch.isfinite(r) & torch.isfinite(X).all(dim=-1).all(dim=-1), active)

    X_best, status = progress.X_best, progress.status()
    best, converged = progress.best, progress.converged
    root = symmetrize(X_best).to(A.dtype).reshape(A.shape)
    return InverseRootResult(root, status, best.reshape(batch), iterations, converged.reshape(batch))
