"""Rotation into and out of a pair of bases, X̂ = Q_Aᵀ X Q_B and X = Q_A X̂ Q_Bᵀ, dispatched.

Reference: :mod:`tritonkron.ops.rotation.reference`; Triton: :mod:`tritonkron.ops.rotation.triton`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.ops.backend import resolve_backend
from tritonkron.ops.precision import check_precision
from tritonkron.ops.rotation import reference

__all__ = ["rotate", "rotate_back"]


def rotate(
    X: Tensor, Q_A: Tensor, Q_B: Tensor, *, backend: str | None = None, precision: str = "ieee"
) -> Tensor:
    """X̂ = Q_Aᵀ X Q_B (``[B, m, n]``); see :mod:`tritonkron.ops.rotation.reference`. ``precision``
    is the products' policy (:mod:`tritonkron.ops.precision`)."""
    precision = check_precision(precision)
    if resolve_backend(backend, X, Q_A, Q_B, op="rotate") == "reference":
        return reference.rotate_ref(X, Q_A, Q_B, precision)
    return torch.ops.tritonkron.rotate(X, Q_A, Q_B, False, precision)


def rotate_back(
    X_hat: Tensor, Q_A: Tensor, Q_B: Tensor, *, backend: str | None = None, precision: str = "ieee"
) -> Tensor:
    """X = Q_A X̂ Q_Bᵀ (``[B, m, n]``), the inverse of :func:`rotate` for orthogonal bases."""
    precision = check_precision(precision)
    if resolve_backend(backend, X_hat, Q_A, Q_B, op="rotate") == "reference":
        return reference.rotate_back_ref(X_hat, Q_A, Q_B, precision)
    return torch.ops.tritonkron.rotate(X_hat, Q_A, Q_B, True, precision)
