"""Reference of the rotated statistics: both factor EMAs and Ĝ from the products P = G Q_B, R = Q_Aᵀ G.

Why sharing the products is exact and what it saves: :mod:`tritonkron.step.rotated`. Every
product takes its operands under the precision policy (:func:`tritonkron.ops.precision.mm`).
"""

from __future__ import annotations

from torch import Tensor

from tritonkron.ops.precision import mm

__all__ = ["rotated_statistics_ref"]


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
    precision: str = "ieee",
) -> tuple[Tensor, Tensor, Tensor]:
    """Factor EMAs and the rotated gradient from shared products (module docstring):

        A' = β A + s_A·sym(P diag(w_B) Pᵀ),  B' = β B + s_B·sym(Rᵀ diag(w_A) R),  Ĝ = Q_Aᵀ G Q_B,

    with P = G Q_B, R = Q_Aᵀ G and sym(X) = ½(X + Xᵀ); a weight None (W = I) reads G itself,
    G Gᵀ = P Pᵀ and Gᵀ G = Rᵀ R, as the Triton launcher does.

    Args:
        A: ``[B, m, m]``; B: ``[B, n, n]``; G: gradient blocks ``[B, m, n]``.
        Q_A, Q_B: the orthonormal bases the weights refer to.
        w_A: ``[B, m]`` (W_A = Q_A diag(w_A) Q_Aᵀ in B's increment); s_A: ``[B]`` (A's increment scale).
        w_B: ``[B, n]``; s_B: ``[B]``. A weight None means all ones (W = I).
        beta: retention β₂ (the scales include 1 − β₂).
        precision: the products' policy ("ieee", "tf32", "bf16"; float64: always IEEE).

    Returns:
        (A', B', Ĝ).
    """
    m, n = G.shape[-2:]
    Q_At = Q_A.transpose(-1, -2)
    P = mm(G, Q_B, precision) if w_B is not None or m < n else None
    R = mm(Q_At, G, precision) if w_A is not None or m >= n else None
    G_hat = mm(R, Q_B, precision) if R is not None and (m >= n or P is None) else mm(Q_At, P, precision)
    if w_B is None:
        left = mm(G, G.transpose(-1, -2), precision)
    else:
        left = mm(P * w_B.unsqueeze(-2), P.transpose(-1, -2), precision)
    if w_A is None:
        right = mm(G.transpose(-1, -2), G, precision)
    else:
        right = mm((R * w_A.unsqueeze(-1)).transpose(-1, -2), R, precision)
    return _ema(A, beta, s_A, left), _ema(B, beta, s_B, right), G_hat
