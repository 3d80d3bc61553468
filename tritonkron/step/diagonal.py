"""Block groups with a diagonal factor: dims above ``max_precond_dim`` (docs/maths.md §9.4).

A matrix dim d > ``max_precond_dim`` is not blocked and its factor is kept diagonal, a length-d
vector; the other side stays a dense Kronecker factor with its stale eigenbasis (both diagonal:
S = diag(a) ⊗ diag(b)). Restricted to diagonal matrices, each divergence's factor given the other is
the diagonal of its unconstrained fixed point (§9.4, [DER]), so the diagonal side is the dense
machinery with its basis fixed at I: its tracked eigenvalues are the exact factor. With Q_B the
dense side's basis (left side diagonal; the mirror case swaps the roles) and Ĝ = G Q_B:

    a_i ← β₂ a_i + (1−β₂) s_A Σ_j Ĝ_ij² w_B,j                    (no m × m matrix is formed)
    B   ← β₂ B + (1−β₂) s_B Gᵀ diag(w_A) G,   b_j ← β₂ b_j + (1−β₂) s_B Σ_i Ĝ_ij² w_A,i
    M̂   ← β₁ M̂ + (1−β₁) Ĝ,   U = (M̂ ⊙ Σ) Q_Bᵀ,   Σ_ij = damp(s_A,i s_B,j)

with the coupling weights (w, s) of :func:`tritonkron.math.divergences.coupling`, the scales of
:func:`tritonkron.ops.precondition.reference.factor_scales` (``rank``/``tail`` on the dense side
only, a per-coordinate scale on the diagonal side), the floors, the ε damping and ``bound="adam"``
of the eigenbasis form (:mod:`tritonkron.step.rotated`). Every T steps Q_B is refreshed (one power
step + QR, the host schedule of :mod:`tritonkron.step.schedule`) and M̂ carried into the new basis,
M̂' = M̂ Q_Bᵀ Q_B'; the first non-zero gradient G₀ initialises a block: a = diag(G₀G₀ᵀ) (row
squared norms), B from eigh(G₀ᵀG₀), both through the scale-aware rule of
:func:`~tritonkron.math.divergences.initial_eigenvalues` (which does not assume an order).

State keys and shapes: :mod:`tritonkron.state` (``diag_a``/``diag_b``).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from tritonkron.math.basis import canonical_degenerate_basis, subspace_iteration
from tritonkron.math.checks import symmetrize
from tritonkron.math.divergences import Coupling, coupling, initial_eigenvalues, preconditioner_eigenvalues
from tritonkron.math.safe_linalg import SITE_INIT, safe_eigh
from tritonkron.ops.precision import mm
from tritonkron.ops.precondition.reference import factor_scales, floor_eigenvalues
from tritonkron.ops.track_eigenvalues import track_eigenvalues
from tritonkron.options import KronSettings
from tritonkron.state import (
    BASIS_A,
    BASIS_B,
    DIAG_A,
    DIAG_B,
    EIG_A,
    EIG_B,
    FACTOR_A,
    FACTOR_B,
    FAILURES,
    MOMENTUM_HAT,
    READY,
    TRACE,
)
from tritonkron.step.bounds import adam_bound, bounded_scales, damp
from tritonkron.step.dense import (
    counted_failures,
    ensure_failure_counts,
    finite_blocks,
    flatten_tail,
    masked_where,
    squared_norms,
)
from tritonkron.step.schedule import KNOWN_READY, known_ready
from tritonkron.step.traceable import Refresh, refresh_blocks, run_if

__all__ = ["diagonal_group_step", "diagonal_sides", "new_diagonal_state"]

_SIDES = ((FACTOR_A, BASIS_A, EIG_A, DIAG_A), (FACTOR_B, BASIS_B, EIG_B, DIAG_B))


def diagonal_sides(state: dict[str, Tensor]) -> tuple[bool, bool]:
    """(left, right): which factors of a block group's state are diagonal ((False, False): dense)."""
    return DIAG_A in state, DIAG_B in state


