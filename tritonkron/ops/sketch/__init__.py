"""The sketched (low-rank-plus-isotropic) factors: the sketch's EMA updates and its preconditioning, dispatched.

Reference: :mod:`tritonkron.ops.sketch.reference`; Triton: :mod:`tritonkron.ops.sketch.triton`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tritonkron.ops.backend import resolve_backend
from tritonkron.ops.precision import check_precision
from tritonkron.ops.sketch import reference

__all__ = ["sketch_precondition", "sketch_track", "sketch_update"]


def sketch_update(
    U: Tensor,
    lam: Tensor,
    tau: Tensor,
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    beta: float,
    side: Literal["left", "right"],
    *,
    backend: str | None = None,
    precision: str = "ieee",
) -> tuple[Tensor, Tensor, Tensor]:
    """One EMA step X̃ ← proj(β X̃ + s·G_s W G_sᵀ) of a factor sketch; returns (U', λ', τ').

    See :func:`tritonkron.ops.sketch.reference.sketch_update_ref` for the arguments; ``precision``
    is the thin products' policy (:mod:`tritonkron.ops.precision`; the QR and eigh stay IEEE).
    """
    precision = check_precision(precision)
    if resolve_backend(backend, U, G, op="sketch_update") == "reference":
        return reference.sketch_update_ref(U, lam, tau, G, V, w, w_tau, scale, beta, side, precision)
    out = torch.ops.tritonkron.sketch_update(U, lam, tau, G, V, w, w_tau, scale, float(beta), side, precision)
    return out[0], out[1], out[2]


def sketch_track(
    U: Tensor,
    H: Tensor,
    tau: Tensor,
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    beta: float,
    side: Literal["left", "right"],
    *,
    backend: str | None = None,
    precision: str = "ieee",
) -> tuple[Tensor, Tensor]:
    """One EMA step of a sketch in its fixed basis: H' = β H + Uᵀ K U and the trace-conserving τ'.

    See :func:`tritonkron.ops.sketch.reference.sketch_track_ref` for the arguments (no
    factorisation); ``precision`` is the thin products' policy (:mod:`tritonkron.ops.precision`).
    """
    precision = check_precision(precision)
    if resolve_backend(backend, U, G, op="sketch_track") == "reference":
        return reference.sketch_track_ref(U, H, tau, G, V, w, w_tau, scale, beta, side, precision)
    out = torch.ops.tritonkron.sketch_track(U, H, tau, G, V, w, w_tau, scale, float(beta), side, precision)
    return out[0], out[1]


def sketch_precondition(
    M: Tensor,
    U_A: Tensor,
    s_A: Tensor,
    c_A: Tensor,
    U_B: Tensor,
    s_B: Tensor,
    c_B: Tensor,
    eps: float,
    *,
    backend: str | None = None,
    precision: str = "ieee",
) -> Tensor:
    """The damped spike-and-flat direction from top-k bases and tail constants (``[B, m, n]``).

    See :func:`tritonkron.ops.sketch.reference.sketch_precondition_ref`; ``precision`` is the
    products' policy (:mod:`tritonkron.ops.precision`).
    """
    precision = check_precision(precision)
    if resolve_backend(backend, M, U_A, U_B, op="sketch_precondition") == "reference":
        return reference.sketch_precondition_ref(M, U_A, s_A, c_A, U_B, s_B, c_B, eps, precision)
    return torch.ops.tritonkron.sketch_precondition(M, U_A, s_A, c_A, U_B, s_B, c_B, float(eps), precision)
