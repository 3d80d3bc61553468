"""Reference inverse p-th root A^{-1/p} of symmetric positive (semi-)definite matrices.

The public entry point :func:`inverse_root` and the home of the inverse-root API; the two
methods live in their own modules, both batched over leading dimensions ``[..., d, d]`` and pure
PyTorch:

- **eigh** (ground truth, :mod:`tritonkron.math.eigh_root`): A^{-1/p} = Q diag(λ^{-1/p}) Qᵀ
  from A = Q diag(λ) Qᵀ, through a fallback ladder (float64 retry, then growing relative
  damping) so that a failing ``torch.linalg.eigh`` does not abort training.
- **newton_schulz** (:mod:`tritonkron.ops.inverse_root.reference`): the coupled Newton iteration of
  Guo & Higham (2006), the same iteration (unfused) that ``tritonkron.ops.inverse_root.triton`` runs:

      X₀ = I / c,   M₀ = A / cᵖ
      T_k = ((p+1) I − M_k) / p,   X_{k+1} = X_k T_k,   M_{k+1} = T_kᵖ M_k
      X_k → A^{-1/p},  M_k → I,  residual r_k = ‖M_k − I‖_F / √d

With ``method="newton_schulz"`` the members that do not converge fall back to eigh.

References:
    C.-H. Guo and N. J. Higham, "A Schur–Newton method for the matrix p-th root and its
    inverse", SIAM J. Matrix Anal. Appl. 28(3), 788–804, 2006.
"""

from __future__ import annotations

import enum
import logging
import math

from torch import Tensor

from tritonkron.math.checks import check_p, check_square
from tritonkron.math.eigh_root import EighFailure, EighResult, eigh_with_fallback, inverse_root_eigh
from tritonkron.ops.inverse_root.reference import (
    InverseRootResult,
    NewtonProgress,
    RootScaling,
    RootStatus,
    coupled_newton_init,
    coupled_newton_step,
    newton_schulz_inverse_root,
    spectral_bound,
)
from tritonkron.options import parse_enum

# The inverse-root API, importable from here whichever module implements it.
__all__ = [
    "EighFailure",
    "EighResult",
    "InverseRootResult",
    "NewtonProgress",
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


class RootMethod(str, enum.Enum):
    """How :func:`inverse_root` computes A^{-1/p}."""

    EIGH = "eigh"
    NEWTON_SCHULZ = "newton_schulz"


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
    check_square(A, finite=True)
    p = check_p(p)
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
