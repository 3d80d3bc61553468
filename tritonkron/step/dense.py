"""Per-block Kronecker preconditioner state and its step (reference path).

One *block group* is a stack of equal-shape blocks ``[B, m, n]`` of one parameter; its state
(keys and shapes) is described in :mod:`tritonkron.state`.

Groups whose direction is cheaper in eigenbasis form (full rank, or k near the dimension) keep
their momentum rotated and step with :func:`tritonkron.step.rotated.rotated_group_step`, which computes
every product once; :func:`block_group_step` below is the step of the low-rank direction form
(:func:`low_rank_is_cheaper`), which reads the group's momentum M ``[B, m, n]`` (block state,
advanced before the step by :func:`tritonkron.step.momentum.advance_momentum`).

The step for each block, in order (docs/maths.md §4.3): (1) the direction U = P_A M P_B from the
pre-update statistics, (2) the statistics update with the current gradient, so a gradient never
enters its own preconditioner, (3) every T steps the basis refresh. A block is initialised from
the first non-zero gradient it sees (eigendecomposition of G Gᵀ and Gᵀ G, scale-aware eigenvalues)
and produces no update on that step, so all-zero blocks (unused embedding rows) never divide by 0.
Every eigendecomposition goes through :func:`tritonkron.math.safe_linalg.safe_eigh`, which
never raises: a block whose initialisation fails in every attempt of its fallback ladder stays
waiting for the next gradient, and its ``refresh_failures`` count grows.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from tritonkron.math.basis import canonical_degenerate_basis, subspace_iteration
from tritonkron.math.checks import symmetrize
from tritonkron.math.divergences import Coupling, coupling, initial_eigenvalues, preconditioner_eigenvalues
from tritonkron.math.safe_linalg import SITE_INIT, safe_eigh
from tritonkron.ops.factor_update import update_factors
from tritonkron.ops.precondition import precondition
from tritonkron.ops.precondition.reference import factor_scales, floor_eigenvalues
from tritonkron.ops.rotation import rotate, rotate_back
from tritonkron.ops.sketch import sketch_precondition
from tritonkron.ops.track_eigenvalues import track_eigenvalues
from tritonkron.options import Divergence, KronSettings
from tritonkron.state import (
    BASIS_A,
    BASIS_B,
    EIG_A,
    EIG_B,
    FACTOR_A,
    FACTOR_B,
    FAILURES,
    MOMENTUM_HAT,
    READY,
    TRACE,
)
from tritonkron.step.bounds import adam_bound, bounded_low_rank, bounded_scales, damp
from tritonkron.step.schedule import KNOWN_READY, known_ready
from tritonkron.step.traceable import Refresh, refresh_blocks, run_if


def new_group_state(
    count: int, m: int, n: int, dtype: torch.dtype, device: torch.device, rotated: bool = False
) -> dict[str, Tensor]:
    """Empty state for ``count`` blocks of shape ``m × n`` (identity bases, not ready); ``rotated``
    adds the zero rotated momentum of :mod:`tritonkron.step.rotated`."""
    kw = {"dtype": dtype, "device": device}
    extra = {MOMENTUM_HAT: torch.zeros(count, m, n, **kw)} if rotated else {}
    return {
        **extra,
        FACTOR_A: torch.zeros(count, m, m, **kw),
        FACTOR_B: torch.zeros(count, n, n, **kw),
        BASIS_A: torch.eye(m, **kw).expand(count, m, m).clone(),
        BASIS_B: torch.eye(n, **kw).expand(count, n, n).clone(),
        EIG_A: torch.ones(count, m, **kw),
        EIG_B: torch.ones(count, n, **kw),
        TRACE: torch.ones(count, **kw),
        READY: torch.zeros(count, dtype=torch.bool, device=device),
        FAILURES: torch.zeros(count, dtype=torch.int32, device=device),
    }


def masked_where(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` for the blocks selected by ``mask [B]``, ``old`` elsewhere (any trailing shape)."""
    return torch.where(mask.reshape(-1, *([1] * (old.dim() - 1))), new, old)


def ensure_failure_counts(state: dict[str, Tensor]) -> None:
    """Give state written before failure counting its (zero) ``refresh_failures`` counts."""
    if FAILURES not in state:
        ready = state[READY]
        state[FAILURES] = torch.zeros(ready.shape, dtype=torch.int32, device=ready.device)


def counted_failures(failures: Tensor, attempted: Tensor, accepted: Tensor) -> Tensor:
    """Consecutive-failure counts ``[B]``: n ← 0 where ``accepted``, n + 1 where ``attempted`` but
    not accepted, n elsewhere."""
    failed = (attempted & ~accepted).to(failures.dtype)
    return torch.where(accepted, torch.zeros_like(failures), failures + failed)


