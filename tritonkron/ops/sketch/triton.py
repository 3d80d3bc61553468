"""Thin batched GEMMs of the low-rank-plus-isotropic factor sketches (README: "Use", `sketch`).

Triton twins of :mod:`tritonkron.ops.sketch.reference`. Every heavy product is thin — one side is the
sketch rank ℓ (or 2ℓ), never d × d — and runs on the batched GEMM of
:mod:`tritonkron.ops._triton.bmm` (fp32 accumulation, fp32 operands multiplied under the precision
policy ``precision`` — IEEE by default, :mod:`tritonkron.ops.precision` —, fused epilogues). Launchers:

``increment_apply_triton``      K X = s·G_s W (G_sᵀ X):   P = G_sᵀ X; P ← s W P (spike-and-flat
                                 kernel: two thin GEMMs); out = G_s P.
``increment_rayleigh_triton``   Xᵀ K X = s·Pᵀ W P:        P = G_sᵀ X; P ← s W P; out = Pᵀ P_old.
``increment_trace_triton``      tr K = s (w_τ ‖G‖² + Σ_j (w_j − w_τ)‖G_s v_j‖²): one GEMM G_s V.
``sketch_update_triton``        the whole sketch update: the three launchers above for the thin
                                 products, then ``torch.linalg.qr`` of [U, K U] (d × 2ℓ) and
                                 ``torch.linalg.eigh`` of the 2ℓ × 2ℓ Rayleigh–Ritz matrix in
                                 float64. The QR and the small eigendecomposition stay in torch:
                                 they are O(d ℓ²) and O(ℓ³), against O(d e ℓ) for the GEMMs.
``sketch_track_triton``         the update between Rayleigh–Ritz steps: Uᵀ K U (the launcher
                                 above) and tr K, then H' = β H + Uᵀ K U and the tail in torch.
``sketch_precondition_triton``  the damped spike-and-flat direction in low-rank form::

    R  = U_Aᵀ M                                   [B, k_A, n]
    L' = [U_A | (g_B − h) ⊙ (M U_B)]              [B, m, k_A + k_B]   (row-scale epilogue)
    C  = R U_B ;  K_c = C ⊙ (F − g_A − g_B + h)   [B, k_A, k_B]       (tiny, in torch)
    T  = [K_c U_Bᵀ + (g_A − h) ⊙ R ; U_Bᵀ]        [B, k_A + k_B, n]   (axpy epilogue)
    U  = L' T + h·M                               [B, m, n]           (axpy epilogue)

Here G_s = G for the left factor and Gᵀ for the right one (a transposed view: strides only), and
W = V diag(w) Vᵀ + w_τ (I − V Vᵀ) is the other factor's coupling weight.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import triton
from torch import Tensor

from tritonkron.ops._triton.bmm import Epilogue, bmm_config, launch_bmm
from tritonkron.ops._triton.common import check_range, check_sized, check_tensor, out_or_empty
from tritonkron.ops.precision import check_precision
from tritonkron.ops.precondition.triton import spike_and_flat_triton
from tritonkron.ops.sketch.reference import rayleigh_ritz, tracked_tail

__all__ = [
    "increment_apply_triton",
    "increment_rayleigh_triton",
    "increment_trace_triton",
    "sketch_precondition_triton",
    "sketch_track_triton",
    "sketch_update_triton",
]

Config = Mapping[str, int] | triton.Config | None


def _oriented(G: Tensor, side: str) -> Tensor:
    """G_s: G (left) or its transposed view Gᵀ (right), after checking G and ``side``."""
    check_tensor("G", G, 3)
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right'; got {side!r}")
    return G if side == "left" else G.transpose(1, 2)


def _check_weight(Gs: Tensor, V: Tensor, w: Tensor, w_tau: Tensor, scale: Tensor) -> None:
    """Checks the coupling weight (V ``[B, e, ℓ']``, w ``[B, ℓ']``, w_τ ``[B]``) and the scale ``[B]``
    against G_s ``[B, d, e]``."""
    Bsz, _, e = Gs.shape
    dev = Gs.device
    check_sized("V", V, (Bsz, e, "l'"), device=dev)
    check_sized("w", w, (Bsz, V.shape[-1]), device=dev)
    for name, t in (("w_tau", w_tau), ("scale", scale)):
        check_sized(name, t, (Bsz,), device=dev)


def _check_increment(
    G: Tensor, X: Tensor, V: Tensor, w: Tensor, w_tau: Tensor, scale: Tensor, side: str
) -> Tensor:
    """G_s after checking G, ``side``, X ``[B, d, p]`` and the weight (:func:`_check_weight`)."""
    Gs = _oriented(G, side)
    Bsz, d, _ = Gs.shape
    check_sized("X", X, (Bsz, d, "p"), device=G.device)
    _check_weight(Gs, V, w, w_tau, scale)
    return Gs


def _weighted_projection(Gs: Tensor, X: Tensor, V: Tensor, w: Tensor, w_tau: Tensor, scale: Tensor,
                         config: Config, precision: str) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(P, s W P) in fp32 for P = G_sᵀ X ``[B, e, p]``."""
    Bsz, d, e = Gs.shape
    p = X.shape[-1]
    P = torch.empty((Bsz, e, p), dtype=torch.float32, device=Gs.device)
    launch_bmm(Gs.transpose(1, 2), X, P, bmm_config(config, e, p, d), precision=precision)
    s = scale.to(torch.float32)
    WP = spike_and_flat_triton(V, w * s.unsqueeze(-1), w_tau * s, P, config=config, precision=precision)
    return P, WP


