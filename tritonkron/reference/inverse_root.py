"""Reference inverse p-th root A^{-1/p} of symmetric positive (semi-)definite matrices.

Two methods, both batched over leading dimensions ``[..., d, d]`` and pure PyTorch:

- **eigh** (ground truth): A^{-1/p} = Q diag(λ^{-1/p}) Qᵀ from A = Q diag(λ) Qᵀ, through a fallback
  ladder (float64 retry, then growing relative damping) so that a failing ``torch.linalg.eigh``
  does not abort training.
- **newton_schulz**: the coupled Newton iteration of Guo & Higham (2006), the same iteration
  (unfused) that ``tritonkron.kernels.inverse_root`` runs:

      X₀ = I / c,   M₀ = A / cᵖ
      T_k = ((p+1) I − M_k) / p,   X_{k+1} = X_k T_k,   M_{k+1} = T_kᵖ M_k
      X_k → A^{-1/p},  M_k → I,  residual r_k = ‖M_k − I‖_F / √d

References:
    C.-H. Guo and N. J. Higham, "A Schur–Newton method for the matrix p-th root and its
    inverse", SIAM J. Matrix Anal. Appl. 28(3), 788–804, 2006.
    Distributed Shampoo (facebookresearch/optimizers), ``matrix_functions.py``, coupled Newton.
"""

from __future__ import annotations

import enum
import logging
import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from tritonkron.config import parse_enum

__all__ = [
    "NewtonProgress",
    "EighFailure",
    "EighResult",
    "InverseRootResult",
    "RootMethod",
    "RootNotConverged",
    "RootScaling",
    "RootStatus",
    "coupled_newton_init",
    "coupled_newton_step",
    "eigh_with_fallback",
    "inverse_root",
    "inverse_root_eigh",
    "newton_schulz_inverse_root",
    "spectral_bound",
]

logger = logging.getLogger(__name__)

_DAMPING_START_EXPONENT = -10  # first relative damping rung 1e-10; each next rung is 100× larger
_DIVERGENCE_GROWTH = 1.5  # residual above this multiple of its best value counts as growth …
_DIVERGENCE_PATIENCE = 3  # … and this many consecutive growing iterations mean DIVERGED
_BOUND_SQUARINGS = 3  # λ_max bound ‖A^8‖_F^{1/8}: at most d^{1/16}·λ_max (1.41× at d = 257)
_DEFAULT_TOL = {torch.float64: 1e-12, torch.float32: 1e-6}
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class RootStatus(str, enum.Enum):
    """Outcome of an iterative root computation (ordered from best to worst)."""

    CONVERGED = "converged"
    MAX_ITERS = "max_iters"
    DIVERGED = "diverged"


class RootMethod(str, enum.Enum):
    """How :func:`inverse_root` computes A^{-1/p}."""

    EIGH = "eigh"
    NEWTON_SCHULZ = "newton_schulz"


class RootScaling(str, enum.Enum):
    """Upper bound β ≥ λ_max(A) used to scale the coupled Newton start (cᵖ = β)."""

    LAMBDA_MAX = "lambda_max"
    FROBENIUS = "frobenius"
    TRACE = "trace"


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


class RootNotConverged(RuntimeError):
    """Newton–Schulz did not converge and ``fallback=False``; ``.result`` holds the details."""

    def __init__(self, result: InverseRootResult) -> None:
        bad = int((~result.converged).sum())
        super().__init__(
            f"newton_schulz did not converge for {bad} of {result.converged.numel()} matrices "
            f"(status={result.status.value}, max residual={float(result.residual.max()):.3e}, "
            f"iterations={result.iterations}); pass fallback=True to use eigh for them"
        )
        self.result = result


# ---------------------------------------------------------------------------------------------
# Argument checks and small helpers.
# ---------------------------------------------------------------------------------------------


