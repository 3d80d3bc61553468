"""Per-step eigenvalue tracking in a fixed basis, dispatched.

Reference: :mod:`tritonkron.ops.track_eigenvalues.reference`; Triton:
:mod:`tritonkron.ops.track_eigenvalues.triton`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.math.divergences import Coupling
from tritonkron.ops.backend import resolve_backend
from tritonkron.ops.track_eigenvalues import reference

__all__ = ["track_eigenvalues"]


def track_eigenvalues(
    a: Tensor,
    b: Tensor,
    G_hat: Tensor,
    left_weight: Tensor | None,
    left_scale: Tensor,
    right_weight: Tensor | None,
    right_scale: Tensor,
    beta: float,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """a_i ← β a_i + (1−β) s_A Σ_j Ĝ_ij² w_B,j and b_j ← β b_j + (1−β) s_B Σ_i Ĝ_ij² w_A,i.

    See :func:`tritonkron.ops.track_eigenvalues.reference.track_eigenvalues_ref` (weights None mean all ones).
    """
    if resolve_backend(backend, a, G_hat, op="track_eigenvalues") == "reference":
        rule = Coupling(left_weight, left_scale, right_weight, right_scale)
        return reference.track_eigenvalues_ref(a, b, G_hat, rule, beta)
    out = torch.ops.tritonkron.track_eigenvalues(
        a, b, G_hat, left_weight, left_scale, right_weight, right_scale, float(beta)
    )
    return out[0], out[1]
