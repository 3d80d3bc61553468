"""``Kron(rank=k, sketch=True)``: sketched factors against dense float64 oracles, checkpoints, memory.

The oracle is the dense EMA factor of the *same* rule as the sketch: A ← β A + (1−β) s_A G W(B) Gᵀ
with W(B) built from the exact (floored) eigendecomposition of the oracle's own B (LogDet B⁻¹,
Frobenius B, von Neumann I), initialised like the dense path. (The dense optimizer path instead
couples through eigenvalues tracked in a stale basis, so only von Neumann, which has no coupling,
can be compared with it directly.)

Tolerances of the planted-stream test (measured values in brackets, 2 blocks, 200 steps):

| quantity | vN, Frobenius | LogDet |
|---|---|---|
| top-k subspace overlap ‖U_kᵀ Q_k‖²_F / k | ≥ 0.99 [≥ 0.9999] | ≥ 0.99 [≥ 0.9996] |
| tail mean at k vs dense mean_{i>k} x_i | 1e-3 rel. [1e-4] | — (see below) |
| τ vs dense mean_{i>ℓ} x_i | 5 % rel. [2.4 %] | — |
| LogDet, vs the oracle that couples through W flattened beyond ℓ | | 3 % rel. on each tail mean [1.3 %] |
| LogDet, Kronecker tail level τ_A·τ_B (gauge-free) vs full oracle | | 5 % rel. [2.5 %] |

LogDet couples through W = B̃⁻¹, and the sketch's B̃ is flat beyond ℓ while the full oracle's B is
not (mean(1/b) ≥ 1/mean(b)): the per-factor levels then drift in opposite directions along the
(cA, B/c) gauge of the Kronecker pair (about ±14 % here), which leaves A ⊗ B almost unchanged.
"""

from __future__ import annotations

import io
import os

import pytest
import torch
from torch import Tensor

import tritonkron as tk
from perf.sketch_schedule import dense_oracle, eigh_desc, planted_stream, settings
from tests._backend_spy import spy_backends
from tritonkron.ops.sketch.reference import _complete, reconstruct, virtual_spectrum
from tritonkron.optim import BLOCKS, MOMENTUM
from tritonkron.options import KronSettings
from tritonkron.step.dense import direction, new_group_state
from tritonkron.step.sketched import new_sketch_state, sketch_direction, sketch_group_step

DIVERGENCES = ["logdet", "von_neumann", "frobenius"]
F64 = torch.float64


def _sketch_run(grads: list[Tensor], st: KronSettings, period: int = 1) -> dict[str, Tensor]:
    """The sketch after ``grads``; every block takes the Rayleigh–Ritz step every ``period`` steps
    (``period=1``: at every update)."""
    count, m, n = grads[0].shape
    state = new_sketch_state(count, m, n, st.sketch_rank, F64, torch.device("cpu"))
    for i, G in enumerate(grads):
        sketch_group_step(state, G, torch.zeros_like(G), st, refresh=i % period == 0)
    return state


def _factors(state: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    return (
        reconstruct(state["basis_a"], state["compression_a"], state["tail_a"]),
        reconstruct(state["basis_b"], state["compression_b"], state["tail_b"]),
    )


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("flat", [False, True], ids=["full-coupling", "flat_tail_in_stats"])
def test_full_rank_sketch_reproduces_the_dense_factor(divergence: str, flat: bool) -> None:
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 6, 9, generator=g, dtype=F64) for _ in range(15)]
    st = settings(divergence, rank=3, ell=9, beta=0.9, flat=flat)
    A, B = dense_oracle(grads, st, flat_beyond=3 if flat else None)
    X_A, X_B = _factors(_sketch_run(grads, st))
    torch.testing.assert_close(X_A, A, rtol=1e-11, atol=1e-12 * float(A.abs().max()))
    torch.testing.assert_close(X_B, B, rtol=1e-11, atol=1e-12 * float(B.abs().max()))


