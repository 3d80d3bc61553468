"""Bounded directions (``bound="adam"``) and the momentum's bias correction (docs/maths.md §5.5).

The direction divides the momentum by eigenvalues that exclude the current gradient, and nothing
else bounds |M̂ᵢⱼ|/√(aᵢbⱼ): a gradient that moves into directions whose tracked eigenvalues are
tiny gives an update orders of magnitude larger than Adam's. With ``bound="adam"`` the scale of
each entry of the rotated momentum is

    Σᵢⱼ = 1 / (max(√(aᵢbⱼ), √(1 − β₂)|Ĝᵢⱼ|, |M̂ᵢⱼ|/B) + ε),   B = (1 − β₁)/√((1 − β₂)(1 − β₁²/β₂)),

Adam's second moment max-ed with the current rotated gradient, and B the worst case of Adam's own
|m|/√v, so that |Uᵢⱼ| ≤ B in the rotated frame and RMS(U) ≤ B (the bases are orthogonal). The
low-rank forms (``rank=k`` when cheaper, ``sketch=True``) have no full rotated frame: their four
blocks (top × top, top × tail, tail × top, tail × tail) share one scale along each tail index, so
the cap is applied per entry, per row, per column and per block RMS, which gives the same
RMS(U) ≤ B, and the current gradient enters per part through its RMS (:func:`bounded_low_rank`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["adam_bound", "bias_correction", "bias_corrections", "bounded_low_rank", "bounded_scales", "damp"]


def adam_bound(beta1: float, beta2: float) -> float:
    """B = (1 − β₁)/√((1 − β₂)(1 − β₁²/β₂)), the supremum of Adam's |m_t|/√v_t (needs β₁² < β₂).

    From m = (1 − β₁) Σ β₁ᵏ g_{t−k}, v = (1 − β₂) Σ β₂ᵏ g²_{t−k} and Cauchy–Schwarz on
    Σ (β₁/√β₂)ᵏ · √β₂ᵏ|g_{t−k}|.
    """
    if beta1 * beta1 >= beta2:
        raise ValueError(f"bound='adam' needs betas[0]² < betas[1]; got betas=({beta1}, {beta2})")
    return (1 - beta1) / math.sqrt((1 - beta2) * (1 - beta1 * beta1 / beta2))


def damp(sigma: Tensor, eps: float) -> Tensor:
    """Σ = σ/(1 + εσ) = 1/(1/σ + ε), the ε damping of a scale σ = 1/√x."""
    return sigma / (1 + eps * sigma)


def bounded_scales(sigma: Tensor, M_hat: Tensor, G_hat: Tensor | None, beta2: float, cap: float) -> Tensor:
    """σ'ᵢⱼ = min(σᵢⱼ, 1/(√(1 − β₂)|Ĝᵢⱼ|), B/|M̂ᵢⱼ|), i.e. 1/max(√(aᵢbⱼ), √(1 − β₂)|Ĝᵢⱼ|, |M̂ᵢⱼ|/B).

    Zero entries of Ĝ or M̂ give an infinite candidate and leave σ alone; ``G_hat`` None skips
    the gradient term. Then |M̂ᵢⱼ| σ'ᵢⱼ ≤ B for every entry.
    """
    out = torch.minimum(sigma, cap / M_hat.abs())
    if G_hat is not None:
        out = torch.minimum(out, 1 / (math.sqrt(1 - beta2) * G_hat.abs()))
    return out


def _capped(sigma: Tensor, eps: float, *limits: Tensor) -> Tensor:
    """damp(min(σ, l₁, l₂, …)): a part's damped scale, capped by each limit (an infinite limit: none)."""
    for limit in limits:
        sigma = torch.minimum(sigma, limit)
    return damp(sigma, eps)


def _mean_square(total: Tensor, count: int) -> Tensor:
    """A sum of squares divided by its count, clamped at 0 (differences of squares may round below)."""
    return total.clamp_min(0) / max(count, 1)


class _Parts(NamedTuple):
    """X = U_Aᵀ Y₀, Y = Y₀ U_B, Z = U_Aᵀ Y₀ U_B of a matrix Y₀, and the RMS of its rows' tail
    (top × tail), columns' tail (tail × top) and tail × tail parts."""

    X: Tensor
    Y: Tensor
    Z: Tensor
    row_rms: Tensor
    col_rms: Tensor
    tail_rms: Tensor


def _parts(M: Tensor, U_A: Tensor, U_B: Tensor) -> _Parts:
    """r_i² = (‖X_i‖² − ‖Z_i‖²)/(n − k_B), r_j² = (‖Y_j‖² − ‖Z_j‖²)/(m − k_A),
    r² = (‖M‖² − ‖X‖² − ‖Y‖² + ‖Z‖²)/((m − k_A)(n − k_B)) from the thin products of M."""
    m, n = M.shape[-2:]
    k_A, k_B = U_A.shape[-1], U_B.shape[-1]
    X = U_A.transpose(-1, -2) @ M
    Y = M @ U_B
    Z = X @ U_B
    x2, y2, z2 = X.square(), Y.square(), Z.square()
    row_rms = _mean_square(x2.sum(-1) - z2.sum(-1), n - k_B).sqrt()
    col_rms = _mean_square(y2.sum(-2) - z2.sum(-2), m - k_A).sqrt()
    total = M.square().sum((-2, -1)) - x2.sum((-2, -1)) - y2.sum((-2, -1)) + z2.sum((-2, -1))
    tail_rms = _mean_square(total, (m - k_A) * (n - k_B)).sqrt()
    return _Parts(X, Y, Z, row_rms, col_rms, tail_rms)


