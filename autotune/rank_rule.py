"""The rank rule: subspace rank per factor from the spectra of calibrated factor statistics (docs/maths.md §3.4–§4.2, §4.5).

The subspace-aware optimizer (``tk.Kron(rank=k)``) preconditions the top-k eigendirections of a
factor X by their own eigenvalues and the rest by one isotropic constant from the tail mean
τ_k = mean_{i>k} λ_i. In X's eigenbasis that is the *spike-and-flat* spectrum

    λ̃^{(k)} = (λ_1, …, λ_k, τ_k, …, τ_k).

The rule (:func:`choose_rank`), for a descending spectrum λ_1 ≥ … ≥ λ_d ≥ 0 of mass S = Σ λ_i:

1. **Mass.** The rank-k approximation reproduces the share

       share_k = 1 − Σ_i |λ_i − λ̃^{(k)}_i| / S = 1 − Σ_{i>k} |λ_i − τ_k| / S

   of the eigen-mass (the trace-norm error of the spike-and-flat factor, relative to its trace).
   This is the mass that "escapes" the representation, as in Sketchy's escaped mass, except that
   the tail is kept at its mean instead of dropped. When the tail is negligible it is the plain
   top-k share Σ_{i≤k} λ_i / S (up to 2× the tail mass); unlike the plain share, it counts an
   already flat tail as captured, so a flat spectrum needs no rank and a planted rank-r spike on
   a flat floor needs exactly r. Require share_k ≥ ``mass``.
2. **Flatness.** The tail must be flat enough to treat isotropically: ratio_k = λ_{k+1} / τ_k
   (the tail's max over its mean) ≤ ``flatness``. The isotropic constant τ_k^{-1/2} steps along
   the largest tail direction √ratio_k times farther than its own eigenvalue would, so the
   default 4 bounds that over-step by 2×.
3. **Budget.** k is the smallest rank in [``min_rank``, ``max_rank``] meeting both (when share_k
   grows with k this is the smallest k reaching the mass, increased until the tail is flat); if
   none does, k = ``max_rank`` and the choice is reported as capped. The CLI's budget is
   max_rank = ⌈d/2⌉: with the sketch rank ℓ = 2k of ``sketch=True`` a larger k stores as much
   as the dense d × d factor.

A stack of blocks ``[B, d]`` gets the largest per-block rank (no block is given fewer directions
than its own spectrum asks for), and so does a set of parameters sharing one shape.

The sketched mode's choice (:mod:`autotune.sketch_choice`) builds on this rule; the spectra come from
a calibration run (:mod:`autotune.calibration`). :mod:`autotune.rank` re-exports all three.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from autotune.calibration import ParamSpectra

__all__ = [
    "DEFAULT_FLATNESS",
    "DEFAULT_MASS",
    "RankChoice",
    "choose_rank",
    "explain_rank",
    "layer_ranks",
    "rank_profile",
]

DEFAULT_MASS = 0.9
"""Default share of the eigen-mass the spike-and-flat approximation must reproduce."""

DEFAULT_FLATNESS = 4.0
"""Default bound on the tail's max/mean eigenvalue ratio (a 2× bound on the tail over-step)."""


@dataclass(frozen=True)
class RankChoice:
    """The chosen rank of one factor and why.

    Attributes:
        rank: chosen k (≥ 1), the largest over the blocks.
        dim: the factor's dimension d (the largest over the blocks).
        share: the smallest share_k over the blocks at the chosen k.
        tail_ratio: the largest tail max/mean ratio over the blocks at the chosen k.
        capped: whether the budget stopped some block before it met the mass and flatness rules.
    """

    rank: int
    dim: int
    share: float
    tail_ratio: float
    capped: bool


def rank_profile(eigenvalues: Tensor) -> tuple[Tensor, Tensor]:
    """share_k and ratio_k (module docstring) for every k = 0, …, d of one spectrum.

    Args:
        eigenvalues: ``[d]`` eigenvalues, any order (sorted descending and clamped at 0 here).

    Returns:
        ``(share [d + 1], ratio [d + 1])`` in float64; share_d = ratio_d = 1. An all-zero
        spectrum has share 1 and ratio 1 everywhere.
    """
    lam = eigenvalues.detach().to(torch.float64).clamp_min(0).sort(descending=True).values  # [d]
    d = lam.numel()
    csum = torch.cat([lam.new_zeros(1), lam.cumsum(0)])  # C[i] = Σ_{t<i} λ_t, [d + 1]
    total = float(csum[-1])
    k = torch.arange(d + 1, dtype=torch.float64)
    count = (d - k).clamp_min(1)
    tau = (total - csum) / count  # tail mean τ_k, [d + 1] (τ_d unused)
    # Entries of the tail above τ_k are λ_k … λ_{k+j−1} (descending); the L1 deviation of a
    # sample from its mean is twice the positive part: Σ|λ − τ| = 2 Σ_{λ>τ} (λ − τ).
    above = d - torch.searchsorted(lam.flip(0).contiguous(), tau, right=True)  # #{i : λ_i > τ_k}
    j = (above - k.long()).clamp_min(0)
    ends = (k.long() + j).clamp_max(d)
    deviation = 2 * (csum[ends] - csum[k.long()] - j.to(torch.float64) * tau)
    if total <= 0:
        return torch.ones(d + 1, dtype=torch.float64), torch.ones(d + 1, dtype=torch.float64)
    share = 1 - deviation.clamp_min(0) / total
    head = torch.cat([lam, lam.new_zeros(1)])  # λ_{k+1} in 1-based terms, [d + 1]
    ratio = torch.where(tau > 0, head / tau.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(tau))
    share[-1], ratio[-1] = 1.0, 1.0
    return share, ratio


