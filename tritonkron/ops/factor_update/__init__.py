"""The symmetric factor update X ← β·X + s·G W Gᵀ (or its right-hand mirror), dispatched.

:func:`factor_update` is one side; :func:`update_factors` updates both factors of a divergence's
coupling at once. Reference: :mod:`tritonkron.ops.factor_update.reference`; Triton:
:mod:`tritonkron.ops.factor_update.triton`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tritonkron.math.divergences import Coupling
from tritonkron.ops.backend import resolve_backend, scale_tensor
from tritonkron.ops.factor_update import reference

Weight = Tensor | tuple[Tensor, Tensor] | None

__all__ = ["Weight", "factor_update", "update_factors"]


def factor_update(
    X: Tensor,
    G: Tensor,
    beta: float,
    scale: Tensor | float,
    side: Literal["left", "right"],
    weight: Weight = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """X ← β·X + s·G W Gᵀ (left, ``[B, m, m]``) or β·X + s·Gᵀ W G (right, ``[B, n, n]``), out of place.

    See :func:`tritonkron.ops.factor_update.reference.factor_update_ref` for the arguments.
    """
    if resolve_backend(backend, X, G, op="factor_update") == "reference":
        return reference.factor_update_ref(X, G, beta, scale, side, weight)
    W, Q, w = (weight, None, None) if isinstance(weight, Tensor) or weight is None else (None, *weight)
    return torch.ops.tritonkron.factor_update(X, G, float(beta), scale_tensor(scale, X), side, W, Q, w)


def update_factors(
    A: Tensor, B: Tensor, G: Tensor, Q_A: Tensor, Q_B: Tensor, rule: Coupling, beta: float
) -> tuple[Tensor, Tensor]:
    """Simultaneous EMA update of both factors (both use the old opposite factor).

    Args:
        A: ``[B, m, m]``; B: ``[B, n, n]``; G: gradient blocks ``[B, m, n]``.
        Q_A, Q_B: the stale eigenbases the coupling weights refer to.
        rule: the divergence's :class:`Coupling`.
        beta: retention β₂.
    """
    w = 1 - beta
    left = None if rule.left_weight is None else (Q_B, rule.left_weight)
    right = None if rule.right_weight is None else (Q_A, rule.right_weight)
    A_new = factor_update(A, G, beta, w * rule.left_scale, "left", left)
    B_new = factor_update(B, G, beta, w * rule.right_scale, "right", right)
    return A_new, B_new
