"""Eigenbasis preconditioning and the low-rank spike-and-flat apply, dispatched.

Reference: :mod:`tritonkron.ops.precondition.reference`; Triton: :mod:`tritonkron.ops.precondition.triton`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.ops.backend import resolve_backend
from tritonkron.ops.precision import check_precision
from tritonkron.ops.precondition import reference

__all__ = ["precondition", "spike_and_flat"]


def precondition(
    M: Tensor,
    Q_A: Tensor,
    Q_B: Tensor,
    s_A: Tensor,
    s_B: Tensor,
    eps: float,
    *,
    backend: str | None = None,
    precision: str = "ieee",
) -> Tensor:
    """U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ, Σ = σ/(1 + εσ), σ = s_A s_Bᵀ (``[B, m, n]``).

    See :func:`tritonkron.ops.precondition.reference.eigenbasis_precondition_ref`; ``precision`` is
    the products' policy (:mod:`tritonkron.ops.precision`).
    """
    precision = check_precision(precision)
    if resolve_backend(backend, M, Q_A, Q_B, op="precondition") == "reference":
        return reference.eigenbasis_precondition_ref(M, Q_A, Q_B, s_A, s_B, eps, precision)
    return torch.ops.tritonkron.precondition(M, Q_A, Q_B, s_A, s_B, float(eps), precision)


def spike_and_flat(
    U_k: Tensor,
    top_scales: Tensor,
    c: Tensor,
    Y: Tensor,
    *,
    backend: str | None = None,
    precision: str = "ieee",
) -> Tensor:
    """P_X Y = U_k (D_k − c I)(U_kᵀ Y) + c·Y, the low-rank spike-and-flat preconditioner.

    See :func:`tritonkron.ops.precondition.reference.spike_and_flat_apply`.
    """
    precision = check_precision(precision)
    if resolve_backend(backend, U_k, Y, op="spike_and_flat") == "reference":
        return reference.spike_and_flat_apply(U_k, top_scales, c, Y, precision)
    return torch.ops.tritonkron.spike_and_flat(U_k, top_scales, c, Y, precision)