def _check_matrix(A: object, name: str = "A") -> Tensor:
    if not isinstance(A, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(A).__name__}")
    if not A.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating-point dtype; got {A.dtype}")
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be square with shape [..., d, d]; got {list(A.shape)}")
    if not bool(torch.isfinite(A).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    return A


def _check_p(p: object) -> int:
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 1:
        raise ValueError(f"p must be a positive integer; got {p!r}")
    return int(p)


def _check_nonnegative(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number ≥ 0; got {value!r}")
    return float(value)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _symmetrize(A: Tensor) -> Tensor:
    return 0.5 * (A + A.transpose(-1, -2))


def _eye_like(A: Tensor) -> Tensor:
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def _frobenius(A: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(A, ord="fro")


# ---------------------------------------------------------------------------------------------
# eigh with a fallback ladder, and the eigh root.
# ---------------------------------------------------------------------------------------------


def _damping_scale(S: Tensor) -> Tensor:
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


def _eigh_ladder(S: Tensor, max_damping: float) -> EighResult:
    """Run the ladder on symmetric ``S`` (float32/64); results in the dtype of the accepted rung."""
    errors: list[str] = []
    rungs = _ladder(S.dtype, max_damping)
    for attempt, (dtype, delta) in enumerate(rungs, start=1):
        B = S.to(dtype)
        if delta > 0:
            B = B + (delta * _damping_scale(B))[..., None, None] * _eye_like(B)
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
    tried = ", ".join(
        f"{str(dt).removeprefix('torch.')}" + (f" + {d:g}·(tr A/d)·I" if d else "") for dt, d in rungs
    )
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
    _check_matrix(A)
    max_damping = _check_nonnegative(max_damping, "max_damping")
    res = _eigh_ladder(_symmetrize(A.to(_work_dtype(A.dtype))), max_damping)
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
    _check_matrix(A)
    p = _check_p(p)
    eps = _check_nonnegative(eps, "eps")
    work = _work_dtype(A.dtype)
    if A.numel() == 0:
        return torch.empty_like(A)
    res = _eigh_ladder(_symmetrize(A.to(work)), 1e-3)
    L, Q = res.eigenvalues, res.eigenvectors
    floor = (L[..., -1:] * torch.finfo(work).eps).clamp_min(max(eps, torch.finfo(work).tiny))
    w = torch.maximum(L, floor).pow(-1.0 / p)  # [..., d]
    return _symmetrize((Q * w.unsqueeze(-2)) @ Q.transpose(-1, -2)).to(A.dtype)


# ---------------------------------------------------------------------------------------------
# Coupled Newton (Newton–Schulz) iteration.
# ---------------------------------------------------------------------------------------------


def spectral_bound(A: Tensor, scaling: str | RootScaling = "lambda_max") -> Tensor:
    """Upper bound β ≥ λ_max(A) per matrix, used as cᵖ = β in :func:`coupled_newton_init`.

    - ``"lambda_max"``: β = ‖A^m‖_F^{1/m} with m = 2³ (three normalised squarings). For symmetric
      A, ‖A^m‖_F = (Σ_i |λ_i|^{2m})^{1/2} lies in [ρ^m, √d·ρ^m] (ρ = max_i |λ_i|), so
      ρ ≤ β ≤ d^{1/(2m)}·ρ: a guaranteed bound, tight up to d^{1/16}.
    - ``"frobenius"``: β = ‖A‖_F ≥ ρ (tight up to √d).
    - ``"trace"``: β = tr A, ≥ λ_max only for PSD A; where tr A ≤ 0 the Frobenius bound is used.

    Args:
        A: ``[..., d, d]`` symmetric.
        scaling: one of "lambda_max", "frobenius", "trace".

    Returns:
        ``[...]`` non-negative bounds (0 only for the zero matrix).
    """
    scaling = parse_enum(scaling, RootScaling, "scaling")
    s = A.abs().amax(dim=(-2, -1))  # normalise first so that the squares cannot overflow
    B = A / torch.where(s > 0, s, 1.0)[..., None, None]
    bound = _frobenius(B)
    if scaling is RootScaling.TRACE:
        trace = B.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
        bound = torch.where(trace > 0, trace, bound)
    elif scaling is RootScaling.LAMBDA_MAX:
        B = B / bound.clamp_min(torch.finfo(B.dtype).tiny)[..., None, None]
        for j in range(1, _BOUND_SQUARINGS + 1):
            B = B @ B
            n_j = _frobenius(B).clamp_min(torch.finfo(B.dtype).tiny)
            bound = bound * n_j ** (0.5**j)  # ‖A^{2^j}‖_F^{1/2^j} = s·n₀·Π n_i^{1/2^i}
            B = B / n_j[..., None, None]
    return bound * s


def coupled_newton_init(
    A: Tensor, p: int, *, scaling: str | RootScaling = "lambda_max"
) -> tuple[Tensor, Tensor]:
    """Start of the coupled Newton iteration: X₀ = I/c, M₀ = A/cᵖ with cᵖ = β = :func:`spectral_bound`.

    For SPD A, β ≥ λ_max puts spec(M₀) = {λ_i/β} in (0, 1] ⊂ (0, p+1), the convergence region
    (see :func:`newton_schulz_inverse_root`). β = 0 (the zero matrix) is replaced by 1.

    Args:
        A: ``[..., d, d]`` symmetric.
        p: root, a positive integer.
        scaling: how β is computed (see :func:`spectral_bound`).

    Returns:
        ``(X₀, M₀)``, both ``[..., d, d]`` in A's dtype.
    """
    beta = spectral_bound(A, scaling)
    beta = torch.where(beta > 0, beta, 1.0)[..., None, None]
    X0 = _eye_like(A) * beta.pow(-1.0 / p)
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
    p = _check_p(p)
    T = ((p + 1) * _eye_like(M) - M) / p
    X_new = X @ T
    T2 = T @ T
    M_new = M
    for _ in range(p // 2):
        M_new = T2 @ M_new
    if p % 2:
        M_new = T @ M_new
    return X_new, M_new


def _residual(M: Tensor) -> Tensor:
    """r = ‖M − I‖_F / √d per matrix ``[B]``."""
    return _frobenius(M - _eye_like(M)) / math.sqrt(M.shape[-1])


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
    _check_matrix(A)
    p = _check_p(p)
    if isinstance(max_iters, bool) or not isinstance(max_iters, numbers.Integral) or max_iters < 0:
        raise ValueError(f"max_iters must be an integer ≥ 0; got {max_iters!r}")
    work = _work_dtype(A.dtype)
    tol = _DEFAULT_TOL[work] if tol is None else _check_nonnegative(tol, "tol")
    scaling = parse_enum(scaling, RootScaling, "scaling")
    batch, d = A.shape[:-2], A.shape[-1]
    S = _symmetrize(A.to(work)).reshape(math.prod(batch), d, d)  # [B, d, d]
    if S.numel() == 0:
        ok = torch.ones(batch, dtype=torch.bool, device=A.device)
        return InverseRootResult(
            torch.empty_like(A), RootStatus.CONVERGED, torch.zeros(batch, dtype=work, device=A.device), 0, ok
        )

    X, M = coupled_newton_init(S, p, scaling=scaling)
    progress = NewtonProgress.start(X, _residual(M), tol)
    iterations = 0
    while iterations < max_iters and bool((active := progress.active()).any()):
        X_new, M_new = coupled_newton_step(X, M, p)
        iterations += 1
        keep = active[:, None, None]
        X, M = torch.where(keep, X_new, X), torch.where(keep, M_new, M)
        r = _residual(M)
        progress.record(X, r, torch.isfinite(r) & torch.isfinite(X).all(dim=-1).all(dim=-1), active)

    X_best, status = progress.X_best, progress.status()
    best, converged = progress.best, progress.converged
    root = _symmetrize(X_best).to(A.dtype).reshape(A.shape)
    return InverseRootResult(root, status, best.reshape(batch), iterations, converged.reshape(batch))


# ---------------------------------------------------------------------------------------------
# Public entry point.
# ---------------------------------------------------------------------------------------------

_METHOD_KWARGS = {
    RootMethod.EIGH: {"eps"},
    RootMethod.NEWTON_SCHULZ: {"eps", "fallback", "max_iters", "tol", "scaling"},
}


def inverse_root(A: Tensor, p: int, method: str | RootMethod = "eigh", **kwargs: object) -> Tensor:
    """Inverse p-th root A^{-1/p} of symmetric positive definite matrices ``[..., d, d]``.

    Args:
        A: ``[..., d, d]`` symmetric positive (semi-)definite, floating point.
        p: root, a positive integer (p = 2 and p = 4 are Shampoo's).
        method: "eigh" (:func:`inverse_root_eigh`) or "newton_schulz"
            (:func:`newton_schulz_inverse_root`).
        **kwargs: for "eigh": ``eps``. For "newton_schulz": ``max_iters``, ``tol``, ``scaling``,
            ``fallback`` (default True) and ``eps`` (used by the fallback). With ``fallback=True``
            the members that did not converge are recomputed with :func:`inverse_root_eigh`;
            with ``fallback=False`` :class:`RootNotConverged` is raised instead.

    Returns:
        ``[..., d, d]`` A^{-1/p} in A's dtype.

    Raises:
        ValueError: invalid A, p, method or option value.
        TypeError: a keyword argument the method does not take.
        RootNotConverged: "newton_schulz" with ``fallback=False`` did not converge.
        EighFailure: the eigh ladder failed.
    """
    method = parse_enum(method, RootMethod, "method")
    unknown = sorted(set(kwargs) - _METHOD_KWARGS[method])
    if unknown:
        allowed = sorted(_METHOD_KWARGS[method])
        raise TypeError(f"inverse_root(method={method.value!r}) got unexpected {unknown}; allowed: {allowed}")
    _check_matrix(A)
    p = _check_p(p)
    eps = kwargs.pop("eps", 0.0)
    if method is RootMethod.EIGH:
        return inverse_root_eigh(A, p, eps=eps)  # type: ignore[arg-type]
    fallback = kwargs.pop("fallback", True)
    if not isinstance(fallback, bool):
        raise ValueError(f"fallback must be a bool; got {fallback!r}")
    result = newton_schulz_inverse_root(A, p, **kwargs)  # type: ignore[arg-type]
    if result.status is RootStatus.CONVERGED:
        return result.root
    if not fallback:
        raise RootNotConverged(result)
    flat = (math.prod(A.shape[:-2]), A.shape[-1], A.shape[-1])
    bad = ~result.converged.reshape(-1)
    root = result.root.reshape(flat).clone()
    root[bad] = inverse_root_eigh(A.reshape(flat)[bad], p, eps=eps)  # type: ignore[arg-type]
    logger.debug("newton_schulz: %d of %d matrices fell back to eigh", int(bad.sum()), bad.numel())
    return root.reshape(A.shape)
