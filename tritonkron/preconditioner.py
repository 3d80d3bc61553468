"""Per-block Kronecker preconditioner state and its step (reference path).

One *block group* is a stack of equal-shape blocks ``[B, m, n]`` of one parameter. Its state is
a dict of tensors (checkpoint-friendly: ``torch.load(weights_only=True)`` reads it back):

    factor_a [B, m, m], factor_b [B, n, n]   EMA factor statistics A, B
    basis_a  [B, m, m], basis_b  [B, n, n]   stale eigenbases Q_A, Q_B (columns descending)
    eig_a    [B, m],    eig_b    [B, n]      tracked eigenvalues a, b = diag(Qᵀ X Q)
    trace    [B]                             τ = EMA of ‖G‖²_F (von Neumann normaliser)
    ready    [B] bool                        block initialised from a non-zero gradient

The step for each block, in order (PAPER §4.3): (1) the direction U = P_A M P_B from the
pre-update statistics, (2) the statistics update with the current gradient, so a gradient never
enters its own preconditioner, (3) every T steps the basis refresh. A block is initialised from
the first non-zero gradient it sees (eigendecomposition of G Gᵀ and Gᵀ G, scale-aware eigenvalues)
and produces no update on that step, so all-zero blocks (unused embedding rows) never divide by 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from tritonkron import ops
from tritonkron.config import Divergence, TailRule
from tritonkron.divergences import coupling, initial_eigenvalues, preconditioner_eigenvalues, update_factors
from tritonkron.reference.basis import canonical_degenerate_basis, eigh_descending, subspace_iteration
from tritonkron.reference.precondition import factor_scales, floor_eigenvalues

logger = logging.getLogger(__name__)

FACTOR_A, FACTOR_B = "factor_a", "factor_b"
BASIS_A, BASIS_B = "basis_a", "basis_b"
EIG_A, EIG_B = "eig_a", "eig_b"
TRACE, READY = "trace", "ready"
GROUP_KEYS = (FACTOR_A, FACTOR_B, BASIS_A, BASIS_B, EIG_A, EIG_B, TRACE, READY)


@dataclass(frozen=True)
class KronSettings:
    """Hyperparameters of the Kronecker path, parsed from one param group.

    Attributes:
        divergence: factor rule (PAPER §2.3).
        rank: subspace rank k per factor, or None for full eigenvalue preconditioning.
        tail: isotropic tail rule (PAPER §4.2).
        alpha: tail multiplier α.
        beta2: retention of the factor and eigenvalue EMAs.
        eps: ε of the 1/(√(a_i b_j) + ε) damping.
        eig_floor: relative floor of eigenvalues, x ≥ eig_floor · max x.
        init_floor: floor of the initial eigenvalues relative to their mean.
        flat_tail_in_stats: use the spike-and-flat eigenvalues inside the LogDet/Frobenius coupling.
        sketch: keep each factor as a rank-ℓ low-rank-plus-isotropic sketch (:mod:`tritonkron.sketch`).
        sketch_rank: ℓ, the sketch rank (≥ rank); None when ``sketch`` is False.
        factor_ranks: (k_A, k_B) when the two factors have their own ranks (``rank="auto"``).
    """

    divergence: Divergence
    rank: int | None
    tail: TailRule
    alpha: float
    beta2: float
    eps: float
    eig_floor: float
    init_floor: float
    flat_tail_in_stats: bool
    sketch: bool = False
    sketch_rank: int | None = None
    factor_ranks: tuple[int | None, int | None] | None = None

    @property
    def rank_a(self) -> int | None:
        """Subspace rank of the left factor A (``factor_ranks`` when tuned per factor, else ``rank``)."""
        return self.rank if self.factor_ranks is None else self.factor_ranks[0]

    @property
    def rank_b(self) -> int | None:
        """Subspace rank of the right factor B."""
        return self.rank if self.factor_ranks is None else self.factor_ranks[1]


def new_group_state(
    count: int, m: int, n: int, dtype: torch.dtype, device: torch.device
) -> dict[str, Tensor]:
    """Empty state for ``count`` blocks of shape ``m × n`` (identity bases, not ready)."""
    kw = {"dtype": dtype, "device": device}
    return {
        FACTOR_A: torch.zeros(count, m, m, **kw),
        FACTOR_B: torch.zeros(count, n, n, **kw),
        BASIS_A: torch.eye(m, **kw).expand(count, m, m).clone(),
        BASIS_B: torch.eye(n, **kw).expand(count, n, n).clone(),
        EIG_A: torch.ones(count, m, **kw),
        EIG_B: torch.ones(count, n, **kw),
        TRACE: torch.ones(count, **kw),
        READY: torch.zeros(count, dtype=torch.bool, device=device),
    }


def _where(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(mask.reshape(-1, *([1] * (old.dim() - 1))), new, old)


def _flatten_tail(x: Tensor, rank: int | None) -> Tensor:
    """Replace x_i for i > k by the tail mean (the spike-and-flat eigenvalues)."""
    if rank is None or rank >= x.shape[-1]:
        return x
    tail = x[..., rank:].mean(-1, keepdim=True).expand(*x.shape[:-1], x.shape[-1] - rank)
    return torch.cat([x[..., :rank], tail], dim=-1)


def initialize_blocks(state: dict[str, Tensor], G: Tensor, mask: Tensor, settings: KronSettings) -> None:
    """Initialise the blocks selected by ``mask`` from their gradient ``G: [B, m, n]``.

    Q_A, l = eigh(G Gᵀ), Q_B, r = eigh(Gᵀ G) (descending); eigenvalues from
    :func:`initial_eigenvalues`; factors A = Q_A diag(a) Q_Aᵀ, B = Q_B diag(b) Q_Bᵀ so that the
    factors and the tracked eigenvalues share one gauge.
    """
    left = eigh_descending(G @ G.transpose(-1, -2))
    right = eigh_descending(G.transpose(-1, -2) @ G)
    sq_norm = (G * G).sum((-1, -2))
    a, b = initial_eigenvalues(settings.divergence, left.values, right.values, sq_norm, settings.init_floor)
    # Floored eigenvalues form one degenerate eigenspace: give it a basis that does not depend on
    # eigh's arbitrary choice, so the trajectory is invariant to the scale of the loss.
    Q_A = canonical_degenerate_basis(left.vectors, a == a.amin(-1, keepdim=True))
    Q_B = canonical_degenerate_basis(right.vectors, b == b.amin(-1, keepdim=True))
    A = (Q_A * a.unsqueeze(-2)) @ Q_A.transpose(-1, -2)
    B = (Q_B * b.unsqueeze(-2)) @ Q_B.transpose(-1, -2)
    updates = {
        FACTOR_A: A,
        FACTOR_B: B,
        BASIS_A: Q_A,
        BASIS_B: Q_B,
        EIG_A: a,
        EIG_B: b,
        TRACE: sq_norm,
    }
    for key, value in updates.items():
        state[key] = _where(mask, value, state[key])
    state[READY] = state[READY] | mask


def direction(state: dict[str, Tensor], M: Tensor, settings: KronSettings) -> Tensor:
    """Preconditioned direction U = P_A M P_B ``[B, m, n]`` from the current statistics.

    P_X is the full (rank=None) or spike-and-flat (rank=k) inverse square root of factor X in its
    tracked eigenbasis (see :mod:`tritonkron.reference.precondition`).
    """
    a, b = preconditioner_eigenvalues(settings.divergence, state[EIG_A], state[EIG_B], state[TRACE])
    a = floor_eigenvalues(a, settings.eig_floor)
    b = floor_eigenvalues(b, settings.eig_floor)
    s_A = factor_scales(a, settings.rank_a, settings.tail, settings.alpha)
    s_B = factor_scales(b, settings.rank_b, settings.tail, settings.alpha)
    return ops.precondition(M, state[BASIS_A], state[BASIS_B], s_A, s_B, settings.eps)


def update_statistics(state: dict[str, Tensor], G: Tensor, mask: Tensor, settings: KronSettings) -> None:
    """EMA update of factors, tracked eigenvalues and trace for the blocks in ``mask``."""
    Q_A, Q_B = state[BASIS_A], state[BASIS_B]
    a = floor_eigenvalues(state[EIG_A], settings.eig_floor)
    b = floor_eigenvalues(state[EIG_B], settings.eig_floor)
    if settings.flat_tail_in_stats:
        a, b = _flatten_tail(a, settings.rank_a), _flatten_tail(b, settings.rank_b)
    rule = coupling(settings.divergence, a, b)
    beta = settings.beta2
    A, B = update_factors(state[FACTOR_A], state[FACTOR_B], G, Q_A, Q_B, rule, beta)
    G_hat = Q_A.transpose(-1, -2) @ G @ Q_B
    eig_a, eig_b = ops.track_eigenvalues(state[EIG_A], state[EIG_B], G_hat, *rule, beta)
    trace = beta * state[TRACE] + (1 - beta) * (G * G).sum((-1, -2))
    updates = {FACTOR_A: A, FACTOR_B: B, EIG_A: eig_a, EIG_B: eig_b, TRACE: trace}
    for key, value in updates.items():
        state[key] = _where(mask, value, state[key])


def refresh_bases(state: dict[str, Tensor]) -> bool:
    """One power step + QR per factor, eigenvalues re-estimated as Rayleigh quotients, re-sorted.

    On a QR failure or a non-finite result the previous bases and eigenvalues are kept.

    Returns:
        True when the new bases were accepted.
    """
    try:
        left = subspace_iteration(state[FACTOR_A], state[BASIS_A])
        right = subspace_iteration(state[FACTOR_B], state[BASIS_B])
    except RuntimeError as error:  # torch.linalg.LinAlgError is a RuntimeError
        logger.warning("basis refresh failed (%s); keeping the previous bases", error)
        return False
    tensors = (left.values, left.vectors, right.values, right.vectors)
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        logger.warning("basis refresh produced non-finite values; keeping the previous bases")
        return False
    ready = state[READY]
    state[BASIS_A] = _where(ready, left.vectors, state[BASIS_A])
    state[BASIS_B] = _where(ready, right.vectors, state[BASIS_B])
    state[EIG_A] = _where(ready, left.values, state[EIG_A])
    state[EIG_B] = _where(ready, right.values, state[EIG_B])
    return True


def block_group_step(
    state: dict[str, Tensor], G: Tensor, M: Tensor, settings: KronSettings, refresh: bool
) -> Tensor:
    """One optimizer step of a block group; returns the update direction ``[B, m, n]``.

    Args:
        state: the group's state (modified in place).
        G: gradient blocks ``[B, m, n]`` in the statistics dtype.
        M: momentum blocks ``[B, m, n]``.
        settings: hyperparameters.
        refresh: whether this is a basis-refresh step (every T steps).
    """
    ready = state[READY]
    U = torch.zeros_like(M)
    if bool(ready.any()):
        U = _where(ready, direction(state, M, settings), U)
        update_statistics(state, G, ready, settings)
        if refresh:
            refresh_bases(state)
    fresh = ~ready & (G.flatten(1).abs().amax(1) > 0)
    if bool(fresh.any()):
        initialize_blocks(state, G, fresh, settings)
    return U
