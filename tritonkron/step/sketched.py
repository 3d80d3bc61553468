"""Sketched (low-memory) Kronecker preconditioner state and its step: ``Kron(rank=k, sketch=True)``.

The dense path (:mod:`tritonkron.step.dense`) stores each factor as a d × d matrix plus a d × d
eigenbasis. Here each factor is a rank-ℓ low-rank-plus-isotropic sketch (ℓ = ``sketch_rank`` ≥ k,
capped at d), X̃ = U diag(λ) Uᵀ + τ (I − U Uᵀ) — the maths is in :mod:`tritonkron.ops.sketch.reference`.
One block group ``[B, m, n]`` holds (a dict of tensors, ``torch.load(weights_only=True)``-safe):

    basis_a [B, m, ℓ_A], basis_b [B, n, ℓ_B]   orthonormal sketch bases U_A, U_B (descending)
    eig_a   [B, ℓ_A],    eig_b   [B, ℓ_B]      sketch eigenvalues λ (exact Ritz values of X̃)
    tail_a  [B],         tail_b  [B]           tail levels τ (0 when ℓ_X = d_X)
    trace   [B]                                τ_vN = EMA of ‖G‖²_F (von Neumann normaliser)
    ready   [B] bool                           block initialised from a non-zero gradient
    refresh_failures [B]                       consecutive failed initialisations or updates

with ℓ_A = min(ℓ, m), ℓ_B = min(ℓ, n): O((m + n)·ℓ) floats per block instead of 2(m² + n²).

The step mirrors :func:`tritonkron.step.dense.block_group_step` (docs/maths.md §4.3):

1. **init** from the first non-zero gradient (thin SVD G = P diag(σ) Rᵀ; the same scale-aware,
   floored initial eigenvalues as the dense path, of which the top ℓ are kept and the rest
   averaged into τ), with no update on that step;
2. **direction** from the pre-update statistics: the sketch's virtual spectrum
   (λ₁…λ_ℓ, τ…τ) goes through the dense path's own rules (von Neumann ÷ √τ_vN, relative floor,
   ``factor_scales`` with the rank/tail/α of the group), and the damped spike-and-flat
   preconditioner is applied in low-rank form, U = P_A M P_B with P_X Y = U_k (D − c)(U_kᵀ Y) + c Y
   (plus the exact ε correction of the dense Σ = σ/(1 + εσ));
3. **statistics update** of both sketches from the old ones (simultaneous, as the dense rule):
   increment s·G W Gᵀ with the other factor's low-rank-plus-isotropic coupling weight W
   (LogDet W = B̃⁻¹, Frobenius W = B̃, von Neumann W = I; docs/maths.md §2.3, §4.4).

The sketch is re-diagonalised at every update (a Rayleigh–Ritz step), so there is no stale basis
and ``refresh`` (the dense path's every-T-steps basis refresh) is accepted and ignored.

**Failures.** The factorisations never raise (:mod:`tritonkron.math.safe_linalg`). A block
whose initial SVD fails in every attempt stays waiting for the next gradient; an update whose
result is not finite (from either backend) is dropped, so the block keeps its previous sketch.
Both count in ``refresh_failures`` (reset by the next success), which
:func:`tritonkron.step.guards.check_refresh_failures` turns into an error after ``max_refresh_failures``
in a row, as on the dense path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.math.divergences import coupling, initial_eigenvalues, preconditioner_eigenvalues
from tritonkron.ops.precondition.reference import factor_scales, floor_eigenvalues
from tritonkron.ops.sketch import sketch_precondition, sketch_update
from tritonkron.ops.sketch.reference import top_singular_subspaces, virtual_spectrum
from tritonkron.options import KronSettings
from tritonkron.state import (
    BASIS_A,
    BASIS_B,
    EIG_A,
    EIG_B,
    FAILURES,
    READY,
    TAIL_A,
    TAIL_B,
    TRACE,
)
from tritonkron.step.bounds import adam_bound, bounded_low_rank
from tritonkron.step.dense import (
    counted_failures,
    ensure_failure_counts,
    finite_blocks,
    flatten_tail,
    masked_where,
)
from tritonkron.step.schedule import KNOWN_READY
from tritonkron.step.traceable import run_if

__all__ = [
    "initialize_sketch_blocks",
    "is_sketch_state",
    "new_sketch_state",
    "sketch_direction",
    "sketch_group_step",
    "sketch_state_bytes",
    "update_sketch_statistics",
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


_INIT_KEYS = (BASIS_A, BASIS_B, EIG_A, EIG_B, TAIL_A, TAIL_B, TRACE, READY, FAILURES)


def _initial_sketch(
    basis_a: Tensor,
    basis_b: Tensor,
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
    new = (P_A, P_B, lam_a, lam_b, tau_a, tau_b, sq_norm)
    old = (basis_a, basis_b, eig_a, eig_b, tail_a, tail_b, trace)
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


def sketch_direction(state: dict[str, Tensor], M: Tensor, settings: KronSettings) -> Tensor:
    """Preconditioned direction ``[B, m, n]`` of the momentum ``M`` from the current sketches.

    U = P_A M P_B with P_X Y = U_k (D − c)(U_kᵀ Y) + c Y; with ``bound="adam"`` the top × top
    entries, top × tail rows, tail × top columns and the tail × tail block are each capped at
    RMS ≤ B, so RMS(U) ≤ B (:func:`tritonkron.step.bounds.bounded_low_rank`, docs/maths.md §5.5).
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
        return bounded_low_rank(M, U_A, s_A, c_A, U_B, s_B, c_B, settings.eps, cap)
    return sketch_precondition(M, U_A, s_A, c_A, U_B, s_B, c_B, settings.eps, precision=settings.precision)


