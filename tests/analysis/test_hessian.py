"""Curvature operators, Lanczos and the alignment diagnostics (docs/maths.md §3.4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from tritonkron.analysis.collect import LayerSamples
from tritonkron.analysis.hessian import (
    curvature_operator,
    hessian_alignment,
    kronecker_top_eigenvectors,
    lanczos,
    operator_matrix,
    probe_indices,
    rayleigh_quotients,
    subspace_overlap,
)

F64 = torch.float64
# torch's forward-AD decompositions (first jvp in a process) use torch.jit.script, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny linear algebra: one thread avoids OpenMP oversubscription slow-downs on shared CPUs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _forward(model, batch):
    return model(batch[0])


def _criterion(z, batch):
    return nn.functional.cross_entropy(z, batch[1])


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 6, generator=g, dtype=F64), torch.randint(0, 4, (16,), generator=g))
    return model, batch


def _explicit(model, batch, name):
    """Dense GGN Jᵀ H_z J and Hessian of the loss with respect to one weight."""
    W0 = dict(model.named_parameters())[name].detach()

    def out(W):
        return functional_call(model, {name: W}, (batch[0],))

    J = jacrev(out)(W0).reshape(-1, W0.numel())
    z = out(W0)
    Hz = hessian(lambda z: _criterion(z, batch))(z).reshape(z.numel(), z.numel())
    H = hessian(lambda W: _criterion(out(W), batch))(W0).reshape(W0.numel(), W0.numel())
    return (J.T @ Hz @ J).detach(), H.detach()


@pytest.mark.parametrize("name", ["0.weight", "2.weight"])
def test_ggn_and_hessian_vector_products_match_explicit(tiny, name):
    model, batch = tiny
    ggn, hess = _explicit(model, batch, name)
    op, d = curvature_operator(model, _forward, _criterion, batch, name, kind="ggn")
    assert d == ggn.shape[0]
    torch.testing.assert_close(operator_matrix(op, d), ggn, atol=1e-12, rtol=1e-10)
    op_h, _ = curvature_operator(model, _forward, _criterion, batch, name, kind="hessian")
    torch.testing.assert_close(operator_matrix(op_h, d), hess, atol=1e-12, rtol=1e-10)
    # The first layer's Hessian has a non-GGN part (tanh curvature): the two must differ there.
    if name == "0.weight":
        assert (hess - ggn).abs().max() > 1e-4


def test_subgrid_operator_is_principal_submatrix(tiny):
    model, batch = tiny
    ggn, _ = _explicit(model, batch, "0.weight")
    rows, cols = torch.tensor([0, 3]), torch.tensor([1, 2, 5])
    op, d = curvature_operator(model, _forward, _criterion, batch, "0.weight", rows=rows, cols=cols)
    idx = (rows[:, None] * 6 + cols[None, :]).reshape(-1)
    assert d == 6
    torch.testing.assert_close(operator_matrix(op, d), ggn[idx][:, idx], atol=1e-12, rtol=1e-10)


def test_curvature_operator_rejects_bad_arguments(tiny):
    model, batch = tiny
    with pytest.raises(ValueError, match="kind"):
        curvature_operator(model, _forward, _criterion, batch, "0.weight", kind="fisher")
    with pytest.raises(KeyError):
        curvature_operator(model, _forward, _criterion, batch, "nope")


def test_lanczos_matches_dense_eigh_on_a_layer(tiny):
    model, batch = tiny
    op, d = curvature_operator(model, _forward, _criterion, batch, "0.weight")
    dense = operator_matrix(op, d)
    w, V = torch.linalg.eigh(dense)
    w, V = w.flip(0), V.flip(1)
    pairs = lanczos(op, d, k=4, num_iters=d)
    torch.testing.assert_close(pairs.values, w[:4], atol=1e-10, rtol=1e-8)
    # Eigenvectors up to sign: each Ritz vector is an eigenvector (separated top eigenvalues).
    assert (w[:4].diff().abs() > 1e-6 * w[0]).all()
    cos = (pairs.vectors * V[:, :4]).sum(0).abs()
    torch.testing.assert_close(cos, torch.ones(4, dtype=F64), atol=1e-7, rtol=0)
    torch.testing.assert_close(pairs.vectors.T @ pairs.vectors, torch.eye(4, dtype=F64), atol=1e-10, rtol=0)


def test_lanczos_partial_krylov_and_low_rank_restart():
    g = torch.Generator().manual_seed(2)
    d = 60
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    w = 0.7 ** torch.arange(d, dtype=F64)
    M = (Q * w) @ Q.T
    pairs = lanczos(lambda v: M @ v, d, k=5, num_iters=40)
    torch.testing.assert_close(pairs.values, w[:5], atol=1e-9, rtol=1e-9)
    assert (pairs.residuals < 1e-6).all()
    # Rank 3: the Krylov space is invariant after 3 steps; restarts must still give 5 pairs.
    L = (Q[:, :3] * torch.tensor([3.0, 2.0, 1.0], dtype=F64)) @ Q[:, :3].T
    low = lanczos(lambda v: L @ v, d, k=5, num_iters=10)
    torch.testing.assert_close(
        low.values, torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0], dtype=F64), atol=1e-10, rtol=0
    )
    assert subspace_overlap(low.vectors[:, :3], Q[:, :3], [3])[0] == pytest.approx(1.0, abs=1e-10)


def test_subspace_overlap_identical_rotated_orthogonal_and_random():
    g = torch.Generator().manual_seed(3)
    d = 40
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    U = Q[:, :8]
    R, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))
    assert torch.allclose(subspace_overlap(U, U, [1, 4, 8]), torch.ones(3, dtype=F64))
    assert subspace_overlap(U, U @ R, [8])[0] == pytest.approx(1.0)  # any basis of the same subspace
    assert subspace_overlap(U, Q[:, 8:16], [8])[0] == pytest.approx(0.0, abs=1e-12)
    ks = [2, 5, 10]
    draws = torch.stack(
        [
            subspace_overlap(Q[:, :10], torch.linalg.qr(torch.randn(d, 10, generator=g, dtype=F64))[0], ks)
            for _ in range(300)
        ]
    )
    expected = torch.tensor([k / d for k in ks], dtype=F64)
    stderr = draws.std(0) / 300**0.5
    assert ((draws.mean(0) - expected).abs() < 4 * stderr).all(), (draws.mean(0), expected)


def test_kronecker_top_eigenvectors_are_sorted_eigenvectors():
    g = torch.Generator().manual_seed(4)
    X, Y = torch.randn(3, 3, generator=g, dtype=F64), torch.randn(4, 4, generator=g, dtype=F64)
    A, B = X @ X.T + 0.1 * torch.eye(3, dtype=F64), Y @ Y.T + 0.1 * torch.eye(4, dtype=F64)
    S = torch.kron(A, B)
    U = kronecker_top_eigenvectors(A, B, 5)
    rq = rayleigh_quotients(lambda v: S @ v, U)
    torch.testing.assert_close(rq, torch.linalg.eigvalsh(S).flip(0)[:5])
    torch.testing.assert_close(S @ U, U * rq, atol=1e-10, rtol=1e-10)


def test_probe_indices_cover_top_and_tail():
    idx = probe_indices(500, 16, tail=10)
    assert idx[:16].tolist() == list(range(16))
    assert idx.max() == 499 and len(set(idx.tolist())) == len(idx) and (idx.diff() > 0).all()
    assert probe_indices(10, 16).tolist() == list(range(10))


def test_alignment_recovers_a_covariance_that_equals_the_curvature():
    """Samples g ~ N(0, H), H with 4 separated top eigenvalues and a flat tail: the top-k of C
    align with H and are stable; the (nearly degenerate) tail eigenvectors are not."""
    g = torch.Generator().manual_seed(5)
    m, n, S = 4, 6, 3000
    d = m * n
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    spectrum = torch.cat([torch.tensor([8.0, 4.0, 2.0, 1.0]), 0.1 * (1 + 0.001 * torch.arange(d - 4))]).to(
        F64
    )
    H = (Q * spectrum) @ Q.T
    grads = (torch.randn(S, d, generator=g, dtype=F64) @ torch.linalg.cholesky(H).T).reshape(S, m, n)
    zeros = torch.zeros(1)
    samples = LayerSamples("w", (m, n), grads, None, None, zeros, zeros, 0.0)
    C = grads.reshape(S, d).T @ grads.reshape(S, d) / S
    lam, U = torch.linalg.eigh(C)
    ops = [lambda v: H @ v, lambda v: H @ v]
    res = hessian_alignment(samples, ops, lam.flip(0), U.flip(1), {}, k_max=8, damping=0.0, top=4)
    assert res.ks == [1, 2, 4, 8] and res.overlap["C"].shape == (2, 4)
    assert (res.overlap["C"][:, :3] > 0.95).all()
    torch.testing.assert_close(res.random, torch.tensor([1, 2, 4, 8], dtype=F64) / d)
    top = res.index < 4
    assert res.rayleigh.mean(0)[top].min() > res.rayleigh.mean(0)[~top].max()
    assert res.cosine[:, top].mean() > 0.95 and res.cosine[:, ~top].mean() < 0.6
