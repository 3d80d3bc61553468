"""Convergence: Kron against AdamW on problems with a known structure and on real data."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk

M, N, SAMPLES, STEPS = 12, 16, 512, 200
LR_GRID = [0.1, 0.3, 1.0, 3.0]


def _least_squares() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """min_W mean ‖P (W x − y)‖² with x ~ N(0, Σ_in), cond Σ_in = 1e6, cond PᵀP = 1e3.

    The Hessian in vec(W) is PᵀP ⊗ Σ_in: exactly Kronecker-structured and ill-conditioned.
    """
    g = torch.Generator().manual_seed(0)

    def spectrum(d: int, cond: float) -> tuple[torch.Tensor, torch.Tensor]:
        Q = torch.linalg.qr(torch.randn(d, d, generator=g)).Q
        return Q, torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), d)

    Q_in, ev_in = spectrum(N, 1e6)
    Q_out, ev_out = spectrum(M, 1e3)
    X = torch.randn(SAMPLES, N, generator=g) @ (Q_in * ev_in.sqrt()).T
    P = (Q_out * ev_out.sqrt()) @ Q_out.T
    W_star = torch.randn(M, N, generator=g)
    return X, X @ W_star.T, P


def _final_loss(make_optimizer, lr: float) -> float:
    X, Y, P = _least_squares()
    W = torch.zeros(M, N, requires_grad=True)
    opt = make_optimizer([W], lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    for _ in range(STEPS):
        opt.zero_grad()
        ((X @ W.T - Y) @ P).square().sum(1).mean().backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        return float(((X @ W.T - Y) @ P).square().sum(1).mean())


def test_kron_beats_best_adamw_tenfold_on_kronecker_least_squares() -> None:
    adamw = min(
        _final_loss(lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.0), lr) for lr in LR_GRID
    )
    kron = min(_final_loss(lambda p, lr: tk.Kron(p, lr=lr), lr) for lr in LR_GRID)
    assert kron * 10 <= adamw, f"Kron {kron:.3e} vs best AdamW {adamw:.3e}"


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, torch.tensor(data.target)


@pytest.mark.parametrize("divergence", ["logdet", "von_neumann", "frobenius"])
@pytest.mark.parametrize("rank", [None, 8])
def test_all_divergences_and_modes_train_an_mlp_on_digits(digits, divergence: str, rank: int | None) -> None:
    x, y = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = tk.Kron(model.parameters(), lr=3e-3, divergence=divergence, rank=rank)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = float(loss_fn(model(x), y))
    for _ in range(60):
        idx = torch.randint(0, len(x), (128,), generator=g)
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        end = float(loss_fn(model(x), y))
    assert end < 0.5 * start, f"{divergence} rank={rank}: loss {start:.3f} -> {end:.3f}"
