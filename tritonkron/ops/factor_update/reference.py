"""Symmetric factor update, the statistic of every divergence (docs/maths.md §2.3).

    left:   X ← β·X + s·G W Gᵀ       (X is m × m)
    right:  X ← β·X + s·Gᵀ W G       (X is n × n)

with W = I, a dense symmetric matrix, or the eigen-form W = Q diag(w) Qᵀ that the LogDet and
Frobenius couplings use (W = B̂⁻¹ or B̂). Batched over stacked blocks ``G: [B, m, n]``. The
products take their operands under the precision policy (:func:`tritonkron.ops.precision.mm`,
docs/maths.md §11).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from tritonkron.ops.precision import mm

Side = Literal["left", "right"]


def weighted_gram(
    G: Tensor, side: Side, weight: Tensor | tuple[Tensor, Tensor] | None = None, precision: str = "ieee"
) -> Tensor:
    """Return G W Gᵀ (``side="left"``, ``[B, m, m]``) or Gᵀ W G (``side="right"``, ``[B, n, n]``).

    Args:
        G: gradient blocks ``[B, m, n]``.
        side: which factor the product feeds.
        weight: ``None`` for W = I; a dense ``[B, k, k]`` symmetric matrix (k = n for the left
            side, m for the right); or ``(Q, w)`` with ``Q: [B, k, k]``, ``w: [B, k]`` meaning
            W = Q diag(w) Qᵀ, evaluated as (G Q) diag(w) (G Q)ᵀ.
        precision: the policy of every product ("ieee", "tf32", "bf16").

    Returns:
        The symmetric product; exactly symmetric (averaged with its transpose).
    """
    X = G if side == "left" else G.transpose(-1, -2)  # [B, d, k]: rows index the factor
    if weight is None:
        out = mm(X, X.transpose(-1, -2), precision)
    elif isinstance(weight, tuple):
        Q, w = weight
        XQ = mm(X, Q, precision)
        out = mm(XQ * w.unsqueeze(-2), XQ.transpose(-1, -2), precision)
    else:
        out = mm(mm(X, weight, precision), X.transpose(-1, -2), precision)
    return 0.5 * (out + out.transpose(-1, -2))


def factor_update_ref(
    X: Tensor,
    G: Tensor,
    beta: float,
    scale: Tensor | float,
    side: Side,
    weight: Tensor | tuple[Tensor, Tensor] | None = None,
    precision: str = "ieee",
) -> Tensor:
    """EMA factor update X ← β·X + s·G W Gᵀ (left) or β·X + s·Gᵀ W G (right), out of place.

    Args:
        X: factors ``[B, d, d]``.
        G: gradient blocks ``[B, m, n]``.
        beta: retention β₂ of the EMA.
        scale: s, a float or a per-block tensor ``[B]`` (e.g. (1−β)/n for LogDet).
        side: "left" (d = m) or "right" (d = n).
        weight: W as in :func:`weighted_gram`.
        precision: the products' policy (float64 X and G: always IEEE).
    """
    if isinstance(scale, Tensor):
        scale = scale.reshape(-1, 1, 1)
    return beta * X + scale * weighted_gram(G, side, weight, precision)
