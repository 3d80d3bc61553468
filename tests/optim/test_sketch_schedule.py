"""The sketch's Rayleigh–Ritz step every T steps and its tracking in a fixed basis between them.

docs/maths.md §6.2–§6.3, :mod:`tritonkron.step.sketched`, :mod:`tritonkron.step.sketch_refresh`:
between refreshes the basis U stays, H ← β₂ H + Uᵀ K U and τ conserves the trace; a due block takes
the Rayleigh–Ritz step from its stored compression; T = 1 is the every-step update.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor

import tritonkron as tk
import tritonkron.step.sketch_refresh as sketch_refresh
from perf.sketch_schedule import settings
from perf.step_proxies import counting
from tests.optim.test_sketch import F64, _factors
from tritonkron.ops.precondition.reference import floor_eigenvalues
from tritonkron.ops.sketch.reference import reconstruct, sketch_update_ref
from tritonkron.optim import BLOCKS
from tritonkron.options import Divergence, KronSettings
from tritonkron.step.dense import flatten_tail
from tritonkron.step.schedule import due_positions
from tritonkron.step.sketch_refresh import sketch_weights
from tritonkron.step.sketched import new_sketch_state, sketch_group_step

CPU = torch.device("cpu")


def _grads(steps: int, count: int, m: int, n: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(count, m, n, generator=g, dtype=F64) for _ in range(steps)]


def _initialised(G: Tensor, st: KronSettings) -> dict[str, Tensor]:
    state = new_sketch_state(*G.shape, st.sketch_rank, F64, CPU)
    sketch_group_step(state, G, torch.zeros_like(G), st)
    assert bool(state["ready"].all())
    return state


@pytest.mark.parametrize("divergence", ["logdet", "von_neumann", "frobenius"])
def test_refresh_at_every_step_is_the_every_step_rayleigh_ritz_update(divergence: str) -> None:
    """T = 1 reproduces the update that re-diagonalises the sketch (U, λ, τ) at every step."""
    grads = _grads(9, 2, 12, 10, seed=0)
    st = settings(divergence, rank=2, ell=4, beta=0.9)
    state = _initialised(grads[0], st)
    U_a, lam_a, tau_a = state["basis_a"], state["eig_a"], state["tail_a"]
    U_b, lam_b, tau_b = state["basis_b"], state["eig_b"], state["tail_b"]
    for G in grads[1:]:
        left, right = sketch_weights(U_a, U_b, lam_a, lam_b, tau_a, tau_b, st)
        U_a, lam_a, tau_a, U_b, lam_b, tau_b = (
            *sketch_update_ref(U_a, lam_a, tau_a, G, *left, st.beta2, "left"),
            *sketch_update_ref(U_b, lam_b, tau_b, G, *right, st.beta2, "right"),
        )
        sketch_group_step(state, G, G, st, refresh=True)
        for key, want in (("a", (U_a, lam_a, tau_a)), ("b", (U_b, lam_b, tau_b))):
            got = reconstruct(state[f"basis_{key}"], state[f"compression_{key}"], state[f"tail_{key}"])
            torch.testing.assert_close(got, reconstruct(*want), rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(state[f"eig_{key}"], want[1], rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(
                state[f"compression_{key}"], torch.diag_embed(want[1]), rtol=1e-12, atol=1e-14
            )


def _stale_weight(X: Tensor, Q: Tensor, st: KronSettings, other_dim: int) -> tuple[Tensor, Tensor]:
    """The dense rule's weight and scale from the tracked eigenvalues diag(Qᵀ X Q) in the basis Q."""
    x = floor_eigenvalues(torch.diagonal(Q.mT @ X @ Q, dim1=-2, dim2=-1), st.eig_floor)
    if st.flat_tail_in_stats:
        x = flatten_tail(x, st.rank)
    if st.divergence is Divergence.LOGDET:
        return (Q / x.unsqueeze(-2)) @ Q.mT, torch.full((X.shape[0], 1, 1), 1 / other_dim, dtype=X.dtype)
    return (Q * x.unsqueeze(-2)) @ Q.mT, 1 / (x * x).sum(-1).reshape(-1, 1, 1)


def _eigenbasis(X: Tensor) -> Tensor:
    return torch.linalg.eigh(X).eigenvectors.flip(-1)


