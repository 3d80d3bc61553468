"""Low-rank-plus-isotropic factor sketches: O(d·ℓ) statistics for the subspace-aware optimizer.

A factor X ∈ S₊^d (d = m for A, n for B) is kept as a rank-ℓ sketch plus one tail level,

    X̃ = U diag(λ) Uᵀ + τ (I − U Uᵀ),     U: [B, d, ℓ] orthonormal, λ: [B, ℓ] descending, τ: [B],

(ℓ is capped at d; with ℓ = d the basis is complete, there is no tail and τ = 0 by convention).
This is what the subspace-aware preconditioner of docs/maths.md §4.2 consumes: the top-k eigenpairs
(k ≤ ℓ) and one isotropic level. Its *virtual spectrum* is x = (λ₁, …, λ_ℓ, τ, …, τ) ∈ R^d, and
every dense tail rule applied to x equals the low-rank formula; e.g. the ``tail="mean"`` level is

    mean_{i>k} x_i = (Σ_{k<i≤ℓ} λ_i + (d − ℓ) τ) / (d − k) = (tr X̃ − Σ_{i≤k} λ_i) / (d − k),

docs/maths.md §4.4's τ_X evaluated on X̃.

**Update** (EMA with retention β; every T steps, docs/maths.md §6.2). The increment of every divergence is
K = s·G_s W G_sᵀ with G_s = G (left factor, G_s: [B, m, n]) or Gᵀ (right factor), s a per-block
scale that includes (1 − β), and W the *other* factor's coupling weight in the same
low-rank-plus-isotropic form (docs/maths.md §2.3, §4.4),

    W = V diag(w) Vᵀ + w_τ (I − V Vᵀ),   logdet: w = 1/b, w_τ = 1/τ_B (W = B̃⁻¹ exactly)
                                          frobenius: w = b, w_τ = τ_B (W = B̃)
                                          von_neumann: W = I (V has no columns, w_τ = 1).

W is applied in factored form, W P = w_τ P + V ((w − w_τ) ⊙ Vᵀ P), so no e × e matrix is formed,
and K is only ever applied to thin blocks (K X = s G_s W (G_sᵀ X)). The new statistics
X̃' = β X̃ + K are projected back onto the family by a Rayleigh–Ritz step:

1. candidate basis Q = qr([U, K U]) ([B, d, min(d, 2ℓ)]): the current sketch and one block-Krylov
   (power) step with the increment, which brings in the increment's new directions;
2. H = Qᵀ X̃' Q = β (τ I + C (Λ − τ I) Cᵀ) + Qᵀ K Q with C = Qᵀ U  (a p × p matrix, p ≤ 2ℓ);
3. H = Z diag(μ) Zᵀ (float64 :func:`~tritonkron.math.safe_linalg.unread_eigh`, descending),
   keep U' = Q Z[:, :ℓ], λ' = μ[:ℓ];
4. τ' = escaped mass / (d − ℓ), escaped = Σ_{i>ℓ} μ_i + β τ (d − p) + (tr K − tr Qᵀ K Q).
Λ may be any compression H = Uᵀ X̃ U (``[B, ℓ, ℓ]``, X̃'s form between Rayleigh–Ritz steps).

If the eigh of step 3 raises in every attempt of its ladder, Z = I (up to order) and μ = diag(H):
the sketch keeps Q's own directions with the largest Rayleigh quotients qᵢᵀ X̃' qᵢ, and step 4
still conserves the trace; a non-finite result is left for the step to reject on the device.

**Tracking in a fixed basis** (:func:`sketch_track_ref`, between Rayleigh–Ritz steps): with U
fixed, β X̃ + K is projected onto {U H Uᵀ + τ (I − U Uᵀ)}: H' = β H + Uᵀ K U and
τ' (d − ℓ) = β τ (d − ℓ) + tr K − tr Uᵀ K U, so tr X̃' = β tr X̃ + tr K and τ' is the mean of
X̃''s spectrum outside span(U) (τ' = 0 when ℓ = d: the exact EMA in the basis U). No factorisation.

**The tail level τ.** τ(d − ℓ) is exactly the trace of X̃' outside span(U'): the trace of X̃' is
conserved (tr X̃' = β tr X̃ + tr K, with tr K = s (w_τ ‖G‖²_F + Σ_j (w_j − w_τ) ‖G_s v_j‖²)), and
whatever does not fit into the ℓ kept directions — the Ritz values beyond ℓ, the old tail outside
Q, and the increment's mass outside Q — is spread evenly over the d − ℓ complement directions.
So τ is the *arithmetic mean of X̃''s spectrum outside the sketch*, the tail-mean level of
docs/maths.md §4.2 (Sketchy's frequent-directions shrinkage is the alternative, §6.3).
Both levels vanish with the complement: for ℓ ≥ d the candidate basis is the whole space, the
Rayleigh–Ritz step is the exact eigendecomposition of β X + K, and the sketch reproduces the dense
EMA factor exactly (up to rounding). The isotropic part w_τ G_s G_sᵀ of the increment is never
truncated separately: it is part of K, so it rotates the sketch through K U, enters H through
Qᵀ K Q, and its remainder outside Q enters τ through tr K — exact in the ℓ ≥ d limit.

**Direction** (low-rank spike-and-flat preconditioning with Adam-style damping). With the top-k
bases U_A [B, m, k_A], U_B [B, n, k_B], top scales s_A, s_B and tail constants c_A, c_B, the
dense direction Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ, Σ = f(s^A_i s^B_j), f(σ) = σ/(1 + εσ), has four
blocks (top/tail × top/tail), and equals

    U = h M + U_A [(g_A − h) ⊙ R + K_c U_Bᵀ] + [L ⊙ (g_B − h)] U_Bᵀ,
    R = U_Aᵀ M [k_A, n],  L = M U_B [m, k_B],  C = R U_B [k_A, k_B],
    h = f(c_A c_B),  g_A = f(s_A c_B),  g_B = f(c_A s_B),  K_c = C ⊙ (f(s_A s_Bᵀ) − g_A 1ᵀ − 1 g_Bᵀ + h),

which needs only thin products (for ε = 0 it is P_A M P_B with P_X Y = U_k (D − c)(U_kᵀ Y) + c Y).
Everything is batched over the B stacked blocks.

**Precision.** The thin products with G and M (K X, Qᵀ K Q, G_s V and the direction's products)
take their operands under the precision policy (:func:`tritonkron.ops.precision.mm`,
docs/maths.md §11); the QR, the Rayleigh–Ritz step (:func:`rayleigh_ritz`) and the SVD always run
in IEEE arithmetic.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from tritonkron.math.checks import symmetrize
from tritonkron.math.safe_linalg import SITE_SKETCH, SITE_SKETCH_INIT, safe_svd, unread_eigh
from tritonkron.ops.precision import mm
from tritonkron.ops.precondition.reference import spike_and_flat_apply

Side = Literal["left", "right"]

__all__ = [
    "increment_apply_ref",
    "increment_rayleigh_ref",
    "increment_trace_ref",
    "rayleigh_ritz",
    "reconstruct",
    "sketch_precondition_ref",
    "sketch_track_ref",
    "sketch_update_ref",
    "tracked_tail",
    "SingularSubspaces",
    "top_singular_subspaces",
    "virtual_spectrum",
]


def virtual_spectrum(lam: Tensor, tau: Tensor, d: int) -> Tensor:
    """The sketch's full spectrum x = (λ₁, …, λ_ℓ, τ, …, τ) ``[B, d]`` (λ itself when ℓ ≥ d).

    Args:
        lam: kept eigenvalues ``[B, ℓ]``.
        tau: tail levels ``[B]``.
        d: the factor's dimension.
    """
    ell = lam.shape[-1]
    if ell >= d:
        return lam[..., :d]
    return torch.cat([lam, tau.unsqueeze(-1).expand(*lam.shape[:-1], d - ell)], dim=-1)


def reconstruct(U: Tensor, lam: Tensor, tau: Tensor) -> Tensor:
    """Dense X̃ = U diag(λ) Uᵀ + τ (I − U Uᵀ) ``[B, d, d]``, or U H Uᵀ + τ (I − U Uᵀ) for a
    compression ``lam`` = H ``[B, ℓ, ℓ]`` (for tests and small factors only)."""
    eye = torch.eye(U.shape[-2], dtype=U.dtype, device=U.device)
    return _sandwich(U, lam, tau) + tau.reshape(-1, 1, 1) * eye


def _sandwich(C: Tensor, lam: Tensor, tau: Tensor) -> Tensor:
    """C (Λ − τ I) Cᵀ ``[B, p, p]`` for C ``[B, p, ℓ]`` and eigenvalues Λ = diag(λ) ``[B, ℓ]`` or a
    compression Λ = H ``[B, ℓ, ℓ]``."""
    if lam.dim() == C.dim():
        eye = torch.eye(lam.shape[-1], dtype=C.dtype, device=C.device)
        return C @ (lam - tau.reshape(-1, 1, 1) * eye) @ C.transpose(-1, -2)
    return (C * (lam - tau.unsqueeze(-1)).unsqueeze(-2)) @ C.transpose(-1, -2)


def _oriented(G: Tensor, side: Side) -> Tensor:
    """G_s: G (left, ``[B, m, n]``) or Gᵀ (right, ``[B, n, m]``); rows index the factor."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right'; got {side!r}")
    return G if side == "left" else G.transpose(-1, -2)


