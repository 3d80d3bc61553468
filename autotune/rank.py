"""Subspace rank per factor from the spectra of calibrated factor statistics (PAPER §3.4–4.2).

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

**Sketched mode** (:func:`sketch_ranks`, for ``tk.Kron(rank="auto", sketch=True)``). Dense factors
store d × d matrices whatever k is; a sketch stores d × ℓ per factor, so there the cost is set by
the one sketch rank ℓ of a block ``m × n`` (each factor keeps min(ℓ, d) directions), capped at

    L = min(max(m, n), max(⌈``sketch_budget`` · max(m, n)⌉, ``SKETCH_MIN_CAP``)),

so the two sketches (m + n)·ℓ hold at most ``sketch_budget`` × the 2(m² + n²) floats of the dense
factors and eigenbases (dims below the floor of 32 are not worth sketching). Per factor X of
dimension d:

1. k_X is the rule above with max_rank = d when d ≤ L (the sketch holds X whole) and ⌊L/2⌋
   otherwise, so that the sketch can keep ℓ ≥ 2k directions;
2. ℓ_X is the smallest ℓ in [k_X, min(2k_X, L, d)] whose spike-and-flat share reaches
   1 − (1 − ``mass``)/2 (the sketch carries half the mass the rank-k preconditioner lets escape,
   a buffer that keeps the top-k subspace resolved when eigenvalues cross), else the upper end;

and ℓ = max(ℓ_A, ℓ_B) ≥ max(k_A, k_B).

Calibration (:func:`calibrate`): train the user's model for a few steps with ``tk.Kron(rank=None)``
on real batches, then take each block's factor spectrum as the eigenvalues of the factor
statistics ``factor_a``/``factor_b`` (exact ``eigvalsh``; the tracked ``eig_a``/``eig_b`` are
Rayleigh quotients in a basis refreshed only every T steps, which flattens the spectrum by
Schur–Horn, so they are the fallback when no factor is stored).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import tritonkron as tk
from tritonkron.optim import BLOCKS
from tritonkron.preconditioner import EIG_A, EIG_B, FACTOR_A, FACTOR_B, READY

__all__ = [
    "DEFAULT_FLATNESS",
    "DEFAULT_MASS",
    "DEFAULT_SKETCH_BUDGET",
    "SKETCH_MIN_CAP",
    "Calibration",
    "ParamSpectra",
    "RankChoice",
    "SketchChoice",
    "calibrate",
    "calibration_beta2",
    "choose_rank",
    "explain_rank",
    "layer_ranks",
    "rank_profile",
    "sketch_cap",
    "sketch_ranks",
    "sketch_width",
]

DEFAULT_MASS = 0.9
"""Default share of the eigen-mass the spike-and-flat approximation must reproduce."""

DEFAULT_FLATNESS = 4.0
"""Default bound on the tail's max/mean eigenvalue ratio (a 2× bound on the tail over-step)."""

DEFAULT_SKETCH_BUDGET = 0.125
"""Default cap on the sketch rank ℓ as a fraction of a block's largest dimension."""

SKETCH_MIN_CAP = 32
"""The cap on ℓ is never below this (or the block's largest dimension, when smaller)."""


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


# ---------------------------------------------------------------------------------------------
# Calibration: the factor spectra of a short real training run.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpectra:
    """Factor spectra of one matrix parameter after calibration.

    Attributes:
        name: the parameter's name in the model.
        shape: the parameter's shape.
        dtype: the parameter's dtype.
        block_size: the block size it was calibrated with.
        spectra_a: per block group, descending eigenvalues of factor A ``[B, m]`` (ready blocks).
        spectra_b: per block group, descending eigenvalues of factor B ``[B, n]``.
        factors_a: per block group, factor A ``[B, m, m]`` (None when the state has no factor).
        factors_b: per block group, factor B ``[B, n, n]`` (or None).
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    block_size: int
    spectra_a: tuple[Tensor, ...]
    spectra_b: tuple[Tensor, ...]
    factors_a: tuple[Tensor | None, ...]
    factors_b: tuple[Tensor | None, ...]


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`: spectra per matrix parameter and the loss curve."""

    spectra: tuple[ParamSpectra, ...]
    losses: tuple[float, ...]