def test_full_rank_sketch_equals_the_dense_optimizer_factor_for_von_neumann() -> None:
    """von Neumann has no coupling, so the dense optimizer path's own factors are the oracle, at
    every step: between Rayleigh–Ritz steps the complete sketch tracks the exact EMA in its basis."""
    g = torch.Generator().manual_seed(1)
    dense, sketched = torch.zeros(6, 9, dtype=F64), torch.zeros(6, 9, dtype=F64)
    kwargs = {"lr": 0.0, "divergence": "von_neumann", "rank": 3, "precondition_every": 4}
    opt_dense = tk.Kron([dense], **kwargs)
    opt_sketch = tk.Kron([sketched], sketch=True, sketch_rank=9, **kwargs)
    for _ in range(12):
        grad = torch.randn(6, 9, generator=g, dtype=F64)
        dense.grad, sketched.grad = grad.clone(), grad.clone()
        opt_dense.step()
        opt_sketch.step()
        (dense_state,) = opt_dense.state[dense][BLOCKS]
        X_A, X_B = _factors(opt_sketch.state[sketched][BLOCKS][0])
        torch.testing.assert_close(X_A, dense_state["factor_a"], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(X_B, dense_state["factor_b"], rtol=1e-12, atol=1e-13)


def _tail_means(
    state: dict[str, Tensor], X: Tensor, side: str, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(sketch tail mean at k, dense tail mean at k, sketch τ, dense mean beyond ℓ)."""
    lam, tau = state[f"eig_{side}"], state[f"tail_{side}"]
    d, ell = X.shape[-1], lam.shape[-1]
    x = torch.linalg.eigvalsh(X).flip(-1)
    return virtual_spectrum(lam, tau, d)[:, k:].mean(-1), x[:, k:].mean(-1), tau, x[:, ell:].mean(-1)


def _rel(a: Tensor, b: Tensor) -> float:
    return float(((a - b) / b).abs().max())


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_planted_low_rank_stream_subspace_and_tail_level(divergence: str) -> None:
    m, n, k, ell = 64, 48, 4, 8
    grads = planted_stream(200, 2, m, n, k, noise=1.0, seed=2)
    st = settings(divergence, rank=k, ell=ell)
    state = _sketch_run(grads, st)
    A, B = dense_oracle(grads, st)
    for side, X in (("a", A), ("b", B)):
        Q_k = eigh_desc(X)[1][..., :k]
        overlap = (state[f"basis_{side}"][..., :k].transpose(-1, -2) @ Q_k).square().sum((-1, -2)) / k
        assert float(overlap.min()) >= 0.99, f"factor {side}: top-{k} subspace overlap {overlap.tolist()}"
    tails_a, tails_b = _tail_means(state, A, "a", k), _tail_means(state, B, "b", k)
    if divergence != "logdet":
        for tails in (tails_a, tails_b):
            assert _rel(tails[0], tails[1]) <= 1e-3, (
                f"tail mean at k: {tails[0].tolist()} vs {tails[1].tolist()}"
            )
            assert _rel(tails[2], tails[3]) <= 0.05, f"tau: {tails[2].tolist()} vs dense {tails[3].tolist()}"
        return
    # LogDet: the Kronecker tail level is gauge-free; per factor, compare with the oracle that
    # couples through the same ℓ-flattened weight the sketch has.
    assert _rel(tails_a[0] * tails_b[0], tails_a[1] * tails_b[1]) <= 0.05
    A_flat, B_flat = dense_oracle(grads, st, flat_beyond=ell)
    for side, X in (("a", A_flat), ("b", B_flat)):
        sketch_tail, dense_tail, _, _ = _tail_means(state, X, side, k)
        assert _rel(sketch_tail, dense_tail) <= 0.03, (
            f"{side}: {sketch_tail.tolist()} vs {dense_tail.tolist()}"
        )


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("tail", ["mean", "kth", "sketchy", "fixed"])
def test_sketch_direction_equals_the_dense_rule_on_the_virtual_spectrum(divergence: str, tail: str) -> None:
    """The tail constant and the top scales are the dense path's rules applied to (λ, τ…τ)."""
    g = torch.Generator().manual_seed(3)
    count, m, n, k, ell = 2, 9, 7, 2, 4
    st = settings(divergence, rank=k, ell=ell, beta=0.9, tail=tail)
    state = new_sketch_state(count, m, n, ell, F64, torch.device("cpu"))
    sketch_group_step(
        state, torch.randn(count, m, n, generator=g, dtype=F64), torch.zeros(count, m, n, dtype=F64), st
    )
    for _ in range(3):  # a few updates so that λ and τ are non-trivial
        G = torch.randn(count, m, n, generator=g, dtype=F64)
        sketch_group_step(state, G, G, st)
    dense = new_group_state(count, m, n, F64, torch.device("cpu"))
    dense["basis_a"], dense["basis_b"] = _complete(state["basis_a"], m), _complete(state["basis_b"], n)
    dense["eig_a"] = virtual_spectrum(state["eig_a"], state["tail_a"], m)
    dense["eig_b"] = virtual_spectrum(state["eig_b"], state["tail_b"], n)
    dense["trace"] = state["trace"]
    M = torch.randn(count, m, n, generator=g, dtype=F64)
    torch.testing.assert_close(
        sketch_direction(state, M, st), direction(dense, M, st), rtol=1e-10, atol=1e-12
    )


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))


def _batches(count: int, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(64, 20, generator=g), torch.randn(64, 10, generator=g)) for _ in range(count)]


