"""The eigenbasis step with the momentum kept rotated (PAPER §4.3, same math, fewer products).

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

__all__ = ["rotate_back_ref", "rotate_ref", "rotated_statistics_ref"]


def rotate_ref(X: Tensor, Q_A: Tensor, Q_B: Tensor) -> Tensor:
    """X̂ = Q_Aᵀ X Q_B for blocks ``X: [B, m, n]``, bases ``Q_A: [B, m, m]``, ``Q_B: [B, n, n]``."""
    return Q_A.transpose(-1, -2) @ X @ Q_B


def rotate_back_ref(X_hat: Tensor, Q_A: Tensor, Q_B: Tensor) -> Tensor:
    """X = Q_A X̂ Q_Bᵀ, the inverse of :func:`rotate_ref` for orthogonal bases."""
    return Q_A @ X_hat @ Q_B.transpose(-1, -2)


def _ema(X: Tensor, beta: float, scale: Tensor, gram: Tensor) -> Tensor:
    return beta * X + scale.reshape(-1, 1, 1) * (0.5 * (gram + gram.transpose(-1, -2)))


def rotated_statistics_ref(
    A: Tensor,
    B: Tensor,
    G: Tensor,
    Q_A: Tensor,
    Q_B: Tensor,
    w_A: Tensor | None,
    s_A: Tensor,
    w_B: Tensor | None,
    s_B: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Factor EMAs and the rotated gradient from shared products (module docstring):

        A' = β A + s_A·sym(P diag(w_B) Pᵀ),  B' = β B + s_B·sym(Rᵀ diag(w_A) R),  Ĝ = Q_Aᵀ G Q_B,

    with P = G Q_B, R = Q_Aᵀ G and sym(X) = ½(X + Xᵀ).

    Args:
        A: ``[B, m, m]``; B: ``[B, n, n]``; G: gradient blocks ``[B, m, n]``.
        Q_A, Q_B: the orthonormal bases the weights refer to.
        w_A: ``[B, m]`` (W_A = Q_A diag(w_A) Q_Aᵀ in B's increment); s_A: ``[B]`` (A's increment scale).
        w_B: ``[B, n]``; s_B: ``[B]``. A weight None means all ones (W = I).
        beta: retention β₂ (the scales include 1 − β₂).

    Returns:
        (A', B', Ĝ).
    """
    m, n = G.shape[-2:]
    P = G @ Q_B
    R = Q_A.transpose(-1, -2) @ G
    G_hat = R @ Q_B if m >= n else Q_A.transpose(-1, -2) @ P
    left = (P if w_B is None else P * w_B.unsqueeze(-2)) @ P.transpose(-1, -2)
    right = R.transpose(-1, -2) @ (R if w_A is None else R * w_A.unsqueeze(-1))
    return _ema(A, beta, s_A, left), _ema(B, beta, s_B, right), G_hat
