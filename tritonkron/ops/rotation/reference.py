"""The eigenbasis step with the momentum kept rotated (docs/maths.md §4.3 and §7.1, same math, fewer products).

The direction U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ needs the rotated momentum M̂ = Q_Aᵀ M Q_B. Because
the momentum is an EMA, M̂ is one as well while the bases are fixed,

    M̂ ← β₁ M̂ + (1 − β₁) Ĝ,   Ĝ = Q_Aᵀ G Q_B,

and Ĝ is already needed for the eigenvalue tracking. Keeping M̂ instead of M therefore saves the
two forward rotations of M every step (mn(m + n) multiply-adds); when a basis changes (refresh or
initialisation) M̂ is carried over exactly, M̂' = Q_A'ᵀ (Q_A M̂ Q_Bᵀ) Q_B'.

The factor increments share their products with Ĝ as well: with P = G Q_B and R = Q_Aᵀ G,

    G Q_B diag(w_B) Q_Bᵀ Gᵀ = P diag(w_B) Pᵀ          Gᵀ Q_A diag(w_A) Q_Aᵀ G = Rᵀ diag(w_A) R
    Ĝ = R Q_B  (m ≥ n)  or  Q_Aᵀ P  (m < n)

so the statistics cost 2mn(m + n) + mn·min(m, n) instead of 3mn(m + n) (von Neumann's W = I is
w = 1, since Q is orthogonal). Per step the eigenbasis path then costs 3mn(m + n) + mn·min(m, n)
multiply-adds instead of 5mn(m + n).
"""

from __future__ import annotations

from torch import Tensor

from tritonkron.ops.precision import mm

__all__ = ["rotate_back_ref", "rotate_ref"]


def rotate_ref(X: Tensor, Q_A: Tensor, Q_B: Tensor, precision: str = "ieee") -> Tensor:
    """X̂ = (Q_Aᵀ X) Q_B for blocks ``X: [B, m, n]``, bases ``Q_A: [B, m, m]``, ``Q_B: [B, n, n]``;
    both products under the precision policy (:func:`tritonkron.ops.precision.mm`)."""
    return mm(mm(Q_A.transpose(-1, -2), X, precision), Q_B, precision)


def rotate_back_ref(X_hat: Tensor, Q_A: Tensor, Q_B: Tensor, precision: str = "ieee") -> Tensor:
    """X = (Q_A X̂) Q_Bᵀ, the inverse of :func:`rotate_ref` for orthogonal bases."""
    return mm(mm(Q_A, X_hat, precision), Q_B.transpose(-1, -2), precision)
