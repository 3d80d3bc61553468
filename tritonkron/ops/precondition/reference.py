"""Preconditioning in the factors' eigenbases: full and spike-and-flat (subspace-aware) scales.

For a factor X with tracked eigenbasis Q (columns descending) and eigenvalues x₁ ≥ … ≥ x_d, the
per-direction inverse-square-root scales are

    full (rank=None):          s_i = x_i^{-1/2}
    spike-and-flat (rank=k):   s_i = x_i^{-1/2} for i ≤ k,  s_i = c_X for i > k     (docs/maths.md §4.2)

with the tail constant c_X chosen by the tail rule:

    mean:    c = α·τ^{-1/2},  τ = mean_{i>k} x_i   (the Bregman-optimal isotropic level, all three divergences)
    kth:     c = α·x_k^{-1/2}                    (the slowest top direction's scale: most conservative)
    sketchy: c = α·τ^{-1/2} and the top uses (x_i + τ)^{-1/2}  (Sketchy's escaped-mass rule)
    fixed:   c = α                                (a constant, for ablations)

The preconditioned direction of momentum M with P = P_A ⊗ P_B is

    U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ,   Σ_ij = σ_ij / (1 + ε σ_ij),  σ_ij = s^A_i s^B_j,

where the ε form equals 1/(√(x_i y_j) + ε) on the top block (Adam-style damping, docs/maths.md §4.3).
The rotations and the spike-and-flat products take their operands under the precision policy
(:func:`tritonkron.ops.precision.mm`, docs/maths.md §11); the scales are computed in the factors' dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.ops.precision import mm
from tritonkron.options import TailRule


def floor_eigenvalues(x: Tensor, rel_floor: float) -> Tensor:
    """Clamp eigenvalues ``[B, d]`` below at ``rel_floor · max_i x_i`` (and the dtype's tiny).

    A relative floor keeps the inverse roots finite and, unlike an absolute clamp, is invariant to
    the scale of the loss.
    """
    tiny = torch.finfo(x.dtype).tiny
    floor = (x.amax(dim=-1, keepdim=True) * rel_floor).clamp_min(tiny)
    return torch.maximum(x, floor)


def tail_level(x: Tensor, rank: int) -> Tensor:
    """τ = mean_{i>k} x_i of descending eigenvalues ``[B, d]``; returns ``[B, 1]``."""
    return x[..., rank:].mean(dim=-1, keepdim=True)


def factor_scales(x: Tensor, rank: int | None, tail: TailRule, alpha: float) -> Tensor:
    """Per-direction scales s ``[B, d]`` of the spike-and-flat preconditioner (see module doc).

    Args:
        x: floored eigenvalues ``[B, d]``, descending.
        rank: k, or None for full eigenvalue preconditioning. k ≥ d is full preconditioning.
        tail: the tail rule.
        alpha: α, multiplier of the tail constant (the constant itself for ``fixed``).
    """
    full = x.rsqrt()
    d = x.shape[-1]
    if rank is None or rank >= d:
        return full
    if tail is TailRule.FIXED:
        c = torch.full_like(x[..., :1], alpha)
    elif tail is TailRule.KTH:
        c = alpha * x[..., rank - 1 : rank].rsqrt()
    else:
        c = alpha * tail_level(x, rank).rsqrt()
    top = full[..., :rank]
    if tail is TailRule.SKETCHY:
        top = (x[..., :rank] + tail_level(x, rank)).rsqrt()
    return torch.cat([top, c.expand(*x.shape[:-1], d - rank)], dim=-1)


def eigenbasis_precondition_ref(
    M: Tensor, Q_A: Tensor, Q_B: Tensor, s_A: Tensor, s_B: Tensor, eps: float, precision: str = "ieee"
) -> Tensor:
    """U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ with Σ = σ/(1 + εσ), σ = s_A s_Bᵀ.

    Args:
        M: momentum blocks ``[B, m, n]``.
        Q_A: left bases ``[B, m, m]``; Q_B: right bases ``[B, n, n]``.
        s_A: left scales ``[B, m]``; s_B: right scales ``[B, n]``.
        eps: ε of the Adam-style damping.
        precision: the policy of the four products ("ieee", "tf32", "bf16").
    """
    sigma = s_A.unsqueeze(-1) * s_B.unsqueeze(-2)
    sigma = sigma / (1 + eps * sigma)
    rotated = mm(mm(Q_A.transpose(-1, -2), M, precision), Q_B, precision)
    return mm(mm(Q_A, rotated * sigma, precision), Q_B.transpose(-1, -2), precision)


def spike_and_flat_apply(
    U_k: Tensor, top_scales: Tensor, c: Tensor, Y: Tensor, precision: str = "ieee"
) -> Tensor:
    """Low-rank form of one factor's spike-and-flat preconditioner applied on the left:

        P_X Y = U_k (D_k − c I)(U_kᵀ Y) + c·Y,   P_X = U_k D_k U_kᵀ + c (I − U_k U_kᵀ),

    which needs only the top-k basis ``U_k: [B, d, k]`` (two thin GEMMs and an axpy).

    Args:
        U_k: top-k orthonormal eigenvectors ``[B, d, k]``.
        top_scales: D_k's diagonal ``[B, k]`` (x_i^{-1/2}).
        c: tail constants ``[B, 1]``.
        Y: right-hand sides ``[B, d, n]``.
        precision: the policy of the two thin products ("ieee", "tf32", "bf16").
    """
    coeff = (top_scales - c).unsqueeze(-1) * mm(U_k.transpose(-1, -2), Y, precision)
    return mm(U_k, coeff, precision) + c.unsqueeze(-1) * Y