def increment_apply_triton(
    G: Tensor,
    X: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    side: str,
    *,
    out: Tensor | None = None,
    config: Config = None,
    precision: str = "ieee",
) -> Tensor:
    """Computes ``reference.sketch.increment_apply_ref``: K X = s·G_s W (G_sᵀ X) ``[B, d, p]``.

    Differences from the reference: fp32 accumulation and fp32 ``[B, e, p]`` intermediates; the
    result is cast to ``out``'s dtype (default X's dtype).

    Args:
        G: ``[B, m, n]``; X: ``[B, d, p]``; V: ``[B, e, ℓ']``; w: ``[B, ℓ']``; w_tau, scale: ``[B]``.
        side: "left" (d = m, e = n) or "right" (d = n, e = m).
        out: optional ``[B, d, p]`` output (must not alias X or G).
        config: GEMM tile config (keys of ``bmm.BMM_KEYS``); None → heuristic.
        precision: the products' policy ("ieee", "tf32", "bf16").

    Raises:
        ValueError: on a wrong type, shape, dtype or device (naming the parameter), or an
            unknown precision.
    """
    precision = check_precision(precision)
    Gs = _check_increment(G, X, V, w, w_tau, scale, side)
    _, d, e = Gs.shape
    out = out_or_empty(out, tuple(X.shape), X)
    _, WP = _weighted_projection(Gs, X, V, w, w_tau, scale, config, precision)
    launch_bmm(Gs, WP, out, bmm_config(config, d, X.shape[-1], e), precision=precision)
    return out


def increment_rayleigh_triton(
    G: Tensor,
    X: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    side: str,
    *,
    out: Tensor | None = None,
    config: Config = None,
    precision: str = "ieee",
) -> Tensor:
    """Computes ``reference.sketch.increment_rayleigh_ref``: Xᵀ K X ``[B, p, p]``.

    Differences from the reference: fp32 accumulation; the result is symmetrised in torch and
    written to ``out`` (default X's dtype). Arguments as :func:`increment_apply_triton`.
    """
    precision = check_precision(precision)
    Gs = _check_increment(G, X, V, w, w_tau, scale, side)
    Bsz, _, e = Gs.shape
    p = X.shape[-1]
    out = out_or_empty(out, (Bsz, p, p), X)
    P, WP = _weighted_projection(Gs, X, V, w, w_tau, scale, config, precision)
    H = torch.empty((Bsz, p, p), dtype=torch.float32, device=G.device)
    launch_bmm(P.transpose(1, 2), WP, H, bmm_config(config, p, p, e), precision=precision)
    out.copy_(0.5 * (H + H.transpose(1, 2)))
    return out