def _weighted(P: Tensor, V: Tensor, w: Tensor, w_tau: Tensor, scale: Tensor, precision: str) -> Tensor:
    """s·W P = V ((s w − s w_τ) ⊙ Vᵀ P) + s w_τ P for P ``[B, e, p]``, V ``[B, e, ℓ']`` (the
    spike-and-flat apply with top scales s·w and constant s·w_τ, as the Triton launcher forms it)."""
    s = scale.reshape(-1, 1)
    return spike_and_flat_apply(V, w * s, w_tau.reshape(-1, 1) * s, P, precision)


def increment_apply_ref(
    G: Tensor,
    X: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    side: Side,
    precision: str = "ieee",
) -> Tensor:
    """K X = s·G_s W (G_sᵀ X) ``[B, d, p]`` for the increment K = s·G_s W G_sᵀ.

    Args:
        G: gradient blocks ``[B, m, n]``.
        X: thin block ``[B, d, p]`` (d = m for "left", n for "right").
        V: the other factor's basis ``[B, e, ℓ']`` (e = n for "left", m for "right"; ℓ' may be 0).
        w: weights ``[B, ℓ']``; w_tau: isotropic weight ``[B]``; scale: s ``[B]``.
        side: which factor the increment feeds.
        precision: the products' policy ("ieee", "tf32", "bf16").
    """
    Gs = _oriented(G, side)
    return mm(Gs, _weighted(mm(Gs.transpose(-1, -2), X, precision), V, w, w_tau, scale, precision), precision)


