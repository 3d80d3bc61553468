"""Known-answer tests of the spectral study (docs/maths.md §2.2, §3.2, §3.3) and of gradient collection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tritonkron.analysis.collect import (
    collect_gradients,
    covariance,
    kronecker_samples,
    noise_samples,
    spiked_covariance,
)
from tritonkron.analysis.spectral import (
    DIVERGENCES,
    analyse_covariance,
    direction_cost,
    known_answer_suite,
    kronecker_eigh,
    null_dimension,
)
from tritonkron.math.projection import bregman_divergence

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny linear algebra: one thread avoids OpenMP oversubscription slow-downs on shared CPUs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, d, generator=g, dtype=F64)
    return X @ X.T / d + 0.2 * torch.eye(d, dtype=F64)


# ----------------------------------------------------------------------------- exact Kronecker


def test_exact_kronecker_has_zero_error_for_all_three():
    A0, B0 = _spd(4, 1), _spd(5, 2)
    res = analyse_covariance(torch.kron(A0, B0), (4, 5), top_k=3)
    assert set(res.projections) == set(DIVERGENCES)
    for div, p in res.projections.items():
        assert p.log_ratio.abs().max() < 1e-10, div
        assert p.top_error < 1e-10 and p.tail_error < 1e-10, div
        torch.testing.assert_close(p.whitened, torch.ones(20, dtype=F64), atol=1e-10, rtol=0)
        torch.testing.assert_close(torch.kron(p.A, p.B), torch.kron(A0, B0), atol=1e-10, rtol=1e-10)
        for name in DIVERGENCES:
            assert abs(p.residuals[name]) < 1e-10, (div, name)
            assert abs(p.identities[name]) < 1e-10, (div, name)
            assert abs(p.divergences[name]) < 1e-9, (div, name)


# ----------------------------------------------------------------------------- planted spikes


@pytest.mark.parametrize("seed", range(10))
def test_planted_spikes_orders_divergences_as_paper_toy(seed):
    """docs/maths.md §3.3 toy (12x16, 4 non-Kronecker spikes, top 8): F best on top, LD best-bounded.

    The ordering held on 20 of 20 seeds at this size and strength (σ = 0.1), so every seed must
    pass. It is *not* universal: with much stronger spikes (σ = 1) F loses the top-k accuracy.
    """
    res = analyse_covariance(spiked_covariance(12, 16, strength=0.1, seed=seed), (12, 16), top_k=8)
    p = res.projections
    top = {d: p[d].top_error for d in DIVERGENCES}
    wmax = {d: p[d].whitened_max for d in DIVERGENCES}
    assert top["frobenius"] < top["von_neumann"] < top["logdet"], top
    assert wmax["logdet"] < wmax["von_neumann"] < wmax["frobenius"], wmax
    # Own scale identities and residual conditions hold; the others' do not.
    for d in DIVERGENCES:
        assert abs(p[d].identities[d]) < 1e-8 and p[d].residuals[d] < 1e-8, d
        others = [o for o in DIVERGENCES if o != d]
        assert all(p[d].residuals[o] > 1e-4 for o in others), (d, p[d].residuals)
    assert abs(p["logdet"].whitened_mean - 1) < 1e-10


# ----------------------------------------------------------------------------- pure noise


def test_pure_noise_gives_isotropic_projections_and_marchenko_pastur_whitening():
    m, n, S = 6, 8, 4800
    res = analyse_covariance(covariance(noise_samples(m, n, S, seed=3)), (m, n), top_k=4)
    edge = (1 + math.sqrt(m * n / S)) ** 2
    for div, p in res.projections.items():
        S_model = torch.kron(p.A, p.B)
        scale = S_model.trace() / (m * n)
        assert (S_model / scale - torch.eye(m * n, dtype=F64)).abs().max() < 0.1, div
        assert abs(p.whitened_max / edge - 1) < 0.1, (div, p.whitened_max, edge)
    wm = [p.whitened_max for p in res.projections.values()]
    assert max(wm) - min(wm) < 0.01


# ----------------------------------------------------------------------------- building blocks


def test_fast_divergences_match_reference_bregman():
    C = spiked_covariance(5, 6, strength=0.4, seed=7)
    res = analyse_covariance(C, (5, 6), top_k=3)
    for div, p in res.projections.items():
        S = torch.kron(p.A, p.B)
        for name in DIVERGENCES:
            ref = float(bregman_divergence(C, S, name))
            assert p.divergences[name] == pytest.approx(ref, rel=1e-9, abs=1e-12), (div, name)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_direction_cost_sums_to_divergence_for_commuting_matrices(div):
    lam = torch.tensor([3.0, 1.5, 0.2, 0.05], dtype=F64)
    s = torch.tensor([2.0, 2.0, 0.1, 0.1], dtype=F64)
    ref = float(bregman_divergence(torch.diag(lam), torch.diag(s), div))
    assert float(direction_cost(lam, s, div).sum()) == pytest.approx(ref, rel=1e-12)


def test_kronecker_eigh_matches_dense():
    A, B = _spd(3, 4), _spd(4, 5)
    values, i, j = kronecker_eigh(A, B)
    dense = torch.linalg.eigvalsh(torch.kron(A, B)).flip(0)
    torch.testing.assert_close(values, dense)
    a, b = torch.linalg.eigvalsh(A), torch.linalg.eigvalsh(B)
    torch.testing.assert_close(a[i] * b[j], values)


def test_known_answer_suite_reports_theory():
    frame = known_answer_suite(m=6, n=8, top_k=4)
    kron = frame[frame.case == "kronecker"]
    assert (kron.max_abs_log_ratio < 1e-10).all()
    spiked = frame[frame.case == "spiked"].set_index("divergence")
    assert spiked.top_error.idxmin() == "frobenius" and spiked.whitened_max.idxmin() == "logdet"
    noise = frame[frame.case == "noise"]
    assert ((noise.whitened_max / noise.expected_whitened_max - 1).abs() < 0.15).all()


# ----------------------------------------------------------------------------- collection


def _tiny(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(seed)
    batches = [
        (torch.randn(8, 6, generator=g, dtype=F64), torch.randint(0, 3, (8,), generator=g)) for _ in range(7)
    ]
    return model, batches


def _loss(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def test_collect_gradients_matches_autograd_and_factor_statistics():
    model, batches = _tiny()
    out = collect_gradients(model, _loss, batches, max_dim=1000)
    assert set(out) == {"0.weight", "2.weight"}
    s = out["0.weight"]
    assert not s.subset and s.num_samples == 7 and s.shape == (5, 6)
    manual = []
    for b in batches:
        model.zero_grad()
        _loss(model, b).backward()
        manual.append(model[0].weight.grad.clone())
    G = torch.stack(manual)
    torch.testing.assert_close(s.grads, G)
    torch.testing.assert_close(s.left, torch.einsum("sij,skj->ik", G, G) / 7)
    torch.testing.assert_close(s.right, torch.einsum("sji,sjk->ik", G, G) / 7)
    assert s.trace == pytest.approx(float(G.square().sum() / 7))
    g = G.reshape(7, -1)
    torch.testing.assert_close(covariance(s), g.T @ g / 7)


def test_large_layer_uses_a_subgrid_and_says_so():
    model, batches = _tiny()
    full = collect_gradients(model, _loss, batches, max_dim=1000)["0.weight"]
    sub = collect_gradients(model, _loss, batches, max_dim=12, seed=3)["0.weight"]
    assert sub.subset and sub.sub_shape[0] * sub.sub_shape[1] <= 12
    assert "sub-grid" in sub.note and "sub-grid" not in full.note
    torch.testing.assert_close(sub.grads, full.grads[:, sub.rows][:, :, sub.cols])
    torch.testing.assert_close(sub.left, full.left)  # factor statistics stay full-layer
    idx = (sub.rows[:, None] * 6 + sub.cols[None, :]).reshape(-1)
    torch.testing.assert_close(covariance(sub), covariance(full)[idx][:, idx])
    explicit = collect_gradients(
        model, _loss, batches, max_dim=12, coord_subset={"0.weight": ([0, 4], [1, 2, 5])}
    )
    assert explicit["0.weight"].sub_shape == (2, 3)


def test_covariance_damping_and_kronecker_samples():
    grads, A0, B0 = kronecker_samples(3, 4, 20000, seed=1)
    C = covariance(grads)
    assert (C - torch.kron(A0, B0)).abs().max() < 0.05 * torch.kron(A0, B0).abs().max()
    Cd = covariance(grads, damping=0.1)
    kappa = 0.1 * C.trace() / 12
    torch.testing.assert_close(Cd - C, kappa * torch.eye(12, dtype=F64))


def test_null_dimension_counts_dead_coordinates():
    grads = noise_samples(3, 4, 500, seed=2)
    grads[:, 1, :] = 0.0  # a dead unit: one row of G is always zero -> 4 null directions
    grads[:, :, 2] = 0.0  # a constant input: one column -> 3 more (one overlaps the row)
    for damping in (1e-4, 1e-2):
        lam = torch.linalg.eigvalsh(covariance(grads, damping)).flip(0)
        assert null_dimension(lam, damping) == 4 + 3 - 1
    assert null_dimension(torch.linalg.eigvalsh(covariance(noise_samples(3, 4, 500), 1e-3)), 1e-3) == 0