def increment_trace_triton(
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    side: str,
    *,
    config: Config = None,
    precision: str = "ieee",
) -> Tensor:
    """Computes ``reference.sketch.increment_trace_ref``: tr K ``[B]`` (fp32).

    Differences from the reference: G_s V is one Triton GEMM with fp32 accumulation (under
    ``precision``); the reductions run in torch in fp32.
    """
    precision = check_precision(precision)
    Gs = _oriented(G, side)
    _check_weight(Gs, V, w, w_tau, scale)
    Bsz, d, e = Gs.shape
    GV = torch.empty((Bsz, d, V.shape[-1]), dtype=torch.float32, device=G.device)
    launch_bmm(Gs, V, GV, bmm_config(config, d, V.shape[-1], e), precision=precision)
    sq_g = torch.linalg.vector_norm(G, dim=(1, 2), dtype=torch.float32).square()
    w32, wt32 = w.to(torch.float32), w_tau.to(torch.float32)
    total = wt32 * sq_g + ((w32 - wt32.unsqueeze(-1)) * GV.square().sum(1)).sum(-1)
    return scale.to(torch.float32) * total


def sketch_update_triton(
    U: Tensor,
    lam: Tensor,
    tau: Tensor,
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    beta: float,
    side: str,
    *,
    config: Config = None,
    precision: str = "ieee",
) -> tuple[Tensor, Tensor, Tensor]:
    """Computes ``reference.sketch.sketch_update_ref`` (one EMA step of a factor sketch).

    Differences from the reference: the thin products K U, Qᵀ K Q and G_s V run on Triton GEMMs
    with fp32 accumulation; the QR, the float64 eigh and the ℓ-sized algebra run in torch in the
    sketch's dtype. Outputs are new tensors in U's dtype.

    Args:
        U: ``[B, d, ℓ]``; lam: ``[B, ℓ]`` or a compression ``[B, ℓ, ℓ]``; tau: ``[B]``; G: ``[B, m, n]``.
        V, w, w_tau: the other factor's coupling weight; scale: s ``[B]``; beta: β ∈ [0, 1].
        side: "left" or "right".
        config: GEMM tile config for every launch; None → heuristic.
        precision: the policy of the thin products (the QR and the eigh stay IEEE).

    Returns:
        ``(U', λ', τ')``.
    """
    precision = check_precision(precision)
    Gs = _oriented(G, side)
    Bsz, d, _ = Gs.shape
    check_sized("U", U, (Bsz, d, "l"), device=G.device)
    if U.shape[-1] > d:
        raise ValueError(f"U must have shape [{Bsz}, {d}, l] with l <= {d}; got {list(U.shape)}")
    ell = U.shape[-1]
    check_sized("lam", lam, (Bsz, ell, ell) if lam.dim() == 3 else (Bsz, ell), device=G.device)
    check_sized("tau", tau, (Bsz,), device=G.device)
    beta = check_range("beta", beta, 0.0, 1.0)
    if ell < d:
        KU = increment_apply_triton(G, U, V, w, w_tau, scale, side, config=config, precision=precision)
        Q = torch.linalg.qr(torch.cat([U, KU], dim=-1)).Q
    else:
        Q = U
    H_K = increment_rayleigh_triton(G, Q, V, w, w_tau, scale, side, config=config, precision=precision)
    tr_K = increment_trace_triton(G, V, w, w_tau, scale, side, config=config, precision=precision).to(U.dtype)
    # The small dense part (QR'd basis, ℓ-sized eigh) is the reference's own.
    return rayleigh_ritz(U, lam, tau, Q, H_K, tr_K, beta)


