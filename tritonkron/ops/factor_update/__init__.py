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
from tritonkron.ops.precision import check_precision

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
    precision: str = "ieee",
) -> Tensor:
    """X ← β·X + s·G W Gᵀ (left, ``[B, m, m]``) or β·X + s·Gᵀ W G (right, ``[B, n, n]``), out of place.

    See :func:`tritonkron.ops.factor_update.reference.factor_update_ref` for the arguments;
    ``precision`` is the products' policy (:mod:`tritonkron.ops.precision`).
    """
    precision = check_precision(precision)
    if resolve_backend(backend, X, G, op="factor_update") == "reference":
        return reference.factor_update_ref(X, G, beta, scale, side, weight, precision)
    W, Q, w = (weight, None, None) if isinstance(weight, Tensor) or weight is None else (None, *weight)
    scale = scale_tensor(scale, X)
    return torch.ops.tritonkron.factor_update(X, G, float(beta), scale, side, W, Q, w, precision)


def update_factors(
    A: Tensor,
    B: Tensor,
    G: Tensor,
    Q_A: Tensor,
    Q_B: Tensor,
    rule: Coupling,
    beta: float,
    *,
    precision: str = "ieee",
) -> tuple[Tensor, Tensor]:
    """Simultaneous EMA update of both factors (both use the old opposite factor).

    Args:
        A: ``[B, m, m]``; B: ``[B, n, n]``; G: gradient blocks ``[B, m, n]``.
        Q_A, Q_B: the stale eigenbases the coupling weights refer to.
        rule: the divergence's :class:`Coupling`.
        beta: retention β₂.
        precision: the products' policy ("ieee", "tf32", "bf16"; :mod:`tritonkron.ops.precision`).
    """
    w = 1 - beta
    left = None if rule.left_weight is None else (Q_B, rule.left_weight)
    right = None if rule.right_weight is None else (Q_A, rule.right_weight)
    A_new = factor_update(A, G, beta, w * rule.left_scale, "left", left, precision=precision)
    B_new = factor_update(B, G, beta, w * rule.right_scale, "right", right, precision=precision)
    return A_new, B_new
