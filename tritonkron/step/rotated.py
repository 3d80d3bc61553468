"""The block-group step with the momentum kept in the eigenbasis (the default dense path).

Same mathematics as :func:`tritonkron.step.dense.block_group_step` with the eigenbasis form of
the direction, organised so that each product is computed once (:mod:`tritonkron.ops.rotation.reference`):

1. (A', B', Ĝ) from the shared products G Q_B and Q_Aᵀ G (:func:`tritonkron.ops.rotated_statistics`);
2. M̂ ← β₁ M̂ + (1 − β₁) Ĝ, the rotated momentum M̂ = Q_Aᵀ M Q_B (where the step is not skipped);
3. U = Q_A (M̂ ⊙ Σ) Q_Bᵀ with Σ from the pre-update eigenvalues, so a gradient never enters its
   own preconditioner (docs/maths.md §4.3);
4. statistics written for ready blocks; every T steps the basis refresh, and a block's first
   non-zero gradient initialises it; both carry M̂ into the new bases exactly,
   M̂' = Q_A'ᵀ (Q_A M̂ Q_Bᵀ) Q_B'.

Per step this is 3mn(m + n) + mn·min(m, n) multiply-adds instead of 5mn(m + n). The block state is
that of :func:`tritonkron.step.dense.new_group_state` plus ``momentum_hat [B, m, n]``. Used when the
direction is not cheaper in low-rank form (:func:`uses_rotated_momentum`); the low-rank and
sketched forms need M itself, which they keep as ``momentum [B, m, n]`` in their block state.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from tritonkron.math.divergences import preconditioner_eigenvalues
from tritonkron.ops.precondition.reference import factor_scales, floor_eigenvalues
from tritonkron.ops.rotated_statistics import rotated_statistics
from tritonkron.ops.rotation import rotate, rotate_back
from tritonkron.options import KronSettings
from tritonkron.state import BASIS_A, BASIS_B, EIG_A, EIG_B, FACTOR_A, FACTOR_B, MOMENTUM_HAT, READY, TRACE
from tritonkron.step.bounds import adam_bound, bounded_scales, damp
from tritonkron.step.dense import (
    INIT_KEYS,
    REFRESH_KEYS,
    ensure_failure_counts,
    initial_values,
    kept_rank,
    low_rank_is_cheaper,
    masked_where,
    refreshed_bases,
    statistics_coupling,
    tracked_updates,
)
from tritonkron.step.schedule import KNOWN_READY, known_ready
from tritonkron.step.traceable import Refresh, refresh_blocks, run_if

__all__ = ["MOMENTUM_HAT", "rotated_group_step", "uses_rotated_momentum"]


def uses_rotated_momentum(settings: KronSettings, m: int, n: int) -> bool:
    """Whether an m × n block group keeps its momentum rotated (dense factors, eigenbasis-form direction)."""
    k_A, k_B = kept_rank(settings.rank_a, m), kept_rank(settings.rank_b, n)
    return not settings.sketch and not low_rank_is_cheaper(m, n, k_A, k_B)


def _rebase(
    M_hat: Tensor, old_A: Tensor, old_B: Tensor, new_A: Tensor, new_B: Tensor, mask: Tensor
) -> Tensor:
    """M̂ in the new bases for the blocks in ``mask``: Q_A'ᵀ (Q_A M̂ Q_Bᵀ) Q_B'; unchanged elsewhere."""
    moved = rotate(rotate_back(M_hat, old_A, old_B), new_A, new_B)
    return masked_where(mask, moved, M_hat)


def _damped_sigma(state: dict[str, Tensor], settings: KronSettings, M_hat: Tensor, G_hat: Tensor) -> Tensor:
    """Σ = σ/(1 + εσ), σ_ij = s_A,i s_B,j, from the current eigenvalues (see ``preconditioner.direction``).

    With ``bound="adam"``, σ_ij ← min(σ_ij, 1/(√(1 − β₂)|Ĝ_ij|), B/|M̂_ij|) first, so that
    |M̂_ij| Σ_ij ≤ B (:func:`tritonkron.step.bounds.bounded_scales`, docs/maths.md §5.5).
    """
    a, b = preconditioner_eigenvalues(settings.divergence, state[EIG_A], state[EIG_B], state[TRACE])
    s_A = factor_scales(
        floor_eigenvalues(a, settings.eig_floor), settings.rank_a, settings.tail, settings.alpha
    )
    s_B = factor_scales(
        floor_eigenvalues(b, settings.eig_floor), settings.rank_b, settings.tail, settings.alpha
    )
    sigma = s_A.unsqueeze(-1) * s_B.unsqueeze(-2)
    if settings.bound is not None:
        cap = adam_bound(settings.beta1, settings.beta2)
        sigma = bounded_scales(sigma, M_hat, G_hat, settings.beta2, cap)
    return damp(sigma, settings.eps)


def _statistics(state: dict[str, Tensor], G: Tensor, settings: KronSettings) -> dict[str, Tensor]:
    """New factors, tracked eigenvalues, trace and the rotated gradient Ĝ (nothing written)."""
    rule = statistics_coupling(state, settings)
    beta = settings.beta2
    A, B, G_hat = rotated_statistics(
        state[FACTOR_A],
        state[FACTOR_B],
        G,
        state[BASIS_A],
        state[BASIS_B],
        rule.right_weight,
        (1 - beta) * rule.left_scale,
        rule.left_weight,
        (1 - beta) * rule.right_scale,
        beta,
        precision=settings.precision,
    )
    return {FACTOR_A: A, FACTOR_B: B, **tracked_updates(state, G, G_hat, rule, beta), "G_hat": G_hat}


def _refresh(*xs: Tensor, method: str = "householder") -> tuple[Tensor, ...]:
    """:func:`refreshed_bases` of the blocks ``due`` (ready, not skipped, at their refresh step) plus
    M̂ carried into the accepted new bases (pure; run_if body)."""
    *updated, M_hat, factor_a, factor_b, due = xs
    new = refreshed_bases(*updated, factor_a, factor_b, due, method)
    accepted = due & (new[-1] == 0)  # a due block's failure count is reset exactly when accepted
    return (*new, _rebase(M_hat, updated[0], updated[1], new[0], new[1], accepted))


_READY_AT = INIT_KEYS.index(READY)


def _initialise(*xs: Tensor, settings: KronSettings) -> tuple[Tensor, ...]:
    """:func:`initial_values` plus M̂ carried from the old (identity) bases into the new ones of the
    blocks that were initialised (a failed initialisation keeps both, pure)."""
    *updated, M_hat, G, mask = xs
    new = initial_values(*updated, G, mask, settings.divergence, settings.init_floor)
    initialised = mask & new[_READY_AT]
    return (*new, _rebase(M_hat, updated[2], updated[3], new[2], new[3], initialised))


def rotated_group_step(
    state: dict[str, Tensor],
    G: Tensor,
    settings: KronSettings,
    refresh: Refresh,
    ok: Tensor | None = None,
    ready_known: bool = False,
) -> Tensor:
    """One optimizer step of a block group with rotated momentum; returns the direction ``[B, m, n]``.

    Args:
        state: the group's state, with ``momentum_hat`` (modified in place).
        G: gradient blocks ``[B, m, n]`` in the statistics dtype (finite; zero when skipped).
        settings: hyperparameters (``beta1`` is the momentum's retention).
        refresh: the blocks whose bases are refreshed now: a tuple of block positions (known on the
            host, :mod:`tritonkron.step.schedule`; only those blocks are computed), a bool for all
            or none, or under ``torch.compile`` the ⌈B/T⌉ due slots computed from the traced clock
            (:func:`tritonkron.step.traceable.refresh_slots`).
        ok: one-element or ``[B]`` bool tensor, False where the step is skipped: statistics and
            momentum are untouched and the direction is zero. None means True.
        ready_known: the host knows every block is initialised (:meth:`tritonkron.Kron.prepare_capture`):
            no readiness masks, no initialisation (and no ``torch.cond`` under compile).
    """
    ready = state[READY]
    # Once the host knows that every block is ready, the readiness masks and the initialisation
    # test (a device read) are skipped; only the skip flag ``ok`` still masks.
    known = known_ready(ready, ready_known)
    active = ok if known else (ready if ok is None else ready & ok)
    new = _statistics(state, G, settings)
    M_hat = state[MOMENTUM_HAT]
    G_hat = new.pop("G_hat")
    moved = M_hat.lerp(G_hat, 1 - settings.beta1)
    M_hat = moved if ok is None else masked_where(ok, moved, M_hat)
    state[MOMENTUM_HAT] = M_hat
    sigma = _damped_sigma(state, settings, M_hat, G_hat)
    U = rotate_back(M_hat * sigma, state[BASIS_A], state[BASIS_B], precision=settings.precision)
    if active is not None:
        U = masked_where(active, U, torch.zeros_like(U))
    for key, value in new.items():
        state[key] = value if active is None else masked_where(active, value, state[key])
    ensure_failure_counts(state)
    due = ready.new_ones(ready.shape) if active is None else active.expand(ready.shape)
    refresh_fn = partial(_refresh, method=settings.orthonormalize)
    refresh_blocks(state, (*REFRESH_KEYS, MOMENTUM_HAT), refresh_fn, refresh, due)
    if known:
        return U
    fresh = ~ready & (G.flatten(1).abs().amax(1) > 0)
    if ok is not None:
        fresh = fresh & ok
    keys = (*INIT_KEYS, MOMENTUM_HAT)

    def init(*xs: Tensor) -> tuple[Tensor, ...]:
        return _initialise(*xs, settings=settings)

    values = run_if(fresh.any(), init, tuple(state[k] for k in keys), (G, fresh))
    state.update(zip(keys, values, strict=True))
    if not torch.compiler.is_compiling():
        KNOWN_READY.watch(state[READY])
    return U
