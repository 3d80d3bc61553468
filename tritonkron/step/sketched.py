"""Sketched (low-memory) Kronecker preconditioner state and its step: ``Kron(rank=k, sketch=True)``.

The dense path (:mod:`tritonkron.step.dense`) stores each factor as a d × d matrix plus a d × d
eigenbasis. Here each factor is a rank-ℓ low-rank-plus-isotropic sketch (ℓ = ``sketch_rank`` ≥ k,
capped at d), X̃ = U H Uᵀ + τ (I − U Uᵀ) with H = Uᵀ X̃ U its compression (diagonal after each
Rayleigh–Ritz step) — the maths is in :mod:`tritonkron.ops.sketch.reference` and docs/maths.md §6.
One block group ``[B, m, n]`` holds (a dict of tensors, ``torch.load(weights_only=True)``-safe):

    basis_a [B, m, ℓ_A], basis_b [B, n, ℓ_B]   sketch bases U_A, U_B (stale between refreshes)
    compression_a [B, ℓ_A, ℓ_A], compression_b  H_A, H_B = Uᵀ X̃ U
    eig_a   [B, ℓ_A],    eig_b   [B, ℓ_B]      tracked eigenvalues λ = diag(H) (Ritz values after
                                               a refresh, descending)
    tail_a  [B],         tail_b  [B]           tail levels τ (0 when ℓ_X = d_X)
    trace   [B]                                τ_vN = EMA of ‖G‖²_F (von Neumann normaliser)
    ready   [B] bool                           block initialised from a non-zero gradient
    refresh_failures [B]                       consecutive failed initialisations or refreshes

with ℓ_A = min(ℓ, m), ℓ_B = min(ℓ, n): O((m + n)·ℓ + ℓ²) floats per block instead of 2(m² + n²).
A sketch saved without its compressions (written before they were stored, when every update
ended in a Rayleigh–Ritz step) gets H = diag(λ), which is what it held (:func:`ensure_compression`).

The step mirrors :func:`tritonkron.step.dense.block_group_step` (docs/maths.md §4.3, §6.2):

1. **init** from the first non-zero gradient (thin SVD G = P diag(σ) Rᵀ; the same scale-aware,
   floored initial eigenvalues as the dense path, of which the top ℓ are kept and the rest
   averaged into τ), with no update on that step;
2. **direction** from the pre-update statistics: the sketch's virtual spectrum
   (λ₁…λ_ℓ, τ…τ), λ = diag(H) as the dense path's tracked eigenvalues, goes through the dense
   path's own rules (von Neumann ÷ √τ_vN, relative floor, ``factor_scales`` with the rank/tail/α
   of the group), and the damped spike-and-flat preconditioner is applied in low-rank form,
   U = P_A M P_B with P_X Y = U_k (D − c)(U_kᵀ Y) + c Y (plus the exact ε correction of the dense
   Σ = σ/(1 + εσ));
3. **statistics update** of both sketches from the old ones (simultaneous, as the dense rule),
   with the increment K = s·G W Gᵀ and the other factor's low-rank-plus-isotropic coupling weight
   W (LogDet W = B̃⁻¹, Frobenius W = B̃, von Neumann W = I; docs/maths.md §2.3, §4.4): in the fixed
   basis, H ← β₂ H + Uᵀ K U and τ from the conserved trace (:func:`track_sketch_statistics`, no
   factorisation);
4. **refresh** of the blocks due now (every T = ``precondition_every`` steps, the dense path's
   staggered host schedule): instead of step 3, the Rayleigh–Ritz step with the Krylov enrichment
   Q = qr([U, K U]) from the stored compression (:mod:`tritonkron.step.sketch_refresh`). T = 1
   re-diagonalises every update.

**Failures.** The factorisations never raise (:mod:`tritonkron.math.safe_linalg`). A block
whose initial SVD fails in every attempt stays waiting for the next gradient; a refresh whose
result is not finite (from either backend) keeps the block's tracked sketch, in its stale basis;
a tracking step whose result is not finite is dropped. Each counts in ``refresh_failures``
(reset by the next initialisation or refresh), which
:func:`tritonkron.step.guards.check_refresh_failures` turns into an error after ``max_refresh_failures``
in a row, as on the dense path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.math.divergences import initial_eigenvalues, preconditioner_eigenvalues
from tritonkron.ops.precondition.reference import factor_scales, floor_eigenvalues
from tritonkron.ops.sketch import sketch_precondition, sketch_track
from tritonkron.ops.sketch.reference import top_singular_subspaces, virtual_spectrum
from tritonkron.options import KronSettings
from tritonkron.state import (
    BASIS_A,
    BASIS_B,
    COMPRESSION_A,
    COMPRESSION_B,
    EIG_A,
    EIG_B,
    FAILURES,
    READY,
    SKETCH_KEYS,
    TAIL_A,
    TAIL_B,
    TRACE,
)
from tritonkron.step.bounds import adam_bound, bounded_low_rank
from tritonkron.step.dense import counted_failures, ensure_failure_counts, finite_blocks, masked_where
from tritonkron.step.schedule import KNOWN_READY, known_ready
from tritonkron.step.sketch_refresh import PRIOR_KEYS, refresh_sketches, sketch_weights
from tritonkron.step.traceable import Refresh, run_if

__all__ = [
    "ensure_compression",
    "initialize_sketch_blocks",
    "is_sketch_state",
    "new_sketch_state",
    "sketch_direction",
    "sketch_group_step",
    "sketch_state_bytes",
    "track_sketch_statistics",
]


def is_sketch_state(state: dict[str, Tensor]) -> bool:
    """Whether a block-group state dict is a sketch (rather than the dense factors)."""
    return TAIL_A in state


def new_sketch_state(
    count: int, m: int, n: int, ell: int, dtype: torch.dtype, device: torch.device
) -> dict[str, Tensor]:
    """Empty sketch state for ``count`` blocks of shape ``m × n`` with sketch rank ``ell`` (not ready)."""
    kw = {"dtype": dtype, "device": device}
    ell_a, ell_b = min(ell, m), min(ell, n)
    return {
        BASIS_A: torch.eye(m, ell_a, **kw).expand(count, m, ell_a).clone(),
        BASIS_B: torch.eye(n, ell_b, **kw).expand(count, n, ell_b).clone(),
        COMPRESSION_A: torch.eye(ell_a, **kw).expand(count, ell_a, ell_a).clone(),
        COMPRESSION_B: torch.eye(ell_b, **kw).expand(count, ell_b, ell_b).clone(),
        EIG_A: torch.ones(count, ell_a, **kw),
        EIG_B: torch.ones(count, ell_b, **kw),
        TAIL_A: torch.zeros(count, **kw),
        TAIL_B: torch.zeros(count, **kw),
        TRACE: torch.ones(count, **kw),
        READY: torch.zeros(count, dtype=torch.bool, device=device),
        FAILURES: torch.zeros(count, dtype=torch.int32, device=device),
    }


def sketch_state_bytes(state: dict[str, Tensor]) -> int:
    """Bytes held by one block group's sketch state."""
    return sum(t.numel() * t.element_size() for t in state.values())