def calibration_beta2(steps: int, cap: float = 0.98) -> float:
    """Statistics retention β₂ for a calibration of ``steps`` steps: min(cap, 0.01^(1/steps)).

    A block's statistics start from its first gradient with floored eigenvalues (PAPER §4.3);
    with this β₂ that start weighs at most 1 % after ``steps`` steps, so the floor does not
    masquerade as a flat tail, while longer runs keep ``tk.Kron``'s default 0.98.
    """
    if steps < 2:
        raise ValueError(f"calibration needs at least 2 steps; got {steps}")
    return min(cap, 0.01 ** (1.0 / (steps - 1)))


def _descending(factor: Tensor | None, tracked: Tensor) -> Tensor:
    if factor is not None:
        return torch.linalg.eigvalsh(factor.to(torch.float64)).flip(-1).to(torch.float32)
    return tracked.sort(dim=-1, descending=True).values


def calibrate(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    steps: int,
    block_sizes: Mapping[str, int],
    *,
    lr: float = 3e-4,
    divergence: str = "logdet",
    precondition_every: int = 10,
    on_step: Callable[[int, float], None] | None = None,
) -> Calibration:
    """Train ``model`` for ``steps`` steps with ``tk.Kron(rank=None)`` and read its factor spectra.

    Args:
        model: the user's model (it is trained in place).
        loss_fn: ``loss_fn(model)`` → scalar loss on a fresh batch of real data.
        steps: calibration steps (≥ 2).
        block_sizes: block size per parameter name (``model.named_parameters()``); absent names
            get 1024.
        lr: learning rate of the calibration run.
        divergence: factor rule whose statistics are measured.
        precondition_every: basis refresh period.
        on_step: called as ``on_step(step, loss)`` after each step.

    Returns:
        The spectra of every matrix parameter that received a non-zero gradient.

    Raises:
        ValueError: a non-scalar or non-finite loss.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    matrices = [(name, p) for name, p in named if p.dim() >= 2 and p.numel() > 0]
    others = [p for _, p in named if p.dim() < 2 or p.numel() == 0]
    groups: list[dict] = [{"params": [p], "block_size": block_sizes.get(name, 1024)} for name, p in matrices]
    if others:
        groups.append({"params": others})
    beta2 = calibration_beta2(steps)
    opt = tk.Kron(
        groups, lr=lr, betas=(0.9, beta2), divergence=divergence, precondition_every=precondition_every
    )
    losses: list[float] = []
    model.train()
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn(model) must return a scalar tensor; got {type(loss).__name__}")
        if not bool(torch.isfinite(loss)):
            raise ValueError(f"calibration loss is not finite at step {step}: {float(loss)}")
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    spectra = [_param_spectra(name, p, opt, block_sizes.get(name, 1024)) for name, p in matrices]
    return Calibration(tuple(s for s in spectra if s is not None), tuple(losses))


def _param_spectra(name: str, p: Tensor, opt: tk.Kron, block_size: int) -> ParamSpectra | None:
    state = opt.state.get(p, {})
    if BLOCKS not in state:
        return None
    spectra_a, spectra_b, factors_a, factors_b = [], [], [], []
    for group in state[BLOCKS]:
        ready = group[READY]
        if not bool(ready.any()):
            continue
        fa = group[FACTOR_A][ready] if FACTOR_A in group else None
        fb = group[FACTOR_B][ready] if FACTOR_B in group else None
        spectra_a.append(_descending(fa, group[EIG_A][ready]))
        spectra_b.append(_descending(fb, group[EIG_B][ready]))
        factors_a.append(fa)
        factors_b.append(fb)
    if not spectra_a:
        return None
    return ParamSpectra(
        name,
        tuple(p.shape),
        p.dtype,
        block_size,
        tuple(spectra_a),
        tuple(spectra_b),
        tuple(factors_a),
        tuple(factors_b),
    )


@dataclass(frozen=True)
class SketchChoice:
    """Ranks and sketch rank of one shape for ``sketch=True`` (module docstring, sketched mode).

    Attributes:
        rank_a: k_A and its statistics (``capped``: the cost cap stopped the rank rule).
        rank_b: k_B and its statistics.
        sketch_rank: ℓ = max(ℓ_A, ℓ_B).
        cap: the cap L on ℓ.
    """

    rank_a: RankChoice
    rank_b: RankChoice
    sketch_rank: int
    cap: int


def sketch_cap(m: int, n: int, budget: float) -> int:
    """The cap L = min(max(m, n), max(⌈budget · max(m, n)⌉, SKETCH_MIN_CAP)) on ℓ for an ``m × n`` block.

    Raises:
        ValueError: ``budget`` outside (0, 1] or a non-positive dimension.
    """
    if not (isinstance(budget, (int, float)) and 0.0 < budget <= 1.0):
        raise ValueError(
            f"sketch_budget must be in (0, 1] (a fraction of the block's largest dim); got {budget!r}"
        )
    if min(m, n) < 1:
        raise ValueError(f"block dims must be positive; got {m} x {n}")
    d = max(m, n)
    return min(d, max(math.ceil(budget * d), SKETCH_MIN_CAP))


def sketch_width(eigenvalues: Tensor, rank: int, cap: int, mass: float = DEFAULT_MASS) -> int:
    """ℓ_X: the smallest ℓ in [k, min(2k, cap, d)] with share_ℓ ≥ 1 − (1 − mass)/2 on every block.

    Args:
        eigenvalues: ``[d]`` or ``[B, d]`` spectra of one factor.
        rank: the factor's subspace rank k ≥ 1.
        cap: the cap L on ℓ.
        mass: the rank rule's mass (the sketch must reach half its escaped mass).

    Returns:
        ℓ_X (at least min(k, d); the upper end when no ℓ in the range reaches the mass).

    Raises:
        ValueError: ``rank`` or ``cap`` below 1, or ``mass`` outside (0, 1].
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int; got {rank!r}")
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"cap must be a positive int; got {cap!r}")
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1]; got {mass!r}")
    rows = eigenvalues.reshape(-1, eigenvalues.shape[-1])
    d = rows.shape[-1]
    low = min(rank, d)
    high = max(low, min(2 * rank, cap, d))
    target = 1.0 - (1.0 - mass) / 2
    worst = torch.stack([rank_profile(row)[0] for row in rows]).min(dim=0).values  # [d + 1]
    hits = torch.nonzero(worst[low : high + 1] >= target)
    return low + int(hits[0]) if hits.numel() else high