def sketch_track_triton(
    U: Tensor,
    H: Tensor,
    tau: Tensor,
    G: Tensor,
    V: Tensor,
    w: Tensor,
    w_tau: Tensor,
    scale: Tensor,
    beta: float,
    side: str,
    *,
    config: Config = None,
    precision: str = "ieee",
) -> tuple[Tensor, Tensor]:
    """Computes ``reference.sketch.sketch_track_ref`` (H' = β H + Uᵀ K U and the tail level τ').

    Differences from the reference: Uᵀ K U and G_s V run on Triton GEMMs with fp32 accumulation.
    Arguments as :func:`sketch_update_triton`, with H ``[B, ℓ, ℓ]`` the compression.
    """
    precision = check_precision(precision)
    Gs = _oriented(G, side)
    Bsz, d, _ = Gs.shape
    check_sized("U", U, (Bsz, d, "l"), device=G.device)
    ell = U.shape[-1]
    check_sized("H", H, (Bsz, ell, ell), device=G.device)
    check_sized("tau", tau, (Bsz,), device=G.device)
    beta = check_range("beta", beta, 0.0, 1.0)
    H_K = increment_rayleigh_triton(G, U, V, w, w_tau, scale, side, config=config, precision=precision)
    H_new = beta * H + H_K.to(H.dtype)
    if ell >= d:
        return H_new, torch.zeros_like(tau)
    tr_K = increment_trace_triton(G, V, w, w_tau, scale, side, config=config, precision=precision)
    return H_new, tracked_tail(tau, tr_K.to(tau.dtype), H_K.to(tau.dtype), beta, d)


def _check_precondition_args(
    M: Tensor,
    U_A: Tensor,
    s_A: Tensor,
    c_A: Tensor,
    U_B: Tensor,
    s_B: Tensor,
    c_B: Tensor,
    eps: float,
    out: Tensor | None,
) -> tuple[float, Tensor]:
    """Checks the arguments of :func:`sketch_precondition_triton`; returns (ε, the output tensor)."""
    check_tensor("M", M, 3)
    Bsz, m, n = M.shape
    dev = M.device
    check_sized("U_A", U_A, (Bsz, m, "k"), device=dev)
    check_sized("U_B", U_B, (Bsz, n, "k"), device=dev)
    check_sized("s_A", s_A, (Bsz, U_A.shape[-1]), device=dev)
    check_sized("s_B", s_B, (Bsz, U_B.shape[-1]), device=dev)
    for name, t in (("c_A", c_A), ("c_B", c_B)):
        check_tensor(name, t, t.dim(), device=dev)
        if t.numel() != Bsz or t.dim() not in (1, 2):
            raise ValueError(f"{name} must have shape [{Bsz}] or [{Bsz}, 1]; got {list(t.shape)}")
    return check_range("eps", eps, 0.0), out_or_empty(out, (Bsz, m, n), M)


def _damped(sigma: Tensor, eps: float) -> Tensor:
    """The damped spectral map f(σ) = σ / (1 + ε σ)."""
    return sigma / (1 + eps * sigma)