def _split(x: Tensor, ell: int, d: int) -> tuple[Tensor, Tensor]:
    """Top ℓ values ``[B, ℓ]`` and the mean of the rest ``[B]`` (0 when ℓ ≥ d) of ``x: [B, d]``."""
    if ell >= d:
        return x[..., :d], torch.zeros_like(x[..., 0])
    return x[..., :ell], x[..., ell:].mean(-1)


def initialize_sketch_blocks(
    state: dict[str, Tensor], G: Tensor, mask: Tensor, settings: KronSettings
) -> None:
    """Initialise the blocks selected by ``mask`` from their gradient ``G: [B, m, n]``.

    The dense path sets A = Q_A diag(a) Q_Aᵀ with Q_A, l = eigh(G Gᵀ) and a the floored,
    scale-aware :func:`~tritonkron.math.divergences.initial_eigenvalues` of l (likewise B). Here the
    eigenpairs come from one thin SVD of G, the first ℓ of (Q_A, a) are kept and the remaining
    m − ℓ eigenvalues (floored zeros and small σ²) become the tail level τ_A = their mean, so that
    with ℓ ≥ d the sketch *is* the dense initial factor. A block whose SVD fails, or whose new
    sketch is not finite, stays waiting and its failure count grows.
    """

    def init(*xs: Tensor) -> tuple[Tensor, ...]:
        return _initial_sketch(*xs, settings)

    ensure_failure_counts(state)
    values = run_if(mask.any(), init, tuple(state[k] for k in _INIT_KEYS), (G, mask))
    state.update(zip(_INIT_KEYS, values, strict=True))


_INIT_KEYS = SKETCH_KEYS  # an initialisation writes every key of the sketch state


