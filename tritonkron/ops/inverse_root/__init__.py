"""Inverse p-th roots A^{-1/p}: the public :func:`inverse_root` (eigh or Newton–Schulz, reference
maths) and :func:`newton_schulz_root`, the coupled Newton–Schulz iteration dispatched to Triton.

Reference: :mod:`tritonkron.ops.inverse_root.reference`; Triton: :mod:`tritonkron.ops.inverse_root.triton`;
the method choice and its fallbacks: :mod:`tritonkron.ops.inverse_root.methods`.
"""

from __future__ import annotations

from torch import Tensor

from tritonkron.ops import kernel_guard
from tritonkron.ops.backend import resolve_backend
from tritonkron.ops.inverse_root.methods import inverse_root
from tritonkron.ops.inverse_root.reference import InverseRootResult, newton_schulz_inverse_root

__all__ = ["inverse_root", "newton_schulz_root"]


def newton_schulz_root(
    A: Tensor, p: int, *, max_iters: int = 100, tol: float | None = None, backend: str | None = None
) -> InverseRootResult:
    """Coupled Newton–Schulz A^{-1/p} of a batch ``[B, d, d]``; returns an ``InverseRootResult``.

    The reference is :func:`tritonkron.ops.inverse_root.reference.newton_schulz_inverse_root`; the
    result carries a per-matrix residual and a convergence status so callers can fall back to eigh.
    """
    if resolve_backend(backend, A, op="inverse_root") == "reference":
        return newton_schulz_inverse_root(A, p, max_iters=max_iters, tol=tol)
    from tritonkron.ops.inverse_root.triton import newton_schulz_triton

    return kernel_guard.guarded(
        "inverse_root",
        lambda: newton_schulz_triton(A, p, max_iters=max_iters, tol=tol),
        lambda: newton_schulz_inverse_root(A, p, max_iters=max_iters, tol=tol),
        A,
    )