def _precondition_chain(
    M: Tensor,
    U_A: Tensor,
    s_A: Tensor,
    c_A: Tensor,
    U_B: Tensor,
    s_B: Tensor,
    c_B: Tensor,
    eps: float,
    out: Tensor,
    config: Config,
    precision: str,
) -> None:
    """The launch chain of the module docstring (R, L', C and K_c, T, then U into ``out``), every
    GEMM under ``precision``."""
    Bsz, m, n = M.shape
    dev = M.device
    k_A, k_B = U_A.shape[-1], U_B.shape[-1]
    f32 = torch.float32
    cA, cB = c_A.reshape(Bsz, 1).to(f32), c_B.reshape(Bsz, 1).to(f32)
    sA, sB = s_A.to(f32), s_B.to(f32)
    h = _damped(cA * cB, eps)  # [B, 1]
    g_A, g_B = _damped(sA * cB, eps), _damped(cA * sB, eps)
    k = k_A + k_B
    R = torch.empty((Bsz, k_A, n), dtype=f32, device=dev)
    p = precision
    launch_bmm(U_A.transpose(1, 2), M, R, bmm_config(config, k_A, n, m), precision=p)
    L = torch.empty((Bsz, m, k), dtype=f32, device=dev)
    L[..., :k_A] = U_A
    L_top = L[..., k_A:].transpose(1, 2)  # [B, k_B, m] view: (g_B − h) ⊙ U_Bᵀ Mᵀ
    cfg_top = bmm_config(config, k_B, m, n)
    launch_bmm(U_B.transpose(1, 2), M.transpose(1, 2), L_top, cfg_top, epilogue=Epilogue.ROW_SHIFT, row=g_B,
               shift=h.reshape(Bsz), precision=p)  # fmt: skip
    C = torch.empty((Bsz, k_A, k_B), dtype=f32, device=dev)
    launch_bmm(R, U_B, C, bmm_config(config, k_A, k_B, n), precision=p)
    K_c = C * (
        _damped(sA.unsqueeze(-1) * sB.unsqueeze(-2), eps)
        - g_A.unsqueeze(-1)
        - g_B.unsqueeze(-2)
        + h.unsqueeze(-1)
    )
    R.mul_((g_A - h).unsqueeze(-1))
    T = torch.empty((Bsz, k, n), dtype=f32, device=dev)
    T[:, k_A:] = U_B.transpose(1, 2)
    ones = torch.ones(Bsz, dtype=f32, device=dev)
    cfg_core = bmm_config(config, k_A, n, k_B)
    launch_bmm(K_c, U_B.transpose(1, 2), T[:, :k_A], cfg_core, epilogue=Epilogue.AXPY, y=R, shift=ones,
               precision=p)  # fmt: skip
    launch_bmm(L, T, out, bmm_config(config, m, n, k), epilogue=Epilogue.AXPY, y=M, shift=h.reshape(Bsz),
               precision=p)  # fmt: skip


def sketch_precondition_triton(
    M: Tensor,
    U_A: Tensor,
    s_A: Tensor,
    c_A: Tensor,
    U_B: Tensor,
    s_B: Tensor,
    c_B: Tensor,
    eps: float,
    *,
    out: Tensor | None = None,
    config: Config = None,
    precision: str = "ieee",
) -> Tensor:
    """Computes ``reference.sketch.sketch_precondition_ref`` (module doc for the launch chain).

    Differences from the reference: fp32 accumulation and fp32 thin intermediates; the row
    scalings and the axpys are GEMM epilogues; the k_A × k_B core and the scale vectors are
    formed in torch; the result is cast to ``out``'s dtype (default M's dtype).

    Args:
        M: ``[B, m, n]``; U_A: ``[B, m, k_A]``; s_A: ``[B, k_A]``; c_A: ``[B]`` or ``[B, 1]``;
        U_B: ``[B, n, k_B]``; s_B: ``[B, k_B]``; c_B: ``[B]`` or ``[B, 1]``; eps: ε ≥ 0.
        out: optional ``[B, m, n]`` output (must not alias M).
        config: GEMM tile config; None → heuristic.
        precision: the products' policy ("ieee", "tf32", "bf16").

    Raises:
        ValueError: on a wrong type, shape, dtype or device (naming the parameter), eps < 0 or
            an unknown precision.
    """
    precision = check_precision(precision)
    eps, out = _check_precondition_args(M, U_A, s_A, c_A, U_B, s_B, c_B, eps, out)
    _precondition_chain(M, U_A, s_A, c_A, U_B, s_B, c_B, eps, out, config, precision)
    return out