def finite_blocks(*tensors: Tensor) -> Tensor:
    """``[B]`` bool: every entry of block b of every tensor ``[B, ...]`` is finite."""
    return torch.stack([torch.isfinite(t.unsqueeze(-1)).flatten(1).all(1) for t in tensors]).all(0)


def squared_norms(G: Tensor) -> Tensor:
    """‖G_b‖²_F of each block of ``G [B, m, n]`` as row sums, then their sum.

    One reduction over all m·n entries is split across threads once a block exceeds the
    parallel grain, and where it splits depends on how many blocks share the call; reducing rows
    first keeps each block's sum independent of the batch (:mod:`tritonkron.step.stacking`).
    """
    return (G * G).sum(-1).sum(-1)


def flatten_tail(x: Tensor, rank: int | None) -> Tensor:
    """Replace x_i for i > k by the tail mean (the spike-and-flat eigenvalues)."""
    if rank is None or rank >= x.shape[-1]:
        return x
    tail = x[..., rank:].mean(-1, keepdim=True).expand(*x.shape[:-1], x.shape[-1] - rank)
    return torch.cat([x[..., :rank], tail], dim=-1)


def initial_values(
    factor_a: Tensor,
    factor_b: Tensor,
    basis_a: Tensor,
    basis_b: Tensor,
    eig_a: Tensor,
    eig_b: Tensor,
    trace: Tensor,
    ready: Tensor,
    failures: Tensor,
    G: Tensor,
    mask: Tensor,
    divergence: Divergence,
    init_floor: float,
) -> tuple[Tensor, ...]:
    """New ``INIT_KEYS`` values with the blocks in ``mask`` initialised from ``G`` (pure).

    A block of ``mask`` whose eigendecomposition failed in every attempt (``ok`` of
    :func:`~tritonkron.math.safe_linalg.safe_eigh`) or whose new state is not finite keeps its
    state and stays not ready, and its failure count grows; an initialised block's count is reset.
    """
    left = safe_eigh(symmetrize(G @ G.transpose(-1, -2)), site=SITE_INIT, descending=True)
    right = safe_eigh(symmetrize(G.transpose(-1, -2) @ G), site=SITE_INIT, descending=True)
    sq_norm = squared_norms(G)
    a, b = initial_eigenvalues(divergence, left.values, right.values, sq_norm, init_floor)
    # Floored eigenvalues form one degenerate eigenspace: give it a basis that does not depend on
    # eigh's arbitrary choice, so the trajectory is invariant to the scale of the loss.
    Q_A = canonical_degenerate_basis(left.vectors, a == a.amin(-1, keepdim=True))
    Q_B = canonical_degenerate_basis(right.vectors, b == b.amin(-1, keepdim=True))
    A = (Q_A * a.unsqueeze(-2)) @ Q_A.transpose(-1, -2)
    B = (Q_B * b.unsqueeze(-2)) @ Q_B.transpose(-1, -2)
    new = (A, B, Q_A, Q_B, a, b, sq_norm)
    old = (factor_a, factor_b, basis_a, basis_b, eig_a, eig_b, trace)
    accepted = mask & left.ok & right.ok & finite_blocks(*new)
    kept = tuple(masked_where(accepted, n, o) for n, o in zip(new, old, strict=True))
    return (*kept, ready | accepted, counted_failures(failures, mask, accepted))


INIT_KEYS = (FACTOR_A, FACTOR_B, BASIS_A, BASIS_B, EIG_A, EIG_B, TRACE, READY, FAILURES)


def initialize_blocks(state: dict[str, Tensor], G: Tensor, mask: Tensor, settings: KronSettings) -> None:
    """Initialise the blocks selected by ``mask`` from their gradient ``G: [B, m, n]``.

    Q_A, l = eigh(G Gᵀ), Q_B, r = eigh(Gᵀ G) (descending); eigenvalues from
    :func:`initial_eigenvalues`; factors A = Q_A diag(a) Q_Aᵀ, B = Q_B diag(b) Q_Bᵀ so that the
    factors and the tracked eigenvalues share one gauge. Runs only when ``mask`` selects a block;
    a block whose eigendecomposition fails stays waiting (:func:`initial_values`).
    """

    def init(*xs: Tensor) -> tuple[Tensor, ...]:
        return initial_values(*xs, settings.divergence, settings.init_floor)

    ensure_failure_counts(state)
    values = run_if(mask.any(), init, tuple(state[k] for k in INIT_KEYS), (G, mask))
    state.update(zip(INIT_KEYS, values, strict=True))