def _initial_sketch(
    basis_a: Tensor,
    basis_b: Tensor,
    compression_a: Tensor,
    compression_b: Tensor,
    eig_a: Tensor,
    eig_b: Tensor,
    tail_a: Tensor,
    tail_b: Tensor,
    trace: Tensor,
    ready: Tensor,
    failures: Tensor,
    G: Tensor,
    mask: Tensor,
    settings: KronSettings,
) -> tuple[Tensor, ...]:
    """New sketch state (``_INIT_KEYS`` order) with the blocks in ``mask`` initialised from ``G`` (pure)."""
    m, n = G.shape[-2:]
    ell_a, ell_b = basis_a.shape[-1], basis_b.shape[-1]
    P_A, sq_sigma, P_B, ok = top_singular_subspaces(G, ell_a, ell_b)
    pad = torch.zeros(*sq_sigma.shape[:-1], max(m, n) - sq_sigma.shape[-1], dtype=G.dtype, device=G.device)
    spectrum = torch.cat([sq_sigma, pad], dim=-1)
    sq_norm = (G * G).sum((-1, -2))
    a, b = initial_eigenvalues(
        settings.divergence, spectrum[..., :m], spectrum[..., :n], sq_norm, settings.init_floor
    )
    lam_a, tau_a = _split(a, ell_a, m)
    lam_b, tau_b = _split(b, ell_b, n)
    new = (P_A, P_B, torch.diag_embed(lam_a), torch.diag_embed(lam_b), lam_a, lam_b, tau_a, tau_b, sq_norm)
    old = (basis_a, basis_b, compression_a, compression_b, eig_a, eig_b, tail_a, tail_b, trace)
    accepted = mask & ok & finite_blocks(*new)
    kept = tuple(masked_where(accepted, v.to(o.dtype), o) for v, o in zip(new, old, strict=True))
    return (*kept, ready | accepted, counted_failures(failures, mask, accepted))


def _scales(x: Tensor, rank: int, settings: KronSettings) -> tuple[Tensor, Tensor]:
    """Top-k scales ``[B, k]`` and tail constant ``[B]`` from a floored virtual spectrum ``[B, d]``."""
    d = x.shape[-1]
    s = factor_scales(x, rank, settings.tail, settings.alpha)
    k = min(rank, d)
    # With k = d there is no tail; the constant then multiplies I − U Uᵀ = 0 and any finite value works.
    return s[..., :k], s[..., min(k, d - 1)]


def sketch_direction(
    state: dict[str, Tensor], M: Tensor, settings: KronSettings, G: Tensor | None = None
) -> Tensor:
    """Preconditioned direction ``[B, m, n]`` of the momentum ``M`` from the current sketches.

    U = P_A M P_B with P_X Y = U_k (D − c)(U_kᵀ Y) + c Y; with ``bound="adam"`` the top × top
    entries, top × tail rows, tail × top columns and the tail × tail block are each capped at
    RMS ≤ B, so RMS(U) ≤ B, and by the current gradient ``G``'s parts
    (:func:`tritonkron.step.bounds.bounded_low_rank`, docs/maths.md §5.5).
    """
    if settings.rank is None:
        raise ValueError("sketched preconditioning needs an int rank")
    m, n = M.shape[-2:]
    a = virtual_spectrum(state[EIG_A], state[TAIL_A], m)
    b = virtual_spectrum(state[EIG_B], state[TAIL_B], n)
    a, b = preconditioner_eigenvalues(settings.divergence, a, b, state[TRACE])
    s_A, c_A = _scales(floor_eigenvalues(a, settings.eig_floor), settings.rank_a, settings)
    s_B, c_B = _scales(floor_eigenvalues(b, settings.eig_floor), settings.rank_b, settings)
    U_A = state[BASIS_A][..., : s_A.shape[-1]]
    U_B = state[BASIS_B][..., : s_B.shape[-1]]
    if settings.bound is not None:
        cap = adam_bound(settings.beta1, settings.beta2)
        return bounded_low_rank(M, (U_A, U_B), (s_A, c_A), (s_B, c_B), settings.eps, cap, G, settings.beta2)
    return sketch_precondition(M, U_A, s_A, c_A, U_B, s_B, c_B, settings.eps, precision=settings.precision)


def ensure_compression(state: dict[str, Tensor]) -> None:
    """Give a sketch written before the compressions were stored its H = diag(λ) (exact: until then
    every update ended in a Rayleigh–Ritz step, which leaves X̃ diagonal in its basis)."""
    for comp, eig in ((COMPRESSION_A, EIG_A), (COMPRESSION_B, EIG_B)):
        if comp not in state:
            state[comp] = torch.diag_embed(state[eig])


