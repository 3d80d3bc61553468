"""The rotated-momentum step (tritonkron.step.rotated) equals the eigenbasis step with M (float64).

Claims tested (tritonkron/ops/rotation/reference.py and tritonkron/step/rotated.py docstrings):
- the shared-product statistics equal two factor updates plus Q_Aᵀ G Q_B, for every divergence's weights;
- stepping M̂ = Q_Aᵀ M Q_B, carried across refreshes and initialisation, gives the same directions and
  state as stepping M, through skipped steps, zero blocks initialised late and basis refreshes;
- state in the older format (the parameter's M only), or from a group whose form changed, converts
  on the next step and continues as if it had never been converted (up to rounding).
"""

from __future__ import annotations

import copy

import pytest
import torch

import tritonkron as tk
from tritonkron.ops.factor_update.reference import factor_update_ref
from tritonkron.ops.rotated_statistics.reference import rotated_statistics_ref
from tritonkron.ops.rotation.reference import rotate_back_ref
from tritonkron.options import Divergence, KronSettings, TailRule
from tritonkron.state import BASIS_A, BASIS_B, FACTOR_A, FACTOR_B, MOMENTUM, MOMENTUM_HAT
from tritonkron.step.dense import block_group_step, new_group_state
from tritonkron.step.rotated import rotated_group_step, uses_rotated_momentum

F64 = torch.float64


def _orthonormal(b: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(b, d, d, generator=gen, dtype=F64)).Q


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize(("m", "n"), [(9, 5), (4, 11), (6, 6)])
def test_shared_product_statistics_equal_separate_products(m: int, n: int, identity: bool) -> None:
    gen = torch.Generator().manual_seed(m * n)
    b = 2
    A = torch.randn(b, m, m, generator=gen, dtype=F64)
    A = A + A.transpose(-1, -2)  # exactly symmetric, as the factors are
    B = torch.randn(b, n, n, generator=gen, dtype=F64)
    B = B + B.transpose(-1, -2)
    G = torch.randn(b, m, n, generator=gen, dtype=F64)
    Q_A, Q_B = _orthonormal(b, m, gen), _orthonormal(b, n, gen)
    w_A, w_B = torch.rand(b, m, generator=gen, dtype=F64), torch.rand(b, n, generator=gen, dtype=F64)
    s_A, s_B = torch.rand(b, generator=gen, dtype=F64), torch.rand(b, generator=gen, dtype=F64)
    if identity:  # W = I (von Neumann): G Gᵀ and Gᵀ G, through the orthogonal bases
        w_A = w_B = None
    got_A, got_B, got_hat = rotated_statistics_ref(A, B, G, Q_A, Q_B, w_A, s_A, w_B, s_B, 0.9)
    want_A = factor_update_ref(A, G, 0.9, s_A, "left", None if identity else (Q_B, w_B))
    want_B = factor_update_ref(B, G, 0.9, s_B, "right", None if identity else (Q_A, w_A))
    want_hat = Q_A.transpose(-1, -2) @ G @ Q_B
    for got, want in ((got_A, want_A), (got_B, want_B), (got_hat, want_hat)):
        assert ((got - want).norm() / want.norm()).item() < 1e-13
    assert torch.equal(got_A, got_A.transpose(-1, -2)) and torch.equal(got_B, got_B.transpose(-1, -2))


def _settings(divergence: Divergence, rank: int | None) -> KronSettings:
    return KronSettings(
        divergence=divergence,
        rank=rank,
        tail=TailRule.MEAN,
        alpha=1.0,
        beta2=0.9,
        eps=0.05,
        eig_floor=1e-8,
        init_floor=0.1,
        flat_tail_in_stats=rank is not None,
        beta1=0.8,
    )