def increment_rayleigh_ref(
    G: Tensor,
    X: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    side: Side,
    precision: str = "ieee",
) -> Tensor:
    """Xᵀ K X = s·(G_sᵀ X)ᵀ W (G_sᵀ X) ``[B, p, p]`` (exactly symmetric). Arguments as
    :func:`increment_apply_ref`."""
    P = mm(_oriented(G, side).transpose(-1, -2), X, precision)
    H = mm(P.transpose(-1, -2), _weighted(P, V, w, w_tau, scale, precision), precision)
    return 0.5 * (H + H.transpose(-1, -2))


def increment_trace_ref(
    G: Tensor, V: Tensor, w: Tensor, w_tau: Tensor, scale: Tensor, side: Side, precision: str = "ieee"
) -> Tensor:
    """tr K = s (w_τ ‖G‖²_F + Σ_j (w_j − w_τ) ‖G_s v_j‖²) ``[B]``. Arguments as
    :func:`increment_apply_ref`."""
    col_sq = mm(_oriented(G, side), V, precision).square().sum(-2)  # ‖G_s v_j‖², [B, ℓ']
    sq_norm = torch.linalg.vector_norm(G, dim=(-2, -1)).square()  # on G itself: contiguous, no temporary
    return scale * (w_tau * sq_norm + ((w - w_tau.unsqueeze(-1)) * col_sq).sum(-1))


