"""The optimizer's per-step factor rules against the exact Kronecker projections (docs/maths.md §2.2–§4.2)."""

from __future__ import annotations

import pytest
import torch

from tritonkron.math.divergences import coupling
from tritonkron.math.projection import bregman_divergence, kronecker_projection
from tritonkron.ops.factor_update import update_factors
from tritonkron.options import Divergence

F64 = torch.float64
M, N = 3, 4


def _covariance(seed: int) -> torch.Tensor:
    """A non-Kronecker SPD covariance: Kronecker part + rank-one spikes + a ridge."""
    g = torch.Generator().manual_seed(seed)
    A0 = torch.randn(M, M + 2, generator=g, dtype=F64)
    B0 = torch.randn(N, N + 2, generator=g, dtype=F64)
    C = torch.kron(A0 @ A0.T, B0 @ B0.T) / 10
    for _ in range(3):
        v = torch.randn(M * N, 1, generator=g, dtype=F64)
        C = C + v @ v.T
    return C + 0.05 * torch.eye(M * N, dtype=F64)


def _exact_samples(C: torch.Tensor) -> torch.Tensor:
    """Gradients G_s [mn, m, n] whose empirical second moment is exactly C: mean_s g_s g_sᵀ = C."""
    root = torch.linalg.cholesky(C)
    return (root.T * (M * N) ** 0.5).reshape(M * N, M, N)


def _eig(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(X)
    return values.flip(-1), vectors.flip(-1)


@pytest.mark.parametrize("divergence", list(Divergence))
def test_iterated_ema_rules_converge_to_the_projection(divergence: Divergence) -> None:
    C = _covariance(0)
    samples = _exact_samples(C)
    A, B = torch.eye(M, dtype=F64), torch.eye(N, dtype=F64)
    beta = 0.5
    for _ in range(400):
        a, Q_A = _eig(A)
        b, Q_B = _eig(B)
        count = samples.shape[0]
        rule = coupling(divergence, a.expand(count, M), b.expand(count, N))
        A_new, B_new = update_factors(
            A.expand(count, M, M),
            B.expand(count, N, N),
            samples,
            Q_A.expand(count, M, M),
            Q_B.expand(count, N, N),
            rule,
            beta,
        )
        A, B = A_new.mean(0), B_new.mean(0)
    S = torch.kron(A, B)
    if divergence is Divergence.VON_NEUMANN:
        S = S / torch.trace(C)  # the von Neumann projection is L ⊗ R / tr C
    A_star, B_star = kronecker_projection(C, (M, N), divergence.value)
    S_star = torch.kron(A_star, B_star)
    error = (S - S_star).norm() / S_star.norm()
    assert error < 1e-8, f"{divergence.value}: relative error {float(error):.2e}"


def _spike_and_flat(values: torch.Tensor, vectors: torch.Tensor, k: int, level: float) -> torch.Tensor:
    flat = torch.cat([values[:k], torch.full_like(values[k:], level)])
    return (vectors * flat) @ vectors.T


@pytest.mark.parametrize("divergence", list(Divergence))
def test_tail_mean_is_the_bregman_optimal_isotropic_level(divergence: Divergence) -> None:
    """argmin_t D(X, U_k Λ_k U_kᵀ + t (I − U_k U_kᵀ)) = mean of the tail eigenvalues (docs/maths.md §4.2)."""
    g = torch.Generator().manual_seed(1)
    d, k = 9, 3
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64)).Q
    values = torch.tensor([9.0, 6.0, 4.0, 1.5, 1.1, 0.7, 0.4, 0.2, 0.05], dtype=F64)
    X = (Q * values) @ Q.T
    tau = float(values[k:].mean())

    def loss(t: float) -> float:
        return float(bregman_divergence(X, _spike_and_flat(values, Q, k, t), divergence.value))

    low, high = 0.01, 3.0  # golden-section search on a unimodal objective
    ratio = (5**0.5 - 1) / 2
    for _ in range(120):
        x1, x2 = high - ratio * (high - low), low + ratio * (high - low)
        if loss(x1) < loss(x2):
            high = x2
        else:
            low = x1
    assert abs((low + high) / 2 - tau) < 1e-6 * tau
    assert loss(tau) < loss(tau * 1.01) and loss(tau) < loss(tau * 0.99)
