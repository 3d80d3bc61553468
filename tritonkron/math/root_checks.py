"""Argument checks and small matrix helpers shared by the inverse-root references.

Used by :mod:`tritonkron.math.eigh_root`, :mod:`tritonkron.ops.inverse_root.reference` and
:mod:`tritonkron.ops.inverse_root.methods`; every check raises ``ValueError`` naming the parameter.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = [
    "check_matrix",
    "check_nonnegative",
    "check_p",
    "eye_like",
    "frobenius",
    "symmetrize",
    "work_dtype",
]


def check_matrix(A: object, name: str = "A") -> Tensor:
    """Return ``A`` if it is a finite floating-point tensor of square matrices ``[..., d, d]``."""
    if not isinstance(A, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(A).__name__}")
    if not A.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating-point dtype; got {A.dtype}")
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be square with shape [..., d, d]; got {list(A.shape)}")
    if not bool(torch.isfinite(A).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    return A


def check_p(p: object) -> int:
    """The root p as an int if it is a positive integer (not a bool)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 1:
        raise ValueError(f"p must be a positive integer; got {p!r}")
    return int(p)


def check_nonnegative(value: object, name: str) -> float:
    """``value`` as a float if it is a finite real number ≥ 0 (not a bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number ≥ 0; got {value!r}")
    return float(value)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def symmetrize(A: Tensor) -> Tensor:
    """(A + Aᵀ)/2 over the last two dimensions."""
    return 0.5 * (A + A.transpose(-1, -2))


def eye_like(A: Tensor) -> Tensor:
    """I of size d × d with A's dtype and device (A: ``[..., d, d]``)."""
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def frobenius(A: Tensor) -> Tensor:
    """‖A‖_F = (Σ_ij A_ij²)^{1/2} per matrix ``[...]``."""
    return torch.linalg.matrix_norm(A, ord="fro")