def sketch_ranks(
    spectra: Iterable[ParamSpectra], mass: float, flatness: float, budget: float = DEFAULT_SKETCH_BUDGET
) -> SketchChoice:
    """k_A, k_B and ℓ of one shape for ``sketch=True`` (module docstring, sketched mode).

    Args:
        spectra: the calibrated spectra of the parameters of one shape, at the sketched block size.
        mass: see :func:`choose_rank`.
        flatness: see :func:`choose_rank`.
        budget: ``sketch_budget``, the cap on ℓ as a fraction of the largest block dimension, in (0, 1].

    Raises:
        ValueError: no spectra, or an option out of range.
    """
    spectra = list(spectra)
    if not spectra:
        raise ValueError("no calibrated spectra for this shape")
    sides = ([s for ps in spectra for s in ps.spectra_a], [s for ps in spectra for s in ps.spectra_b])
    m, n = (max(s.shape[-1] for s in side) for side in sides)
    cap = sketch_cap(m, n, budget)
    choices, widths = [], []
    for stacks, d in zip(sides, (m, n), strict=True):
        choice = _merge(stacks, mass, flatness, None, max_rank=d if d <= cap else max(1, cap // 2))
        choices.append(choice)
        widths.append(max(sketch_width(s, choice.rank, cap, mass) for s in stacks))
    ell = max(*widths, choices[0].rank, choices[1].rank)
    return SketchChoice(rank_a=choices[0], rank_b=choices[1], sketch_rank=ell, cap=cap)


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