def _coupling_weight(
    basis: Tensor, weight: Tensor | None, settings: KronSettings
) -> tuple[Tensor, Tensor, Tensor]:
    """(V, w, w_τ) of W = V diag(w) Vᵀ + w_τ (I − V Vᵀ) from a weight vector over the virtual spectrum.

    ``weight`` ``[B, d]`` is the divergence's elementwise weight (1/x or x) of the other factor's
    floored virtual spectrum, or None for W = I. With ``flat_tail_in_stats`` only the top k
    directions keep their own weight (the rest share the tail-mean's weight, set by the caller).
    """
    ell = basis.shape[-1]
    if weight is None:
        ones = torch.ones(basis.shape[0], dtype=basis.dtype, device=basis.device)
        return basis[..., :0], ones[:, None][:, :0], ones
    d = weight.shape[-1]
    if settings.flat_tail_in_stats and settings.rank is not None:
        ell = min(ell, settings.rank)
    V, w = basis[..., :ell], weight[..., :ell]
    # A complete basis has no complement: w_τ multiplies I − V Vᵀ = 0, and 0 keeps W exact.
    w_tau = weight[..., ell] if ell < d else torch.zeros_like(weight[..., 0])
    return V, w, w_tau


def update_sketch_statistics(
    state: dict[str, Tensor], G: Tensor, mask: Tensor, settings: KronSettings
) -> None:
    """EMA update of both sketches and the trace for the blocks in ``mask`` (old factors on both sides).

    A block whose new sketches are not finite keeps its state and its failure count grows; an
    updated block's count is reset.
    """
    m, n = G.shape[-2:]
    a = floor_eigenvalues(virtual_spectrum(state[EIG_A], state[TAIL_A], m), settings.eig_floor)
    b = floor_eigenvalues(virtual_spectrum(state[EIG_B], state[TAIL_B], n), settings.eig_floor)
    if settings.flat_tail_in_stats:
        a, b = flatten_tail(a, settings.rank_a), flatten_tail(b, settings.rank_b)
    rule = coupling(settings.divergence, a, b)
    beta = settings.beta2
    V_B, w_B, wt_B = _coupling_weight(state[BASIS_B], rule.left_weight, settings)
    V_A, w_A, wt_A = _coupling_weight(state[BASIS_A], rule.right_weight, settings)
    scale_a = (1 - beta) * rule.left_scale
    scale_b = (1 - beta) * rule.right_scale
    U_a, lam_a, tau_a = sketch_update(
        state[BASIS_A],
        state[EIG_A],
        state[TAIL_A],
        G,
        V_B,
        w_B,
        wt_B,
        scale_a,
        beta,
        "left",
        precision=settings.precision,
    )
    U_b, lam_b, tau_b = sketch_update(
        state[BASIS_B],
        state[EIG_B],
        state[TAIL_B],
        G,
        V_A,
        w_A,
        wt_A,
        scale_b,
        beta,
        "right",
        precision=settings.precision,
    )
    trace = beta * state[TRACE] + (1 - beta) * torch.linalg.vector_norm(G, dim=(-2, -1)).square()
    accepted = mask & finite_blocks(U_a, lam_a, tau_a, U_b, lam_b, tau_b, trace)
    updates = {
        BASIS_A: U_a,
        BASIS_B: U_b,
        EIG_A: lam_a,
        EIG_B: lam_b,
        TAIL_A: tau_a,
        TAIL_B: tau_b,
        TRACE: trace,
    }
    for key, value in updates.items():
        state[key] = masked_where(accepted, value.to(state[key].dtype), state[key])
    state[FAILURES] = counted_failures(state[FAILURES], mask, accepted)


def sketch_group_step(
    state: dict[str, Tensor],
    G: Tensor,
    M: Tensor,
    settings: KronSettings,
    refresh: Tensor | bool = False,
    ok: Tensor | None = None,
) -> Tensor:
    """One optimizer step of a sketched block group; returns the update direction ``[B, m, n]``.

    Args:
        state: the group's sketch state (modified in place).
        G: gradient blocks ``[B, m, n]`` in the statistics dtype (finite).
        M: momentum blocks ``[B, m, n]``.
        settings: hyperparameters (``rank`` must be an int).
        refresh: accepted for the :func:`~tritonkron.step.dense.block_group_step` contract and
            ignored: the sketch is re-diagonalised at every update.
        ok: one-element bool tensor, False when the step is skipped (statistics untouched, zero
            direction); None means True.
    """
    del refresh
    ensure_failure_counts(state)
    ready = state[READY]
    known = not torch.compiler.is_compiling() and KNOWN_READY.all_ready(ready)
    active = (ready.new_ones(ready.shape) if ok is None else ok.expand(ready.shape)) if known else ready
    if ok is not None and not known:
        active = active & ok
    U = masked_where(active, sketch_direction(state, M, settings), torch.zeros_like(M))
    update_sketch_statistics(state, G, active, settings)
    if known:  # every block is ready: none to initialise, and no device read to find out
        return U
    fresh = ~ready & (G.flatten(1).abs().amax(1) > 0)
    if ok is not None:
        fresh = fresh & ok
    initialize_sketch_blocks(state, G, fresh, settings)
    if not torch.compiler.is_compiling():
        KNOWN_READY.watch(state[READY])
    return U