def kept_rank(rank: int | None, d: int) -> int:
    """Directions of a d-dim factor with their own scale: k, or d for full preconditioning."""
    return d if rank is None else min(rank, d)


def low_rank_is_cheaper(m: int, n: int, k_A: int, k_B: int) -> bool:
    """Whether the low-rank form of the direction should replace the eigenbasis form.

    The eigenbasis form costs 2mn(m + n) multiply-adds (four GEMMs with full bases); the low-rank
    form (:func:`tritonkron.ops.sketch.reference.sketch_precondition_ref`) about 2mn(k_A + k_B) plus
    O((m + n) k_A k_B). It is chosen when k_A + k_B ≤ (m + n)/2, where it saves at least half.
    """
    return 2 * (k_A + k_B) <= m + n


def direction(state: dict[str, Tensor], M: Tensor, settings: KronSettings, G: Tensor | None = None) -> Tensor:
    """Preconditioned direction U = P_A M P_B ``[B, m, n]`` from the current statistics.

    P_X is the full (rank=None) or spike-and-flat (rank=k) inverse square root of factor X in its
    tracked eigenbasis (see :mod:`tritonkron.ops.precondition.reference`). With damping, entry (i, j)
    of the rotated momentum is scaled by Σ_ij = σ_ij/(1 + εσ_ij), σ_ij = s_A,i s_B,j. For rank=k the
    scales beyond k are one constant c per factor, so the same U is computed in low-rank form from
    the top-k columns of the bases (no rotation by the full bases) when that is cheaper
    (:func:`low_rank_is_cheaper`). With ``bound="adam"`` the scales are capped so that RMS(U) ≤ B
    (:mod:`tritonkron.step.bounds`, docs/maths.md §5.5): per entry of Q_Aᵀ M Q_B in eigenbasis form,
    per entry, row, column and tail block in low-rank form; the current gradient ``G`` enters the
    cap as in the rotated path (per entry, or per part in low-rank form).
    """
    a, b = preconditioner_eigenvalues(settings.divergence, state[EIG_A], state[EIG_B], state[TRACE])
    a = floor_eigenvalues(a, settings.eig_floor)
    b = floor_eigenvalues(b, settings.eig_floor)
    s_A = factor_scales(a, settings.rank_a, settings.tail, settings.alpha)
    s_B = factor_scales(b, settings.rank_b, settings.tail, settings.alpha)
    m, n = M.shape[-2:]
    k_A, k_B = kept_rank(settings.rank_a, m), kept_rank(settings.rank_b, n)
    cap = None if settings.bound is None else adam_bound(settings.beta1, settings.beta2)
    if not low_rank_is_cheaper(m, n, k_A, k_B):
        if cap is None:
            return precondition(
                M, state[BASIS_A], state[BASIS_B], s_A, s_B, settings.eps, precision=settings.precision
            )
        Q_A, Q_B = state[BASIS_A], state[BASIS_B]
        M_hat = rotate(M, Q_A, Q_B, precision=settings.precision)
        G_hat = None if G is None else rotate(G, Q_A, Q_B, precision=settings.precision)
        sigma = bounded_scales(s_A.unsqueeze(-1) * s_B.unsqueeze(-2), M_hat, G_hat, settings.beta2, cap)
        return rotate_back(M_hat * damp(sigma, settings.eps), Q_A, Q_B, precision=settings.precision)
    # With k = d the constant multiplies I − U Uᵀ = 0, so any of the scales serves.
    c_A, c_B = s_A[..., min(k_A, m - 1)], s_B[..., min(k_B, n - 1)]
    if cap is not None:
        U_A, U_B = state[BASIS_A][..., :k_A], state[BASIS_B][..., :k_B]
        scales = (s_A[..., :k_A], c_A), (s_B[..., :k_B], c_B)
        return bounded_low_rank(M, (U_A, U_B), *scales, settings.eps, cap, G, settings.beta2)
    return sketch_precondition(
        M,
        state[BASIS_A][..., :k_A],
        s_A[..., :k_A],
        c_A,
        state[BASIS_B][..., :k_B],
        s_B[..., :k_B],
        c_B,
        settings.eps,
        precision=settings.precision,
    )


def statistics_coupling(state: dict[str, Tensor], settings: KronSettings) -> Coupling:
    """The divergence's increment weights from the tracked eigenvalues, floored at ``eig_floor``
    (with the spike-and-flat tail when ``flat_tail_in_stats``)."""
    a = floor_eigenvalues(state[EIG_A], settings.eig_floor)
    b = floor_eigenvalues(state[EIG_B], settings.eig_floor)
    if settings.flat_tail_in_stats:
        a, b = flatten_tail(a, settings.rank_a), flatten_tail(b, settings.rank_b)
    return coupling(settings.divergence, a, b)


