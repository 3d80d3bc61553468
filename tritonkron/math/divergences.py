"""The three Bregman divergences as per-step factor rules (docs/maths.md §2.3).

Each divergence projects the gradient covariance C = E[vec(G) vec(G)ᵀ] onto Kronecker products
A ⊗ B. In the optimizer one fixed-point step is taken per iteration inside an EMA, using the
*previous* opposite factor in its tracked eigen-form X̂ = Q diag(x) Qᵀ:

    logdet      A ← β A + (1−β) G B̂⁻¹ Gᵀ / n          B ← β B + (1−β) Gᵀ Â⁻¹ G / m
    von_neumann A ← β A + (1−β) G Gᵀ                  B ← β B + (1−β) Gᵀ G,   τ ← β τ + (1−β) ‖G‖²_F
    frobenius   A ← β A + (1−β) G B̂ Gᵀ / Σ_j b_j²     B ← β B + (1−β) Gᵀ Â G / Σ_i a_i²

Every rule has the form A ← β A + (1−β) s_A G Q_B diag(w_B) Q_Bᵀ Gᵀ (and its mirror), so the
per-step eigenvalue tracking in the stale basis (Ĝ = Q_Aᵀ G Q_B) is the diagonal of the same
increment:

    a_i ← β a_i + (1−β) s_A Σ_j Ĝ_ij² w_B,j          b_j ← β b_j + (1−β) s_B Σ_i Ĝ_ij² w_A,i

The preconditioner's eigenvalues are a_i b_j (logdet, frobenius) and a_i b_j / τ (von Neumann,
whose projection is L ⊗ R / tr C). The dense projections and the divergence values themselves are
:func:`kronecker_projection` and :func:`bregman_divergence`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tritonkron.options import Divergence

__all__ = [
    "Coupling",
    "coupling",
    "initial_eigenvalues",
    "preconditioner_eigenvalues",
]


class Coupling(NamedTuple):
    """The weights of one divergence's factor increments.

    Attributes:
        left_weight: w_B ``[B, n]`` with W = Q_B diag(w_B) Q_Bᵀ, or None for W = I.
        left_scale: s_A ``[B]``.
        right_weight: w_A ``[B, m]``, or None for W = I.
        right_scale: s_B ``[B]``.
    """

    left_weight: Tensor | None
    left_scale: Tensor
    right_weight: Tensor | None
    right_scale: Tensor


def coupling(divergence: Divergence, a: Tensor, b: Tensor) -> Coupling:
    """Weights (w, s) of the factor increments of ``divergence`` given eigenvalues a ``[B, m]``, b ``[B, n]``.

    logdet: w_B = 1/b, s_A = 1/n; w_A = 1/a, s_B = 1/m.
    von_neumann: W = I, s = 1.
    frobenius: w_B = b, s_A = 1/Σb²; w_A = a, s_B = 1/Σa².
    """
    m, n = a.shape[-1], b.shape[-1]
    ones = torch.ones(a.shape[:-1], dtype=a.dtype, device=a.device)
    if divergence is Divergence.LOGDET:
        return Coupling(b.reciprocal(), ones / n, a.reciprocal(), ones / m)
    if divergence is Divergence.VON_NEUMANN:
        return Coupling(None, ones, None, ones)
    return Coupling(b, (b * b).sum(-1).reciprocal(), a, (a * a).sum(-1).reciprocal())


def preconditioner_eigenvalues(
    divergence: Divergence, a: Tensor, b: Tensor, trace: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-factor eigenvalues whose products a_i b_j are the eigenvalues of S = A ⊗ B.

    von Neumann divides by the trace, S = L ⊗ R / τ, split evenly: (a/√τ, b/√τ).
    """
    if divergence is Divergence.VON_NEUMANN:
        root = trace.clamp_min(torch.finfo(trace.dtype).tiny).sqrt().unsqueeze(-1)
        return a / root, b / root
    return a, b


def initial_eigenvalues(
    divergence: Divergence, l: Tensor, r: Tensor, sq_norm: Tensor, init_floor: float
) -> tuple[Tensor, Tensor]:
    """Scale-aware initial eigenvalues from the first gradient's Gram spectra.

    With l = spec(G₀G₀ᵀ), r = spec(G₀ᵀG₀) and s = ‖G₀‖²_F, the split a = l/√s, b = r/√s gives
    mean(a)·mean(b) = s/(mn), i.e. a_i b_j has the scale of E[G²] as Adam's second moment does,
    so multiplying the loss by a constant leaves the trajectory unchanged (docs/maths.md §8). von Neumann
    keeps raw Shampoo statistics (a = l, b = r) and divides by τ = s later. Each vector is floored
    at ``init_floor`` times its mean, since a single gradient's Gram matrix is rank-deficient.

    Args:
        l: ``[B, m]``; r: ``[B, n]``; sq_norm: ``[B]``.
    """
    if divergence is not Divergence.VON_NEUMANN:
        root = sq_norm.clamp_min(torch.finfo(sq_norm.dtype).tiny).sqrt().unsqueeze(-1)
        l, r = l / root, r / root
    l = l.clamp_min(0)
    r = r.clamp_min(0)
    l = torch.maximum(l, init_floor * l.mean(-1, keepdim=True))
    r = torch.maximum(r, init_floor * r.mean(-1, keepdim=True))
    return l, r