def rayleigh_ritz(
    U: Tensor, lam: Tensor, tau: Tensor, Q: Tensor, H_K: Tensor, tr_K: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 2–4 of the update (module doc): project β X̃ + K onto span(Q), keep the top ℓ.

    Shared by the reference and the Triton launcher (which computes Q, H_K and tr_K with kernels).

    Args:
        U, lam, tau: the old sketch ``[B, d, ℓ]``, ``[B, ℓ]`` (or its compression H ``[B, ℓ, ℓ]``),
            ``[B]``; span(U) ⊆ span(Q).
        Q: orthonormal candidate basis ``[B, d, p]``.
        H_K: Qᵀ K Q ``[B, p, p]``.
        tr_K: tr K ``[B]``.
        beta: retention β.

    Returns:
        ``(U', λ', τ')``.
    """
    d, ell = U.shape[-2:]
    p = Q.shape[-1]
    C = Q.transpose(-1, -2) @ U  # [B, p, ℓ]
    eye = torch.eye(p, dtype=U.dtype, device=U.device)
    old = _sandwich(C, lam, tau) + tau.reshape(-1, 1, 1) * eye
    H = (beta * old + H_K).to(torch.float64)
    mu, Z = unread_eigh(symmetrize(H), site=SITE_SKETCH, descending=True)  # float64; failure: module doc
    mu, Z = mu.to(U.dtype), Z.to(U.dtype)
    U_new = Q @ Z[..., :ell]
    lam_new = mu[..., :ell]
    if ell >= d:
        return U_new, lam_new, torch.zeros_like(tau)
    outside_q = (tr_K - torch.diagonal(H_K, dim1=-2, dim2=-1).sum(-1)).clamp_min(0)
    escaped = mu[..., ell:].sum(-1) + beta * tau * (d - p) + outside_q
    return U_new, lam_new, (escaped / (d - ell)).clamp_min(0)


def sketch_update_ref(
    U: Tensor,
    lam: Tensor,
    tau: Tensor,
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    beta: float,
    side: Side,
    precision: str = "ieee",
) -> tuple[Tensor, Tensor, Tensor]:
    """One EMA step X̃ ← proj(β X̃ + s·G_s W G_sᵀ) of a low-rank-plus-isotropic sketch (module doc).

    Args:
        U: sketch basis ``[B, d, ℓ]`` (orthonormal columns, ℓ ≤ d).
        lam: sketch eigenvalues ``[B, ℓ]``, or the compression H = Uᵀ X̃ U ``[B, ℓ, ℓ]``;
            tau: tail levels ``[B]`` (0 when ℓ = d).
        G: gradient blocks ``[B, m, n]``.
        V, w, w_tau: the other factor's coupling weight W = V diag(w) Vᵀ + w_τ (I − V Vᵀ)
            (``[B, e, ℓ']``, ``[B, ℓ']``, ``[B]``).
        scale: s ``[B]``, including the (1 − β) of the EMA.
        beta: retention β ∈ [0, 1].
        side: "left" (d = m) or "right" (d = n).
        precision: the policy of the thin products with G (module doc, "Precision").

    Returns:
        ``(U', λ', τ')``: U' ``[B, d, ℓ]``, λ' ``[B, ℓ]`` descending, τ' ``[B]``.
    """
    d, ell = U.shape[-2:]
    if ell < d:
        KU = increment_apply_ref(G, U, V, w, w_tau, scale, side, precision)
        Q = torch.linalg.qr(torch.cat([U, KU], dim=-1)).Q
    else:
        Q = U
    H_K = increment_rayleigh_ref(G, Q, V, w, w_tau, scale, side, precision)
    tr_K = increment_trace_ref(G, V, w, w_tau, scale, side, precision)
    return rayleigh_ritz(U, lam, tau, Q, H_K, tr_K, beta)


def sketch_track_ref(
    U: Tensor,
    H: Tensor,
    tau: Tensor,
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    beta: float,
    side: Side,
    precision: str = "ieee",
) -> tuple[Tensor, Tensor]:
    """One EMA step of a sketch in its fixed basis U (module doc, "Tracking"); returns (H', τ').

    H' = β H + Uᵀ K U and τ' (d − ℓ) = β τ (d − ℓ) + tr K − tr Uᵀ K U (τ' = 0 when ℓ = d), for
    K = s·G_s W G_sᵀ. Arguments as :func:`sketch_update_ref`, with H ``[B, ℓ, ℓ]`` the compression.
    """
    d, ell = U.shape[-2:]
    H_K = increment_rayleigh_ref(G, U, V, w, w_tau, scale, side, precision)
    H_new = beta * H + H_K
    if ell >= d:
        return H_new, torch.zeros_like(tau)
    tr_K = increment_trace_ref(G, V, w, w_tau, scale, side, precision)
    return H_new, tracked_tail(tau, tr_K, H_K, beta, d)


def tracked_tail(tau: Tensor, tr_K: Tensor, H_K: Tensor, beta: float, d: int) -> Tensor:
    """τ' = β τ + (tr K − tr Uᵀ K U)/(d − ℓ) ``[B]`` (≥ 0; module doc, "Tracking"), H_K = Uᵀ K U, ℓ < d."""
    outside = (tr_K - torch.diagonal(H_K, dim1=-2, dim2=-1).sum(-1)).clamp_min(0)
    return (beta * tau + outside / (d - H_K.shape[-1])).clamp_min(0)


def sketch_precondition_ref(
    M: Tensor,
    U_A: Tensor,
    s_A: Tensor,
    c_A: Tensor,
    U_B: Tensor,
    s_B: Tensor,
    c_B: Tensor,
    eps: float,
    precision: str = "ieee",
) -> Tensor:
    """The damped spike-and-flat direction in low-rank form (module doc, "Direction").

    Equals ``eigenbasis_precondition_ref(M, Q_A, Q_B, [s_A, c_A…], [s_B, c_B…], eps)`` for any
    orthonormal completions Q_A = [U_A, ·], Q_B = [U_B, ·].

    Args:
        M: momentum blocks ``[B, m, n]``.
        U_A: top-k_A left basis ``[B, m, k_A]``; s_A: its scales ``[B, k_A]``; c_A: left tail
            constant ``[B]`` (or ``[B, 1]``).
        U_B, s_B, c_B: the same for the right factor (``[B, n, k_B]``, ``[B, k_B]``, ``[B]``).
        eps: ε of σ/(1 + εσ).
        precision: the products' policy ("ieee", "tf32", "bf16").

    Returns:
        U ``[B, m, n]``.
    """

    def f(sigma: Tensor) -> Tensor:
        return sigma / (1 + eps * sigma)

    c_A, c_B = c_A.reshape(-1, 1), c_B.reshape(-1, 1)
    R = mm(U_A.transpose(-1, -2), M, precision)  # [B, k_A, n]
    L = mm(M, U_B, precision)  # [B, m, k_B]
    C = mm(R, U_B, precision)  # [B, k_A, k_B]
    h = f(c_A * c_B)  # [B, 1]
    g_A, g_B = f(s_A * c_B), f(c_A * s_B)
    K_c = C * (
        f(s_A.unsqueeze(-1) * s_B.unsqueeze(-2)) - g_A.unsqueeze(-1) - g_B.unsqueeze(-2) + h.unsqueeze(-1)
    )
    top = (g_A - h).unsqueeze(-1) * R + mm(K_c, U_B.transpose(-1, -2), precision)  # [B, k_A, n]
    # U_A·top + L'·U_Bᵀ as one GEMM over the concatenated inner dim, accumulated onto h·M.
    left = torch.cat([U_A, L * (g_B - h).unsqueeze(-2)], dim=-1)  # [B, m, k_A + k_B]
    right = torch.cat([top, U_B.transpose(-1, -2)], dim=-2)  # [B, k_A + k_B, n]
    return mm(left, right, precision, add=h.unsqueeze(-1) * M)


def _complete(P: Tensor, ell: int) -> Tensor:
    """The first ℓ columns of an orthonormal completion of ``P: [B, d, r]`` (its own columns first).

    Extra columns (ℓ > r) are the next columns of the complete Householder Q of P (``geqrf`` +
    ``ormqr``), so no d × d matrix is formed.
    """
    r = P.shape[-1]
    if ell <= r:
        return P[..., :ell]
    batch, d = P.shape[0], P.shape[-2]
    reflectors, taus = torch.geqrf(P)
    select = torch.zeros(batch, d, ell - r, dtype=P.dtype, device=P.device)
    idx = torch.arange(ell - r, device=P.device)
    select[:, r + idx, idx] = 1
    return torch.cat([P, torch.ormqr(reflectors, taus, select)], dim=-1)


class SingularSubspaces(NamedTuple):
    """The sketch's initial subspaces from :func:`top_singular_subspaces`.

    Attributes:
        left: P completed to ℓ_A columns ``[B, m, ℓ_A]``.
        squares: σ² ``[B, min(m, n)]``, descending.
        right: R completed to ℓ_B columns ``[B, n, ℓ_B]``.
        ok: ``[B]`` bool, False where the SVD failed in every attempt (then P, R are identity
            columns and σ = 0; :func:`~tritonkron.math.safe_linalg.safe_svd`).
    """

    left: Tensor
    squares: Tensor
    right: Tensor
    ok: Tensor


def top_singular_subspaces(G: Tensor, ell_a: int, ell_b: int) -> SingularSubspaces:
    """Top singular subspaces of the first gradient, completed to ℓ columns: the sketch's init.

    G = P diag(σ) Rᵀ (thin SVD, σ descending; :func:`~tritonkron.math.safe_linalg.safe_svd`).
    Returns P completed to ``ell_a`` columns ``[B, m, ell_a]``, σ² ``[B, min(m, n)]`` (the non-zero
    part of spec(G Gᵀ) and spec(Gᵀ G)), R completed to ``ell_b`` columns ``[B, n, ell_b]`` and the
    SVD's ``ok`` flags. Costs one thin SVD, O(m n min(m, n)); no m × m or n × n matrix is formed.
    """
    P, S, Vh, ok = safe_svd(G, site=SITE_SKETCH_INIT)
    return SingularSubspaces(_complete(P, ell_a), S * S, _complete(Vh.transpose(-1, -2), ell_b), ok)
