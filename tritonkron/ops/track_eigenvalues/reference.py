"""Reference of the eigenvalue tracking: the diagonals of the factor increments in the stale basis."""

from __future__ import annotations

from torch import Tensor

from tritonkron.math.divergences import Coupling

__all__ = ["track_eigenvalues_ref"]


def track_eigenvalues_ref(
    a: Tensor, b: Tensor, G_hat: Tensor, rule: Coupling, beta: float
) -> tuple[Tensor, Tensor]:
    """Per-step eigenvalue EMA in the stale basis: the diagonals of the factor increments.

    a_i ← β a_i + (1−β) s_A Σ_j Ĝ_ij² w_B,j ;  b_j ← β b_j + (1−β) s_B Σ_i Ĝ_ij² w_A,i.

    Args:
        a: ``[B, m]``; b: ``[B, n]``; G_hat: Ĝ = Q_Aᵀ G Q_B ``[B, m, n]``.
    """
    sq = G_hat * G_hat
    # Weighted sums as multiply-and-reduce, not matrix-vector products: a batched GEMV rounds
    # differently for one block than for several, and stacked steps must not (tritonkron.step.stacking).
    inc_a = sq.sum(-1) if rule.left_weight is None else (sq * rule.left_weight.unsqueeze(-2)).sum(-1)
    inc_b = sq.sum(-2) if rule.right_weight is None else (sq * rule.right_weight.unsqueeze(-1)).sum(-2)
    inc_a = inc_a * rule.left_scale.unsqueeze(-1)
    inc_b = inc_b * rule.right_scale.unsqueeze(-1)
    w = 1 - beta
    return beta * a + w * inc_a, beta * b + w * inc_b