@pytest.mark.parametrize("divergence", list(Divergence))
@pytest.mark.parametrize("rank", [None, 5])
def test_rotated_step_equals_step_with_momentum(divergence: Divergence, rank: int | None) -> None:
    m, n, b, steps = 7, 6, 3, 9
    settings = _settings(divergence, rank)
    assert uses_rotated_momentum(settings, m, n)  # (rank 5 of 7 × 6 is not cheaper in low-rank form)
    gen = torch.Generator().manual_seed(11)
    cpu = torch.device("cpu")
    plain = new_group_state(b, m, n, F64, cpu)
    rotated = new_group_state(b, m, n, F64, cpu, rotated=True)
    M = torch.zeros(b, m, n, dtype=F64)
    for step in range(1, steps + 1):
        G = torch.randn(b, m, n, generator=gen, dtype=F64)
        if step <= 3:
            G[1] = 0  # block 1 stays uninitialised until step 4
        ok = torch.tensor(step != 5)  # step 5 is skipped (its gradient zeroed, as the optimizer does)
        G = torch.where(ok, G, torch.zeros_like(G))
        M = torch.where(ok, M.lerp(G, 1 - settings.beta1), M)
        refresh = step % 2 == 0
        want = block_group_step(plain, G, M, settings, refresh, ok)
        got = rotated_group_step(rotated, G, settings, refresh, ok)
        assert ((got - want).norm() / want.norm().clamp_min(1e-300)).item() < 1e-11, step
        for key, value in plain.items():
            assert torch.allclose(rotated[key].to(value.dtype), value, rtol=1e-10, atol=1e-12), (step, key)
        M_back = rotate_back_ref(rotated[MOMENTUM_HAT], rotated[BASIS_A], rotated[BASIS_B])
        assert torch.allclose(M_back, M, rtol=1e-10, atol=1e-12), step


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _run(model: torch.nn.Module, opt: tk.Kron, first: int, last: int) -> None:
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(10, 6, generator=gen), torch.randn(10, 3, generator=gen)) for _ in range(last)]
    for x, y in batches[first:last]:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _to_old_format(state_dict: dict) -> dict:
    """The state as tritonkron < 0.3 wrote it: the parameter's M, no rotated momentum."""
    old = copy.deepcopy(state_dict)
    for entry in old["state"].values():
        if "blocks" not in entry:
            continue
        (blocks,) = entry["blocks"]
        M_hat = blocks.pop(MOMENTUM_HAT)
        entry[MOMENTUM] = rotate_back_ref(M_hat, blocks[BASIS_A], blocks[BASIS_B])[0]
    return old


def test_older_state_converts_and_continues() -> None:
    model = _model()
    opt = tk.Kron(model.parameters(), lr=0.05, precondition_every=2)
    _run(model, opt, 0, 5)
    saved, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    _run(model, opt, 5, 9)
    expected = [p.detach().clone() for p in model.parameters()]

    model.load_state_dict(weights)
    resumed = tk.Kron(model.parameters(), lr=0.05, precondition_every=2)
    resumed.load_state_dict(_to_old_format(saved))
    _run(model, resumed, 5, 9)
    weight = model[0].weight
    assert MOMENTUM not in resumed.state[weight] and MOMENTUM_HAT in resumed.state[weight]["blocks"][0]
    for got, want in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_changing_to_the_low_rank_form_converts_the_momentum() -> None:
    model = _model()
    opt = tk.Kron(model.parameters(), lr=0.05, precondition_every=2)
    _run(model, opt, 0, 5)
    weight = model[0].weight
    blocks = opt.state[weight]["blocks"][0]
    M = rotate_back_ref(blocks[MOMENTUM_HAT], blocks[BASIS_A], blocks[BASIS_B])[0]
    low_rank = tk.Kron(model.parameters(), lr=0.05, precondition_every=2)
    low_rank.load_state_dict(opt.state_dict())
    low_rank.param_groups[0]["rank"] = (
        1  # after loading (which restores the saved options): 1 + 1 ≤ (8 + 6)/2
    )
    factors = blocks[FACTOR_A].clone(), blocks[FACTOR_B].clone()
    _run(model, low_rank, 5, 6)
    state = low_rank.state[weight]
    assert MOMENTUM_HAT not in state["blocks"][0] and MOMENTUM not in state
    assert state["blocks"][0][FACTOR_A].shape == factors[0].shape
    # the converted M took exactly one more EMA step with this step's gradient
    expected = M.lerp(weight.grad, 1 - 0.9)
    torch.testing.assert_close(state["blocks"][0][MOMENTUM][0], expected, rtol=1e-5, atol=1e-7)