def tracked_updates(
    state: dict[str, Tensor], G: Tensor, G_hat: Tensor, rule: Coupling, beta: float
) -> dict[str, Tensor]:
    """New tracked eigenvalues (from the rotated gradient Ĝ) and trace τ ← β τ + (1 − β)‖G‖²."""
    eig_a, eig_b = track_eigenvalues(state[EIG_A], state[EIG_B], G_hat, *rule, beta)
    trace = beta * state[TRACE] + (1 - beta) * squared_norms(G)
    return {EIG_A: eig_a, EIG_B: eig_b, TRACE: trace}


def update_statistics(
    state: dict[str, Tensor], G: Tensor, mask: Tensor | None, settings: KronSettings
) -> None:
    """EMA update of factors, tracked eigenvalues and trace for the blocks in ``mask`` (None: all)."""
    Q_A, Q_B = state[BASIS_A], state[BASIS_B]
    rule = statistics_coupling(state, settings)
    beta = settings.beta2
    A, B = update_factors(
        state[FACTOR_A], state[FACTOR_B], G, Q_A, Q_B, rule, beta, precision=settings.precision
    )
    G_hat = rotate(G, Q_A, Q_B, precision=settings.precision)
    updates = {FACTOR_A: A, FACTOR_B: B, **tracked_updates(state, G, G_hat, rule, beta)}
    for key, value in updates.items():
        state[key] = value if mask is None else masked_where(mask, value, state[key])


def refreshed_bases(
    basis_a: Tensor,
    basis_b: Tensor,
    eig_a: Tensor,
    eig_b: Tensor,
    failures: Tensor,
    factor_a: Tensor,
    factor_b: Tensor,
    ready: Tensor,
    method: str = "householder",
) -> tuple[Tensor, ...]:
    """New (Q_A, Q_B, a, b, failures): one power step + QR per factor for ready blocks (pure;
    ``method``: the orthonormaliser, :func:`tritonkron.math.basis.orthonormalize`).

    A ready block whose new bases or eigenvalues are not finite keeps its previous ones and counts
    one more consecutive failure; an accepted refresh resets its count.
    """
    left = subspace_iteration(factor_a, basis_a, method=method)
    right = subspace_iteration(factor_b, basis_b, method=method)
    new = (left.vectors, right.vectors, left.values, right.values)
    accept = ready & finite_blocks(*new)
    old = (basis_a, basis_b, eig_a, eig_b)
    kept = tuple(masked_where(accept, n, o) for n, o in zip(new, old, strict=True))
    return (*kept, counted_failures(failures, ready, accept))


REFRESH_KEYS = (BASIS_A, BASIS_B, EIG_A, EIG_B, FAILURES)


def block_group_step(
    state: dict[str, Tensor],
    G: Tensor,
    M: Tensor,
    settings: KronSettings,
    refresh: Refresh,
    ok: Tensor | None = None,
    ready_known: bool = False,
) -> Tensor:
    """One optimizer step of a block group; returns the update direction ``[B, m, n]``.

    Every decision is a mask, a host-known block selection or a device-side predicate, so the step
    traces into one graph.

    Args:
        state: the group's state (modified in place).
        G: gradient blocks ``[B, m, n]`` in the statistics dtype (finite).
        M: momentum blocks ``[B, m, n]``.
        settings: hyperparameters.
        refresh: the blocks whose bases are refreshed now (one power step + QR per factor, a
            non-finite result kept out and counted); see
            :func:`tritonkron.step.traceable.refresh_blocks`.
        ok: one-element bool tensor, False when the step is skipped (non-finite gradient): the
            statistics are left untouched and the direction is zero. None means True.
        ready_known: the host knows every block is initialised (:meth:`tritonkron.Kron.prepare_capture`):
            no readiness masks, no initialisation (and no ``torch.cond`` under compile).
    """
    ready = state[READY]
    known = known_ready(ready, ready_known)
    active = ok if known else (ready if ok is None else ready & ok)
    U = direction(state, M, settings, G)
    if active is not None:
        U = masked_where(active, U, torch.zeros_like(M))
    update_statistics(state, G, active, settings)
    ensure_failure_counts(state)
    due = ready.new_ones(ready.shape) if active is None else active.expand(ready.shape)
    refresh_blocks(
        state, REFRESH_KEYS, partial(refreshed_bases, method=settings.orthonormalize), refresh, due
    )
    if known:
        return U
    fresh = ~ready & (G.flatten(1).abs().amax(1) > 0)
    if ok is not None:
        fresh = fresh & ok
    initialize_blocks(state, G, fresh, settings)
    if not torch.compiler.is_compiling():
        KNOWN_READY.watch(state[READY])
    return U