def new_diagonal_state(
    count: int, m: int, n: int, diagonal: tuple[bool, bool], dtype: torch.dtype, device: torch.device
) -> dict[str, Tensor]:
    """Empty state of ``count`` m × n blocks with the sides flagged in ``diagonal`` kept diagonal
    (ones), the others dense (zero factor, identity basis, unit eigenvalues); not ready."""
    kw = {"dtype": dtype, "device": device}
    state: dict[str, Tensor] = {MOMENTUM_HAT: torch.zeros(count, m, n, **kw)}
    for (factor, basis, eig, diag), d, is_diag in zip(_SIDES, (m, n), diagonal, strict=True):
        if is_diag:
            state[diag] = torch.ones(count, d, **kw)
        else:
            state[factor] = torch.zeros(count, d, d, **kw)
            state[basis] = torch.eye(d, **kw).expand(count, d, d).clone()
            state[eig] = torch.ones(count, d, **kw)
    state[TRACE] = torch.ones(count, **kw)
    state[READY] = torch.zeros(count, dtype=torch.bool, device=device)
    state[FAILURES] = torch.zeros(count, dtype=torch.int32, device=device)
    return state


def _values(state: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(a, b): each side's diagonal factor or tracked eigenvalues."""
    return tuple(state[diag] if diag in state else state[eig] for _, _, eig, diag in _SIDES)  # type: ignore[return-value]


def _rotate(X: Tensor, Q_A: Tensor | None, Q_B: Tensor | None, precision: str) -> Tensor:
    """X̂ = Q_Aᵀ X Q_B, a missing basis being I."""
    if Q_A is not None:
        X = mm(Q_A.transpose(-1, -2), X, precision)
    return X if Q_B is None else mm(X, Q_B, precision)


def _rotate_back(X_hat: Tensor, Q_A: Tensor | None, Q_B: Tensor | None, precision: str) -> Tensor:
    """X = Q_A X̂ Q_Bᵀ, a missing basis being I."""
    if Q_A is not None:
        X_hat = mm(Q_A, X_hat, precision)
    return X_hat if Q_B is None else mm(X_hat, Q_B.transpose(-1, -2), precision)


def _diagonal_gram(G: Tensor, weight: Tensor | None, left: bool, precision: str) -> Tensor:
    """G diag(w) Gᵀ (``left``, ``[B, m, m]``) or Gᵀ diag(w) G (``[B, n, n]``), w None = 1; made
    exactly symmetric."""
    X = G if left else G.transpose(-1, -2)
    Xw = X if weight is None else X * weight.unsqueeze(-2)
    return symmetrize(mm(Xw, X.transpose(-1, -2), precision))


def _coupling(state: dict[str, Tensor], settings: KronSettings) -> Coupling:
    """The increment weights from the floored values; ``flat_tail_in_stats`` flattens the tail of
    the dense sides only (a diagonal side has no eigen-order)."""
    a, b = (floor_eigenvalues(x, settings.eig_floor) for x in _values(state))
    if settings.flat_tail_in_stats:
        a = a if DIAG_A in state else flatten_tail(a, settings.rank_a)
        b = b if DIAG_B in state else flatten_tail(b, settings.rank_b)
    return coupling(settings.divergence, a, b)


def _statistics(state: dict[str, Tensor], G: Tensor, settings: KronSettings) -> dict[str, Tensor]:
    """New values of both sides, the dense factors, τ, and Ĝ = Q_Aᵀ G Q_B (nothing written).

    Diagonal or tracked values x ← β₂ x + (1−β₂) s Σ Ĝ² w (:func:`track_eigenvalues`); a dense
    side's factor X ← β₂ X + (1−β₂) s G_X diag(w) G_Xᵀ with the other side's weight w (diagonal,
    since the other side is); τ ← β₂ τ + (1−β₂) ‖G‖²_F.
    """
    beta, precision = settings.beta2, settings.precision
    rule = _coupling(state, settings)
    G_hat = _rotate(G, state.get(BASIS_A), state.get(BASIS_B), precision)
    a, b = track_eigenvalues(*_values(state), G_hat, *rule, beta)
    new = {
        DIAG_A if DIAG_A in state else EIG_A: a,
        DIAG_B if DIAG_B in state else EIG_B: b,
        TRACE: beta * state[TRACE] + (1 - beta) * squared_norms(G),
    }
    sides = (
        (FACTOR_A, rule.left_weight, rule.left_scale, True),
        (FACTOR_B, rule.right_weight, rule.right_scale, False),
    )
    for key, weight, scale, left in sides:
        if key in state:
            increment = _diagonal_gram(G, weight, left, precision)
            new[key] = beta * state[key] + ((1 - beta) * scale).reshape(-1, 1, 1) * increment
    return {**new, "G_hat": G_hat}


def _damped_sigma(state: dict[str, Tensor], settings: KronSettings, M_hat: Tensor, G_hat: Tensor) -> Tensor:
    """Σ = damp(σ), σ_ij = s_A,i s_B,j from the current values: floored, rank/tail on dense sides,
    s = x^{-1/2} per coordinate on a diagonal side; with ``bound="adam"`` σ_ij is capped first so
    that |M̂_ij| Σ_ij ≤ B (:func:`tritonkron.step.bounds.bounded_scales`)."""
    a, b = preconditioner_eigenvalues(settings.divergence, *_values(state), state[TRACE])
    rank_a = None if DIAG_A in state else settings.rank_a
    rank_b = None if DIAG_B in state else settings.rank_b
    s_A = factor_scales(floor_eigenvalues(a, settings.eig_floor), rank_a, settings.tail, settings.alpha)
    s_B = factor_scales(floor_eigenvalues(b, settings.eig_floor), rank_b, settings.tail, settings.alpha)
    sigma = s_A.unsqueeze(-1) * s_B.unsqueeze(-2)
    if settings.bound is not None:
        sigma = bounded_scales(
            sigma, M_hat, G_hat, settings.beta2, adam_bound(settings.beta1, settings.beta2)
        )
    return damp(sigma, settings.eps)


def _rebase(M_hat: Tensor, old: Tensor, new: Tensor, left: bool) -> Tensor:
    """M̂ carried into a side's new basis: Q'ᵀ Q M̂ (left) or M̂ Qᵀ Q' (right), exact for orthogonal Q."""
    if left:
        return mm(new.transpose(-1, -2) @ old, M_hat)
    return mm(M_hat, old.transpose(-1, -2) @ new)


def _refresh(
    basis: Tensor,
    eig: Tensor,
    failures: Tensor,
    M_hat: Tensor,
    factor: Tensor,
    due: Tensor,
    *,
    left: bool,
    method: str,
) -> tuple[Tensor, ...]:
    """One dense side's refresh for the blocks ``due`` (pure): Q ← qr(X Q).Q, x_i ← (Qᵀ X Q)_ii,
    re-sorted; a non-finite result keeps the old basis and counts a failure; M̂ rebased."""
    new = subspace_iteration(factor, basis, method=method)
    accept = due & finite_blocks(new.vectors, new.values)
    Q = masked_where(accept, new.vectors, basis)
    return (
        Q,
        masked_where(accept, new.values, eig),
        counted_failures(failures, due, accept),
        masked_where(accept, _rebase(M_hat, basis, Q, left), M_hat),
    )


def _initial_values(*xs: Tensor, keys: tuple[str, ...], settings: KronSettings) -> tuple[Tensor, ...]:
    """``keys``' new values with the blocks in ``mask`` initialised from ``G`` (pure).

    Diagonal side: l = diag(G Gᵀ) (or r = diag(Gᵀ G)); dense side: Q, l = eigh(G Gᵀ) descending,
    canonical basis of the floored eigenspace, factor Q diag(a) Qᵀ; both through
    :func:`initial_eigenvalues` with s = ‖G‖²_F, τ = s; M̂ rebased from the old bases. A block whose
    eigendecomposition failed or whose new state is not finite stays waiting and counts a failure.
    """
    *values, G, mask = xs
    old = dict(zip(keys, values, strict=True))
    sq = G * G
    grams = (sq.sum(-1), sq.sum(-2))
    eighs = [
        None
        if diag in old
        else safe_eigh(_diagonal_gram(G, None, i == 0, "ieee"), site=SITE_INIT, descending=True)
        for i, (_, _, _, diag) in enumerate(_SIDES)
    ]
    spectra = [g if e is None else e.values for g, e in zip(grams, eighs, strict=True)]
    sq_norm = squared_norms(G)
    a, b = initial_eigenvalues(settings.divergence, *spectra, sq_norm, settings.init_floor)
    new: dict[str, Tensor] = {TRACE: sq_norm}
    ok = mask
    M_hat = old[MOMENTUM_HAT]
    for i, ((factor, basis, eig, diag), x, e) in enumerate(zip(_SIDES, (a, b), eighs, strict=True)):
        if e is None:
            new[diag] = x
            continue
        Q = canonical_degenerate_basis(e.vectors, x == x.amin(-1, keepdim=True))
        new.update({factor: (Q * x.unsqueeze(-2)) @ Q.transpose(-1, -2), basis: Q, eig: x})
        M_hat = _rebase(M_hat, old[basis], Q, i == 0)
        ok = ok & e.ok
    new[MOMENTUM_HAT] = M_hat
    accepted = ok & finite_blocks(*new.values())
    out = {k: masked_where(accepted, v, old[k]) for k, v in new.items()}
    out[READY] = old[READY] | accepted
    out[FAILURES] = counted_failures(old[FAILURES], mask, accepted)
    return tuple(out[k] for k in keys)


def diagonal_group_step(
    state: dict[str, Tensor],
    G: Tensor,
    settings: KronSettings,
    refresh: Refresh,
    ok: Tensor | None = None,
    ready_known: bool = False,
) -> Tensor:
    """One step of a block group with a diagonal side; returns the direction ``[B, m, n]``.

    Arguments (``ready_known`` too) as :func:`tritonkron.step.rotated.rotated_group_step`: the
    direction uses the pre-update values (a gradient never enters its own preconditioner),
    statistics and M̂ are written where the step is active, then the due dense sides refresh and
    fresh blocks initialise.
    """
    ready = state[READY]
    known = known_ready(ready, ready_known)
    active = ok if known else (ready if ok is None else ready & ok)
    new = _statistics(state, G, settings)
    G_hat = new.pop("G_hat")
    moved = state[MOMENTUM_HAT].lerp(G_hat, 1 - settings.beta1)
    M_hat = moved if ok is None else masked_where(ok, moved, state[MOMENTUM_HAT])
    state[MOMENTUM_HAT] = M_hat
    sigma = _damped_sigma(state, settings, M_hat, G_hat)
    U = _rotate_back(M_hat * sigma, state.get(BASIS_A), state.get(BASIS_B), settings.precision)
    if active is not None:
        U = masked_where(active, U, torch.zeros_like(U))
    for key, value in new.items():
        state[key] = value if active is None else masked_where(active, value, state[key])
    ensure_failure_counts(state)
    due = ready.new_ones(ready.shape) if active is None else active.expand(ready.shape)
    for i, (factor, basis, eig, _) in enumerate(_SIDES):
        if basis in state:
            fn = partial(_refresh, left=i == 0, method=settings.orthonormalize)
            refresh_blocks(state, (basis, eig, FAILURES, MOMENTUM_HAT), fn, refresh, due, inputs=(factor,))
    if known:
        return U
    fresh = ~ready & (G.flatten(1).abs().amax(1) > 0)
    if ok is not None:
        fresh = fresh & ok
    keys = tuple(state)
    init = partial(_initial_values, keys=keys, settings=settings)
    values = run_if(fresh.any(), init, tuple(state[k] for k in keys), (G, fresh))
    state.update(zip(keys, values, strict=True))
    if not torch.compiler.is_compiling():
        KNOWN_READY.watch(state[READY])
    return U
