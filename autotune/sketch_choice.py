"""Sketched mode: the ranks k_A, k_B and the sketch rank ℓ of one shape for ``sketch=True``.

**Sketched mode** (:func:`sketch_ranks`, for ``tk.Kron(rank="auto", sketch=True)``). Dense factors
store d × d matrices whatever k is; a sketch stores d × ℓ per factor, so there the cost is set by
the one sketch rank ℓ of a block ``m × n`` (each factor keeps min(ℓ, d) directions), capped at

    L = min(max(m, n), max(⌈``sketch_budget`` · max(m, n)⌉, ``SKETCH_MIN_CAP``)),

so the two sketches (m + n)·ℓ hold at most ``sketch_budget`` × the 2(m² + n²) floats of the dense
factors and eigenbases (dims below the floor of 32 are not worth sketching). Per factor X of
dimension d:

1. k_X is the rank rule of :mod:`autotune.rank_rule` with max_rank = d when d ≤ L (the sketch
   holds X whole) and ⌊L/2⌋ otherwise, so that the sketch can keep ℓ ≥ 2k directions;
2. ℓ_X is the smallest ℓ in [k_X, min(2k_X, L, d)] whose spike-and-flat share reaches
   1 − (1 − ``mass``)/2 (the sketch carries half the mass the rank-k preconditioner lets escape,
   a buffer that keeps the top-k subspace resolved when eigenvalues cross), else the upper end;

and ℓ = max(ℓ_A, ℓ_B) ≥ max(k_A, k_B).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from autotune.calibration import ParamSpectra
from autotune.rank_rule import DEFAULT_MASS, RankChoice, _merge, rank_profile

__all__ = [
    "DEFAULT_SKETCH_BUDGET",
    "SKETCH_MIN_CAP",
    "SketchChoice",
    "sketch_cap",
    "sketch_ranks",
    "sketch_width",
]

DEFAULT_SKETCH_BUDGET = 0.125
"""Default cap on the sketch rank ℓ as a fraction of a block's largest dimension."""

SKETCH_MIN_CAP = 32
"""The cap on ℓ is never below this (or the block's largest dimension, when smaller)."""


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