def bounded_low_rank(
    M: Tensor,
    bases: tuple[Tensor, Tensor],
    scales_A: tuple[Tensor, Tensor],
    scales_B: tuple[Tensor, Tensor],
    eps: float,
    cap: float,
    G: Tensor | None = None,
    beta2: float = 0.0,
) -> Tensor:
    """P_A M P_B in low-rank form with every part of the rotated frame capped at RMS ≤ B.

    ``bases`` = (U_A, U_B), ``scales_X`` = (s_X top-k scales, c_X tail constant). With
    X = U_Aᵀ M, Y = M U_B, Z = U_Aᵀ M U_B and P⊥ = I − U Uᵀ, M splits orthogonally into
    U_A Z U_Bᵀ + U_A (X − Z U_Bᵀ) + (Y − U_A Z) U_Bᵀ + P⊥_A M P⊥_B, scaled by s_A,i s_B,j (per
    entry), s_A,i c_B (per row i), c_A s_B,j (per column j) and c_A c_B (one constant). Each scale
    σ becomes damp(min(σ, B/r)), r the RMS of that part's entries over the tail coordinates of any
    completion of the bases (:func:`_parts`). Each part's Frobenius norm is then at most
    B √(its entries), so ‖U‖_F ≤ B √(mn). With the current gradient ``G`` each scale is also capped
    at 1/(√(1 − β₂) r_G), r_G the RMS of G's same part (per entry for top × top): Adam's second
    moment includes the current gradient, a part's mean square stands in for its entries'. With
    B = ∞ and no G this is the unbounded low-rank direction.
    """
    (U_A, U_B), (s_A, c_A), (s_B, c_B) = bases, scales_A, scales_B
    if G is None:
        parts = _parts(M, U_A, U_B)
    else:  # M and G through the same launches: [2, B, m, n] against the bases' [B, ·, ·]
        both = _parts(torch.stack((M, G)), U_A, U_B)
        parts, grad = _Parts(*(t[0] for t in both)), _Parts(*(t[1] for t in both))
    X, Y, Z = parts.X, parts.Y, parts.Z
    top_limits = [cap / Z.abs()]
    limits = [[cap / parts.row_rms], [cap / parts.col_rms], [cap / parts.tail_rms]]
    if G is not None:
        g = math.sqrt(1 - beta2)
        top_limits.append(1 / (g * grad.Z.abs()))
        for part, rms in zip(limits, (grad.row_rms, grad.col_rms, grad.tail_rms), strict=True):
            part.append(1 / (g * rms))
    top = _capped(s_A.unsqueeze(-1) * s_B.unsqueeze(-2), eps, *top_limits)
    rows = _capped(s_A * c_B.unsqueeze(-1), eps, *limits[0])
    cols = _capped(c_A.unsqueeze(-1) * s_B, eps, *limits[1])
    flat = _capped(c_A * c_B, eps, *limits[2])
    R = X - Z @ U_B.transpose(-1, -2)
    C = Y - U_A @ Z
    rest = M - U_A @ X - C @ U_B.transpose(-1, -2)  # = P⊥_A M P⊥_B
    U = U_A @ ((Z * top) @ U_B.transpose(-1, -2) + R * rows.unsqueeze(-1))
    U = U + (C * cols.unsqueeze(-2)) @ U_B.transpose(-1, -2)
    return U + rest * flat.reshape(-1, *([1] * (M.dim() - 1)))


def bias_correction(step: Tensor, beta1: float) -> Tensor:
    """1/(1 − β₁ᵗ) with t = ``step`` (a device tensor, read as ≥ 1: no host read)."""
    return 1 / (1 - torch.pow(beta1, step.clamp_min(1)))


def bias_corrections(steps: list[Tensor], beta1: float) -> list[Tensor]:
    """:func:`bias_correction` 1/(1 − β₁ᵗ) of many step counts ``steps`` (0-dim, one dtype and
    device) in a few ops however many there are, the same bits as one by one.

    β₁ᵗ is one multi-tensor pow over the 0-dim counts, each rounded as its own ``torch.pow``
    (a pow over a stacked vector may take a vectorised path that rounds differently on CPU); the
    rest, 1/(1 − x), is exactly rounded arithmetic, done on the stacked powers.
    """
    powers = torch._foreach_pow(beta1, torch._foreach_clamp_min(steps, 1))
    return list((1 / (1 - torch.stack(powers))).unbind())