@pytest.mark.parametrize("divergence", ["logdet", "frobenius"])
@pytest.mark.parametrize("flat", [False, True], ids=["full-coupling", "flat_tail_in_stats"])
def test_complete_sketch_is_the_stale_basis_ema_at_every_step(divergence: str, flat: bool) -> None:
    """With ℓ ≥ d the sketch is, at every step, the dense EMA factor whose coupling uses the tracked
    eigenvalues diag(Qᵀ X Q) in a basis Q that is the factor's eigenbasis after each refresh (every
    T = 3 steps) and stale between refreshes; T = 1 is the exact-eigenbasis oracle of test_sketch."""
    grads = _grads(13, 2, 6, 9, seed=1)
    st = settings(divergence, rank=3, ell=9, flat=flat, beta=0.9)
    state = _initialised(grads[0], st)
    A, B = _factors(state)
    Q_A, Q_B = state["basis_a"].clone(), state["basis_b"].clone()
    beta = st.beta2
    for t, G in enumerate(grads[1:], start=1):
        refresh = t % 3 == 0
        W_B, s_A = _stale_weight(B, Q_B, st, 9)
        W_A, s_B = _stale_weight(A, Q_A, st, 6)
        A, B = (
            beta * A + (1 - beta) * s_A * G @ W_B @ G.mT,
            beta * B + (1 - beta) * s_B * G.mT @ W_A @ G,
        )
        if refresh:
            Q_A, Q_B = _eigenbasis(A), _eigenbasis(B)
        before = state["basis_a"].clone()
        sketch_group_step(state, G, G, st, refresh=refresh)
        X_A, X_B = _factors(state)
        torch.testing.assert_close(X_A, A, rtol=1e-10, atol=1e-12 * float(A.abs().max()))
        torch.testing.assert_close(X_B, B, rtol=1e-10, atol=1e-12 * float(B.abs().max()))
        assert refresh or torch.equal(state["basis_a"], before), "the basis moved between refreshes"


def _weight_matrix(V: Tensor, w: Tensor, w_tau: Tensor) -> Tensor:
    eye = torch.eye(V.shape[-2], dtype=V.dtype)
    return (V * (w - w_tau.unsqueeze(-1)).unsqueeze(-2)) @ V.mT + w_tau.reshape(-1, 1, 1) * eye