def _choose_one(
    eigenvalues: Tensor, mass: float, flatness: float, low: int, high: int
) -> tuple[int, float, float, bool]:
    share, ratio = rank_profile(eigenvalues)
    ok = (share >= mass) & (ratio <= flatness)
    ok[:low] = False
    ok[high + 1 :] = False
    hits = torch.nonzero(ok)
    capped = hits.numel() == 0
    k = high if capped else int(hits[0])
    return k, float(share[k]), float(ratio[k]), capped


def _check(mass: float, flatness: float, min_rank: int, max_rank: int | None) -> None:
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1]; got {mass!r}")
    if not (flatness >= 1.0 and math.isfinite(flatness)):
        raise ValueError(f"flatness must be a finite number ≥ 1 (a max/mean ratio); got {flatness!r}")
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1:
        raise ValueError(f"min_rank must be a positive int; got {min_rank!r}")
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise ValueError(f"max_rank must be None or a positive int; got {max_rank!r}")


def explain_rank(
    eigenvalues: Tensor,
    mass: float = DEFAULT_MASS,
    flatness: float = DEFAULT_FLATNESS,
    max_rank: int | None = None,
    min_rank: int = 1,
) -> RankChoice:
    """:func:`choose_rank` with the share, tail ratio and capping that led to it.

    Args and Raises: as :func:`choose_rank`.
    """
    _check(mass, flatness, min_rank, max_rank)
    if eigenvalues.dim() == 0 or eigenvalues.shape[-1] == 0 or eigenvalues.numel() == 0:
        raise ValueError(
            f"eigenvalues must be [d] or [B, d] with at least one entry; got {list(eigenvalues.shape)}"
        )
    rows = eigenvalues.reshape(-1, eigenvalues.shape[-1])
    d = rows.shape[-1]
    high = max(1, min(d, max_rank if max_rank is not None else d))
    low = min(min_rank, high)
    picks = [_choose_one(row, mass, flatness, low, high) for row in rows]
    rank = max(p[0] for p in picks)
    # Statistics of every block at the common (largest) rank.
    profiles = [rank_profile(row) for row in rows]
    share = min(float(s[rank]) for s, _ in profiles)
    ratio = max(float(r[rank]) for _, r in profiles)
    return RankChoice(rank=rank, dim=d, share=share, tail_ratio=ratio, capped=any(p[3] for p in picks))


def choose_rank(
    eigenvalues: Tensor,
    mass: float = DEFAULT_MASS,
    flatness: float = DEFAULT_FLATNESS,
    max_rank: int | None = None,
    min_rank: int = 1,
) -> int:
    """Subspace rank k of one factor from its spectrum (the rule in the module docstring).

    Args:
        eigenvalues: ``[d]`` or ``[B, d]`` eigenvalues (any order; negatives are clamped to 0).
            A stack of blocks gets the largest per-block rank.
        mass: share of the eigen-mass the spike-and-flat approximation must reproduce, in (0, 1].
        flatness: bound ≥ 1 on the tail's max/mean eigenvalue ratio.
        max_rank: the cost budget, an upper bound on k (None: d).
        min_rank: lower bound on k (``tk.Kron`` needs k ≥ 1).

    Returns:
        k in [min(min_rank, budget), min(d, max_rank)]; k = d means full preconditioning.

    Raises:
        ValueError: an empty spectrum or an option out of range.
    """
    return explain_rank(eigenvalues, mass, flatness, max_rank, min_rank).rank


def layer_ranks(
    spectra: Iterable[ParamSpectra], mass: float, flatness: float, budget: float | None
) -> tuple[RankChoice, RankChoice]:
    """Ranks of factors A and B shared by the parameters of one shape.

    Each block stack gets its rank from :func:`explain_rank` (max_rank = ⌈budget·d⌉); the shape
    takes the largest, and the reported share and tail ratio are the worst over all blocks at
    that rank (capped at each block's dimension).

    Args:
        spectra: the calibrated spectra of the parameters of one shape.
        mass: see :func:`choose_rank`.
        flatness: see :func:`choose_rank`.
        budget: max_rank as a fraction of each factor's dimension, or None for no budget.

    Raises:
        ValueError: no spectra.
    """
    spectra = list(spectra)
    if not spectra:
        raise ValueError("no calibrated spectra for this shape")
    sides = ([s for ps in spectra for s in ps.spectra_a], [s for ps in spectra for s in ps.spectra_b])
    return _merge(sides[0], mass, flatness, budget), _merge(sides[1], mass, flatness, budget)


def _merge(
    stacks: list[Tensor], mass: float, flatness: float, budget: float | None, max_rank: int | None = None
) -> RankChoice:
    picks = []
    for eig in stacks:
        cap = None if budget is None else max(1, math.ceil(budget * eig.shape[-1]))
        if max_rank is not None:
            cap = max_rank if cap is None else min(cap, max_rank)
        picks.append(explain_rank(eig, mass, flatness, cap))
    rank = max(c.rank for c in picks)
    shares, ratios = [], []
    for eig in stacks:
        for row in eig.reshape(-1, eig.shape[-1]):
            share, ratio = rank_profile(row)
            k = min(rank, row.numel())
            shares.append(float(share[k]))
            ratios.append(float(ratio[k]))
    return RankChoice(
        rank=rank,
        dim=max(c.dim for c in picks),
        share=min(shares),
        tail_ratio=max(ratios),
        capped=any(c.capped for c in picks),
    )
