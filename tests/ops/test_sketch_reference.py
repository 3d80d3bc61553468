"""The low-rank-plus-isotropic sketch maths (``tritonkron.ops.sketch.reference``) against dense float64 oracles."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tritonkron.ops.precondition.reference import eigenbasis_precondition_ref
from tritonkron.ops.sketch.reference import (
    increment_apply_ref,
    increment_rayleigh_ref,
    increment_trace_ref,
    reconstruct,
    sketch_precondition_ref,
    sketch_track_ref,
    sketch_update_ref,
    top_singular_subspaces,
    virtual_spectrum,
)

F64 = torch.float64
B, M, N = 3, 7, 5


def _orthogonal(batch: int, d: int, k: int, g: torch.Generator) -> Tensor:
    return torch.linalg.qr(torch.randn(batch, d, d, generator=g, dtype=F64)).Q[..., :k]


def _sketch(d: int, ell: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """A random sketch with λ descending and ≥ τ (τ = 0 for a complete basis)."""
    lam = (torch.rand(B, ell, generator=g, dtype=F64) + 1).sort(-1, descending=True).values
    tau = torch.rand(B, generator=g, dtype=F64) * 0.5 if ell < d else torch.zeros(B, dtype=F64)
    return _orthogonal(B, d, ell, g), lam, tau


def _dense_increment(G: Tensor, W: Tensor, scale: Tensor, side: str) -> Tensor:
    Gs = G if side == "left" else G.transpose(-1, -2)
    return scale.reshape(-1, 1, 1) * Gs @ W @ Gs.transpose(-1, -2)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("weight", ["low_rank_plus_iso", "complete", "identity"])
def test_increment_ops_match_the_dense_increment(side: str, weight: str) -> None:
    g = torch.Generator().manual_seed(0)
    d, e = (M, N) if side == "left" else (N, M)
    G = torch.randn(B, M, N, generator=g, dtype=F64)
    ell = {"low_rank_plus_iso": 2, "complete": e, "identity": 0}[weight]
    V, w, w_tau = _sketch(e, ell, g)
    if weight == "identity":
        w_tau = torch.ones(B, dtype=F64)
    scale = torch.rand(B, generator=g, dtype=F64)
    K = _dense_increment(G, reconstruct(V, w, w_tau), scale, side)
    X = torch.randn(B, d, 3, generator=g, dtype=F64)
    torch.testing.assert_close(
        increment_apply_ref(G, X, V, w, w_tau, scale, side), K @ X, rtol=1e-12, atol=1e-12
    )
    H = increment_rayleigh_ref(G, X, V, w, w_tau, scale, side)
    torch.testing.assert_close(H, X.transpose(-1, -2) @ K @ X, rtol=1e-12, atol=1e-12)
    assert torch.equal(H, H.transpose(-1, -2))
    trace = torch.diagonal(K, dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(increment_trace_ref(G, V, w, w_tau, scale, side), trace, rtol=1e-12, atol=0)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("other_ell", [2, None], ids=["other-sketched", "other-complete"])
def test_complete_sketch_update_is_the_exact_ema(side: str, other_ell: int | None) -> None:
    """ℓ = d: the Rayleigh–Ritz step on the whole space is the eigendecomposition of β X + K."""
    g = torch.Generator().manual_seed(1)
    d, e = (M, N) if side == "left" else (N, M)
    G = torch.randn(B, M, N, generator=g, dtype=F64)
    U, lam, tau = _sketch(d, d, g)
    V, w, w_tau = _sketch(e, e if other_ell is None else other_ell, g)
    scale = torch.rand(B, generator=g, dtype=F64)
    expected = 0.9 * reconstruct(U, lam, tau) + _dense_increment(G, reconstruct(V, w, w_tau), scale, side)
    U2, lam2, tau2 = sketch_update_ref(U, lam, tau, G, V, w, w_tau, scale, 0.9, side)
    torch.testing.assert_close(reconstruct(U2, lam2, tau2), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        U2.transpose(-1, -2) @ U2, torch.eye(d, dtype=F64).expand(B, d, d), rtol=0, atol=1e-12
    )
    assert bool((lam2[:, :-1] >= lam2[:, 1:]).all()) and bool((tau2 == 0).all())


def test_truncated_update_keeps_top_eigenpairs_and_conserves_the_trace() -> None:
    """ℓ < d ≤ 2ℓ: the candidate basis spans R^d, so the kept pairs are the exact top ℓ of β X̃ + K
    and τ' is the mean of the d − ℓ eigenvalues that did not fit (the tail-mean level)."""
    g = torch.Generator().manual_seed(2)
    ell = 4
    G = torch.randn(B, M, N, generator=g, dtype=F64)
    U, lam, tau = _sketch(M, ell, g)
    V, w, w_tau = _sketch(N, 2, g)
    scale = torch.rand(B, generator=g, dtype=F64)
    X_new = 0.8 * reconstruct(U, lam, tau) + _dense_increment(G, reconstruct(V, w, w_tau), scale, "left")
    U2, lam2, tau2 = sketch_update_ref(U, lam, tau, G, V, w, w_tau, scale, 0.8, "left")
    exact = torch.linalg.eigvalsh(X_new).flip(-1)
    torch.testing.assert_close(lam2, exact[:, :ell], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tau2, exact[:, ell:].mean(-1), rtol=1e-12, atol=1e-12)
    sketch_trace = torch.diagonal(reconstruct(U2, lam2, tau2), dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(sketch_trace, exact.sum(-1), rtol=1e-12, atol=0)


def test_tall_update_conserves_the_trace_and_orthonormality() -> None:
    """d > 2ℓ (the memory-saving regime): trace conserved exactly, U' orthonormal, λ' ≥ τ'."""
    g = torch.Generator().manual_seed(3)
    m, n, ell = 40, 6, 3
    G = torch.randn(B, m, n, generator=g, dtype=F64)
    U, lam, tau = _sketch(m, ell, g)
    V, w, w_tau = _sketch(n, 2, g)
    scale = torch.rand(B, generator=g, dtype=F64)
    X_new = 0.9 * reconstruct(U, lam, tau) + _dense_increment(G, reconstruct(V, w, w_tau), scale, "left")
    U2, lam2, tau2 = sketch_update_ref(U, lam, tau, G, V, w, w_tau, scale, 0.9, "left")
    torch.testing.assert_close(
        torch.diagonal(reconstruct(U2, lam2, tau2), dim1=-2, dim2=-1).sum(-1),
        torch.diagonal(X_new, dim1=-2, dim2=-1).sum(-1),
        rtol=1e-12,
        atol=0,
    )
    torch.testing.assert_close(U2.transpose(-1, -2) @ U2, torch.eye(ell, dtype=F64).expand(B, ell, ell))
    assert bool((lam2[:, -1] >= tau2).all())


def _compressed(d: int, ell: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """A sketch U H Uᵀ + τ (I − U Uᵀ) whose compression H is not diagonal."""
    U, lam, tau = _sketch(d, ell, g)
    R = torch.linalg.qr(torch.randn(B, ell, ell, generator=g, dtype=F64)).Q
    return U, (R * lam.unsqueeze(-2)) @ R.transpose(-1, -2), tau


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("ell", [2, None], ids=["sketched", "complete"])
def test_tracking_is_the_projection_onto_the_fixed_basis(side: str, ell: int | None) -> None:
    """H' = Uᵀ (β X̃ + K) U, τ' the mean of β X̃ + K outside span(U), trace conserved; no factorisation."""
    g = torch.Generator().manual_seed(5)
    d, e = (M, N) if side == "left" else (N, M)
    ell = d if ell is None else ell
    G = torch.randn(B, M, N, generator=g, dtype=F64)
    U, H, tau = _compressed(d, ell, g)
    V, w, w_tau = _sketch(e, 2, g)
    scale = torch.rand(B, generator=g, dtype=F64)
    X_new = 0.9 * reconstruct(U, H, tau) + _dense_increment(G, reconstruct(V, w, w_tau), scale, side)
    H2, tau2 = sketch_track_ref(U, H, tau, G, V, w, w_tau, scale, 0.9, side)
    torch.testing.assert_close(H2, U.transpose(-1, -2) @ X_new @ U, rtol=1e-12, atol=1e-12)
    trace = torch.diagonal(X_new, dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(
        torch.diagonal(reconstruct(U, H2, tau2), dim1=-2, dim2=-1).sum(-1), trace, rtol=1e-12, atol=0
    )
    if ell == d:
        torch.testing.assert_close(reconstruct(U, H2, tau2), X_new, rtol=1e-12, atol=1e-12)
        assert bool((tau2 == 0).all())


def test_update_from_a_compression_is_the_rayleigh_ritz_step_of_its_sketch() -> None:
    """``sketch_update_ref`` with H = Uᵀ X̃ U (not diagonal) equals the update of the same X̃ written
    in its own eigenbasis U R (H = R diag(λ) Rᵀ)."""
    g = torch.Generator().manual_seed(6)
    G = torch.randn(B, 40, N, generator=g, dtype=F64)
    U, H, tau = _compressed(40, 3, g)
    lam, R = torch.linalg.eigh(H)
    V, w, w_tau = _sketch(N, 2, g)
    scale = torch.rand(B, generator=g, dtype=F64)
    from_h = sketch_update_ref(U, H, tau, G, V, w, w_tau, scale, 0.9, "left")
    from_eig = sketch_update_ref(U @ R, lam, tau, G, V, w, w_tau, scale, 0.9, "left")
    torch.testing.assert_close(reconstruct(*from_h), reconstruct(*from_eig), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("k_A", "k_B"), [(3, 2), (M, N), (M, 1), (1, N)])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_low_rank_direction_equals_the_dense_eigenbasis_direction(k_A: int, k_B: int, eps: float) -> None:
    g = torch.Generator().manual_seed(4)
    M_ = torch.randn(B, M, N, generator=g, dtype=F64)
    Q_A, Q_B = _orthogonal(B, M, M, g), _orthogonal(B, N, N, g)
    s_A, s_B = (
        torch.rand(B, k_A, generator=g, dtype=F64) * 10,
        torch.rand(B, k_B, generator=g, dtype=F64) * 10,
    )
    c_A, c_B = torch.rand(B, generator=g, dtype=F64), torch.rand(B, generator=g, dtype=F64)
    full_A = torch.cat([s_A, c_A[:, None].expand(B, M - k_A)], dim=-1)
    full_B = torch.cat([s_B, c_B[:, None].expand(B, N - k_B)], dim=-1)
    expected = eigenbasis_precondition_ref(M_, Q_A, Q_B, full_A, full_B, eps)
    got = sketch_precondition_ref(M_, Q_A[..., :k_A], s_A, c_A, Q_B[..., :k_B], s_B, c_B, eps)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("m", "n", "ell_a", "ell_b"), [(9, 4, 6, 4), (4, 9, 3, 7), (6, 6, 6, 6)])
def test_top_singular_subspaces_are_completed_orthonormally(m: int, n: int, ell_a: int, ell_b: int) -> None:
    g = torch.Generator().manual_seed(5)
    G = torch.randn(B, m, n, generator=g, dtype=F64)
    P, sq, R, ok = top_singular_subspaces(G, ell_a, ell_b)
    r = min(m, n)
    assert bool(ok.all())
    assert P.shape == (B, m, ell_a) and R.shape == (B, n, ell_b) and sq.shape == (B, r)
    torch.testing.assert_close(P.transpose(-1, -2) @ P, torch.eye(ell_a, dtype=F64).expand(B, -1, -1))
    torch.testing.assert_close(R.transpose(-1, -2) @ R, torch.eye(ell_b, dtype=F64).expand(B, -1, -1))
    # the leading columns are singular vectors: G Gᵀ P = P diag(σ²) on the first min(m, n, ℓ) columns
    k = min(r, ell_a)
    torch.testing.assert_close(G @ G.transpose(-1, -2) @ P[..., :k], P[..., :k] * sq[:, None, :k])


def test_virtual_spectrum_tail_mean_is_the_trace_formula() -> None:
    """mean_{i>k} x_i of the virtual spectrum = (tr X̃ − Σ_{i≤k} λ_i)/(d − k), docs/maths.md §4.4."""
    g = torch.Generator().manual_seed(6)
    d, ell, k = 10, 4, 2
    U, lam, tau = _sketch(d, ell, g)
    x = virtual_spectrum(lam, tau, d)
    trace = torch.diagonal(reconstruct(U, lam, tau), dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(x[:, k:].mean(-1), (trace - lam[:, :k].sum(-1)) / (d - k))
    assert torch.equal(virtual_spectrum(lam, tau, ell), lam)