def _train(
    model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[tuple[Tensor, Tensor]]
) -> list[float]:
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _flat(model: torch.nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_sketched_kron_trains_a_small_model(divergence: str) -> None:
    model = _mlp()
    opt = tk.Kron(model.parameters(), lr=3e-3, divergence=divergence, rank=2, sketch=True, sketch_rank=4)
    x, y = _batches(1)[0]
    losses = _train(model, opt, [(x, y)] * 100)
    assert losses[-1] < 0.85 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    (block,) = opt.state[model[0].weight][BLOCKS]
    assert block["basis_a"].shape == (1, 32, 4) and block["basis_b"].shape == (1, 20, 4)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_checkpoint_roundtrip_continues_bitwise(divergence: str) -> None:
    batches = _batches(14)
    model = _mlp()
    kwargs = {
        "lr": 1e-2,
        "divergence": divergence,
        "rank": 2,
        "sketch": True,
        "sketch_rank": 5,
        "block_size": 16,
    }
    opt = tk.Kron(model.parameters(), **kwargs)
    _train(model, opt, batches[:6])
    clone = _mlp(seed=5)
    clone.load_state_dict(model.state_dict())
    opt_clone = tk.Kron(clone.parameters(), **kwargs)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt_clone.load_state_dict(torch.load(buffer, weights_only=True))
    _train(model, opt, batches[6:])
    _train(clone, opt_clone, batches[6:])
    assert torch.equal(_flat(model), _flat(clone))


def test_embedding_sized_parameter_steps_with_o_m_plus_n_state() -> None:
    """A 50 000 × 768 embedding: the sketch holds (m + n)·ℓ floats; the whole state ≤ AdamW's."""
    m, n, rank = 50_000, 768, 8
    weight = torch.nn.Parameter(torch.zeros(m, n))
    opt = tk.Kron([weight], lr=1e-3, rank=rank, sketch=True, block_size=m)
    g = torch.Generator().manual_seed(4)
    for _ in range(2):
        ids = torch.randint(0, m, (2048,), generator=g)
        weight.grad = None
        (weight[ids] * torch.randn(2048, n, generator=g)).sum().backward()
        opt.step()
    state = opt.state[weight]
    (block,) = state[BLOCKS]
    assert bool(block["ready"].all())
    ell = 2 * rank
    assert MOMENTUM not in state  # the momentum M is block state, [B, m, n]
    sketch_bytes = sum(t.numel() * t.element_size() for key, t in block.items() if key != MOMENTUM)
    assert sketch_bytes <= 4 * ((m + n) * (ell + 1) + 16), sketch_bytes
    total = sketch_bytes + block[MOMENTUM].numel() * block[MOMENTUM].element_size()
    assert total <= 2 * 4 * weight.numel(), f"{total / weight.numel() / 4:.3f} floats per parameter"
    assert bool(torch.isfinite(weight).all()) and float(weight.detach().abs().max()) > 0


def test_zero_gradient_blocks_wait_and_move_nothing() -> None:
    weight = torch.nn.Parameter(torch.zeros(40, 6))
    opt = tk.Kron([weight], lr=1e-2, rank=2, sketch=True, block_size=10)
    grad = torch.zeros(40, 6)
    grad[:10] = torch.randn(10, 6)
    for _ in range(3):
        weight.grad = grad.clone()
        opt.step()
    (block,) = opt.state[weight][BLOCKS]
    assert block["ready"].tolist() == [True, False, False, False]
    assert bool((weight[10:] == 0).all()) and float(weight.detach()[:10].abs().max()) > 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"sketch": True}, "sketch"),
        ({"sketch": "yes", "rank": 2}, "sketch"),
        ({"sketch": True, "rank": 4, "sketch_rank": 2}, "sketch_rank"),
        ({"sketch": True, "rank": 4, "sketch_rank": 0}, "sketch_rank"),
        ({"sketch_rank": 2.5}, "sketch_rank"),
    ],
)
def test_bad_sketch_arguments_name_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        tk.Kron([torch.zeros(3, 3, requires_grad=True)], **kwargs)


def test_dense_state_cannot_continue_as_a_sketch() -> None:
    model = _mlp()
    dense = tk.Kron(model.parameters(), lr=1e-2, rank=2)
    _train(model, dense, _batches(2))
    sketched = tk.Kron(model.parameters(), lr=1e-2, rank=2, sketch=True)
    sketched.load_state_dict(dense.state_dict())  # torch restores the saved groups (sketch=False) too
    assert sketched.param_groups[0]["sketch"] is False
    sketched.param_groups[0]["sketch"] = True
    with pytest.raises(ValueError, match="sketch"):
        _train(model, sketched, _batches(1))


@pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton path needs CUDA or TRITON_INTERPRET=1",
)
@pytest.mark.parametrize("divergence", ["logdet", "von_neumann"])
def test_triton_sketch_step_equals_reference_step(divergence: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def train(backend: str) -> Tensor:
        monkeypatch.setenv("TRITONKRON_BACKEND", backend)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5))
        opt = tk.Kron(model.parameters(), lr=1e-2, divergence=divergence, rank=2, sketch=True, sketch_rank=3)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.randn(16, 7, generator=g), torch.randn(16, 5, generator=g)
            opt.zero_grad()
            (model(x) - y).square().mean().backward()
            opt.step()
        return _flat(model)

    calls = spy_backends(monkeypatch)
    reference = train("reference")
    triton = train("triton")
    assert "triton" in calls, "the optimizer did not run on the Triton path"
    error = (triton - reference).norm() / reference.norm()
    assert error < 1e-5, f"relative parameter error {float(error):.2e}"