@pytest.mark.parametrize("divergence", ["logdet", "frobenius"])
def test_tracking_conserves_the_trace_and_pinches_onto_the_fixed_basis(divergence: str) -> None:
    """Between refreshes (ℓ < d): U stays, H' = Uᵀ (β X̃ + K) U, τ'(d − ℓ) is the trace of β X̃ + K
    outside span(U), so tr X̃' = β tr X̃ + tr K."""
    grads = _grads(6, 3, 20, 14, seed=2)
    st = settings(divergence, rank=2, ell=5, beta=0.9)
    state = _initialised(grads[0], st)
    sketch_group_step(state, grads[1], grads[1], st, refresh=True)
    for G in grads[2:]:
        left, right = sketch_weights(
            state["basis_a"],
            state["basis_b"],
            state["eig_a"],
            state["eig_b"],
            state["tail_a"],
            state["tail_b"],
            st,
        )
        K_A = left.scale.reshape(-1, 1, 1) * G @ _weight_matrix(left.V, left.w, left.w_tau) @ G.mT
        K_B = right.scale.reshape(-1, 1, 1) * G.mT @ _weight_matrix(right.V, right.w, right.w_tau) @ G
        X_A, X_B = _factors(state)
        U_A, U_B = state["basis_a"].clone(), state["basis_b"].clone()
        sketch_group_step(state, G, G, st, refresh=False)
        assert torch.equal(state["basis_a"], U_A) and torch.equal(state["basis_b"], U_B)
        for key, X, K, U in (("a", X_A, K_A, U_A), ("b", X_B, K_B, U_B)):
            target = st.beta2 * X + K
            d, ell = U.shape[-2:]
            new = reconstruct(U, state[f"compression_{key}"], state[f"tail_{key}"])
            trace = torch.diagonal(target, dim1=-2, dim2=-1).sum(-1)
            torch.testing.assert_close(
                torch.diagonal(new, dim1=-2, dim2=-1).sum(-1), trace, rtol=1e-12, atol=0
            )
            torch.testing.assert_close(state[f"compression_{key}"], U.mT @ target @ U, rtol=1e-12, atol=1e-14)
            outside = trace - torch.diagonal(U.mT @ target @ U, dim1=-2, dim2=-1).sum(-1)
            torch.testing.assert_close(state[f"tail_{key}"] * (d - ell), outside, rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(
                state[f"eig_{key}"],
                torch.diagonal(state[f"compression_{key}"], dim1=-2, dim2=-1),
                rtol=0,
                atol=0,
            )


def test_only_due_blocks_are_factorised() -> None:
    """Two parameters of 3 blocks each, T = 8: each step factorises (2 QR + 2 eigh) × its due
    blocks, and a step with none due factorises nothing and reads nothing back."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(48, 16)) for _ in range(2)]
    period = 8
    opt = tk.Kron(
        params, lr=1e-3, rank=2, sketch=True, sketch_rank=4, block_size=16, precondition_every=period
    )
    g = torch.Generator().manual_seed(3)
    idle = 0
    for step in range(1, 3 * period + 1):
        for p in params:
            p.grad = torch.randn(48, 16, generator=g)
        with counting() as counter:
            opt.step()
        if step <= 2:
            continue  # readiness is learnt on the host after the first steps
        due = sum(len(due_positions(step, first, 3, period)) for first in (0, 3))
        assert (counter.qr_matrices, counter.eigh_matrices) == (2 * due, 2 * due), (step, due)
        if due == 0:
            idle += 1
            assert counter.host_reads == 0, counter.ops
    assert idle >= 4


def test_a_failed_refresh_keeps_the_tracked_sketch_and_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    grads = _grads(6, 3, 12, 10, seed=4)
    st = settings("logdet", rank=2, ell=4, beta=0.9)
    state = _initialised(grads[0], st)
    real = sketch_refresh.sketch_update

    def failing(U: Tensor, *args: object, **kwargs: object) -> tuple[Tensor, Tensor, Tensor]:
        U_new, lam, tau = real(U, *args, **kwargs)
        return U_new * torch.nan, lam, tau

    monkeypatch.setattr(sketch_refresh, "sketch_update", failing)
    counts = []
    for G, refresh in zip(grads[1:5], [(1,), (), (1,), (0, 1)], strict=True):
        tracked = {k: v.clone() for k, v in state.items()}
        sketch_group_step(tracked, G, G, st, refresh=())
        sketch_group_step(state, G, G, st, refresh=refresh)
        for key in ("basis_a", "compression_a", "eig_a", "tail_a", "basis_b", "compression_b", "tail_b"):
            assert torch.equal(state[key], tracked[key]), key
        counts.append(state["refresh_failures"].tolist())
    assert counts == [[0, 1, 0], [0, 1, 0], [0, 2, 0], [1, 3, 0]]
    monkeypatch.setattr(sketch_refresh, "sketch_update", real)
    sketch_group_step(state, grads[5], grads[5], st, refresh=(1, 2))
    assert state["refresh_failures"].tolist() == [1, 0, 0]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 12))


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int, steps: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=g), torch.randn(16, 12, generator=g)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()


def test_a_checkpoint_without_compressions_loads_and_continues_as_its_diagonal_sketch() -> None:
    """A state dict written before the compressions were stored (every update re-diagonalised,
    T = 1) loads through ``torch.load(weights_only=True)`` and steps exactly as the same state
    with its H = diag(λ)."""
    kwargs = {"lr": 1e-2, "rank": 2, "sketch": True, "sketch_rank": 5, "block_size": 16}
    model = _model()
    opt = tk.Kron(model.parameters(), precondition_every=1, **kwargs)
    _train(model, opt, seed=1, steps=4)
    saved = opt.state_dict()
    for param_state in saved["state"].values():
        for block in param_state.get(BLOCKS, []):
            for key in ("compression_a", "compression_b"):
                assert torch.equal(block[key], torch.diag_embed(block[f"eig_{key[-1]}"]))
                del block[key]
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    legacy = torch.load(buffer, weights_only=True)
    results = []
    for state_dict in (opt.state_dict(), legacy):
        clone = _model()
        clone.load_state_dict(model.state_dict())
        opt_clone = tk.Kron(clone.parameters(), precondition_every=10, **kwargs)
        opt_clone.load_state_dict(state_dict)
        _train(clone, opt_clone, seed=2, steps=12)
        results.append(torch.cat([p.detach().flatten() for p in clone.parameters()]))
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], torch.cat([p.detach().flatten() for p in model.parameters()]))


def test_a_non_finite_tracking_step_is_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between refreshes a block whose tracked sketch is not finite keeps its state and counts a
    failure; a good tracking step does not reset the count, the next accepted refresh does."""
    import tritonkron.step.sketched as sketched

    grads = _grads(5, 3, 12, 10, seed=5)
    st = settings("frobenius", rank=2, ell=4, beta=0.9)
    state = _initialised(grads[0], st)
    real = sketched.sketch_track

    def failing(*args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
        H, tau = real(*args, **kwargs)
        return H, torch.where(torch.arange(H.shape[0]) == 1, torch.nan, tau)

    monkeypatch.setattr(sketched, "sketch_track", failing)
    before = {k: v.clone() for k, v in state.items()}
    sketch_group_step(state, grads[1], grads[1], st, refresh=())
    for key in ("compression_a", "eig_a", "tail_a", "compression_b", "tail_b", "trace"):
        assert torch.equal(state[key][1], before[key][1]), key
        assert not torch.equal(state[key][0], before[key][0]), key
    assert state["refresh_failures"].tolist() == [0, 1, 0]
    monkeypatch.setattr(sketched, "sketch_track", real)
    sketch_group_step(state, grads[2], grads[2], st, refresh=())
    assert state["refresh_failures"].tolist() == [0, 1, 0]
    sketch_group_step(state, grads[3], grads[3], st, refresh=(1,))
    assert state["refresh_failures"].tolist() == [0, 0, 0]