def track_sketch_statistics(
    state: dict[str, Tensor], G: Tensor, mask: Tensor, settings: KronSettings
) -> None:
    """EMA update of both sketches in their fixed bases, and of the trace, for the blocks in ``mask``.

    H' = β₂ H + Uᵀ K U, τ' (d − ℓ) = β₂ τ (d − ℓ) + tr K − tr Uᵀ K U (trace conserved), λ' = diag(H')
    the tracked eigenvalues, τ_vN' = β₂ τ_vN + (1 − β₂) ‖G‖²_F; K from the old factors on both sides
    (:func:`tritonkron.ops.sketch.sketch_track`, docs/maths.md §6.2). No factorisation. A block whose
    result is not finite keeps its state and counts one more failure (reset only by a refresh).
    """
    left, right = sketch_weights(
        state[BASIS_A], state[BASIS_B], state[EIG_A], state[EIG_B], state[TAIL_A], state[TAIL_B], settings
    )
    beta, precision = settings.beta2, settings.precision
    H_a, tau_a = sketch_track(
        state[BASIS_A], state[COMPRESSION_A], state[TAIL_A], G, *left, beta, "left", precision=precision
    )
    H_b, tau_b = sketch_track(
        state[BASIS_B], state[COMPRESSION_B], state[TAIL_B], G, *right, beta, "right", precision=precision
    )
    trace = beta * state[TRACE] + (1 - beta) * torch.linalg.vector_norm(G, dim=(-2, -1)).square()
    accepted = mask & finite_blocks(H_a, tau_a, H_b, tau_b, trace)
    updates = {
        COMPRESSION_A: H_a,
        COMPRESSION_B: H_b,
        EIG_A: torch.diagonal(H_a, dim1=-2, dim2=-1),
        EIG_B: torch.diagonal(H_b, dim1=-2, dim2=-1),
        TAIL_A: tau_a,
        TAIL_B: tau_b,
        TRACE: trace,
    }
    for key, value in updates.items():
        state[key] = masked_where(accepted, value.to(state[key].dtype), state[key])
    failures = state[FAILURES]
    state[FAILURES] = torch.where(mask & ~accepted, failures + 1, failures)


def sketch_group_step(
    state: dict[str, Tensor],
    G: Tensor,
    M: Tensor,
    settings: KronSettings,
    refresh: Refresh = False,
    ok: Tensor | None = None,
    ready_known: bool = False,
) -> Tensor:
    """One optimizer step of a sketched block group; returns the update direction ``[B, m, n]``.

    Args:
        state: the group's sketch state (modified in place).
        G: gradient blocks ``[B, m, n]`` in the statistics dtype (finite).
        M: momentum blocks ``[B, m, n]``.
        settings: hyperparameters (``rank`` must be an int).
        refresh: the blocks that take the Rayleigh–Ritz step now instead of the tracking in their
            fixed bases (:mod:`tritonkron.step.sketch_refresh`; host positions, all/none, or a mask
            under compile, :func:`tritonkron.step.traceable.refresh_blocks`). ``True`` at every step
            re-diagonalises every update (``precondition_every=1``).
        ok: one-element bool tensor, False when the step is skipped (statistics untouched, zero
            direction); None means True.
        ready_known: the host knows every block is initialised (:meth:`tritonkron.Kron.prepare_capture`):
            no readiness masks, no initialisation (and no ``torch.cond`` under compile).
    """
    ensure_failure_counts(state)
    ensure_compression(state)
    ready = state[READY]
    known = known_ready(ready, ready_known)
    active = (ready.new_ones(ready.shape) if ok is None else ok.expand(ready.shape)) if known else ready
    if ok is not None and not known:
        active = active & ok
    U = masked_where(active, sketch_direction(state, M, settings, G), torch.zeros_like(M))
    prior = {key: state[key] for key in PRIOR_KEYS}
    track_sketch_statistics(state, G, active, settings)
    refresh_sketches(state, prior, G, refresh, active, settings)
    if known:  # every block is ready: none to initialise, and no device read to find out
        return U
    fresh = ~ready & (G.flatten(1).abs().amax(1) > 0)
    if ok is not None:
        fresh = fresh & ok
    initialize_sketch_blocks(state, G, fresh, settings)
    if not torch.compiler.is_compiling():
        KNOWN_READY.watch(state[READY])
    return U
