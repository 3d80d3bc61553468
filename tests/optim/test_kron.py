"""Drop-in behaviour, exactness and convergence of ``tritonkron.Kron``."""

from __future__ import annotations

import io
import re

import pytest
import torch

import tritonkron as tk
from tritonkron.optim import MOMENTUM
from tritonkron.options import Divergence, KronSettings, TailRule
from tritonkron.state import MOMENTUM_HAT
from tritonkron.step.dense import direction, new_group_state

DIVERGENCES = ["logdet", "von_neumann", "frobenius"]


def _momentum(state: dict) -> torch.Tensor:
    """The first block group's momentum M (low-rank form), or its rotated momentum M̂ (eigenbasis form)."""
    block = state["blocks"][0]
    return block[MOMENTUM] if MOMENTUM in block else block[MOMENTUM_HAT]


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 12), torch.nn.Tanh(), torch.nn.Linear(12, 5)).to(dtype)


def _batches(
    count: int, seed: int = 1, dtype: torch.dtype = torch.float32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(32, 10, generator=g, dtype=dtype), torch.randn(32, 5, generator=g, dtype=dtype))
        for _ in range(count)
    ]


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, batches, scale: float = 1.0) -> list[float]:
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = scale * (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_rank_at_least_dims_equals_full_bitwise(divergence: str) -> None:
    batches = _batches(25)
    full, sub = _mlp(), _mlp()
    _train(full, tk.Kron(full.parameters(), lr=1e-2, divergence=divergence, precondition_every=5), batches)
    _train(
        sub, tk.Kron(sub.parameters(), lr=1e-2, divergence=divergence, rank=12, precondition_every=5), batches
    )
    assert torch.equal(_flat(full), _flat(sub))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_flat_tail_with_alpha_one_equals_full(divergence: str) -> None:
    torch.manual_seed(0)
    m, n, k = 6, 9, 3
    state = new_group_state(2, m, n, torch.float64, torch.device("cpu"))
    for key, d in (("basis_a", m), ("basis_b", n)):
        state[key] = torch.linalg.qr(torch.randn(2, d, d, dtype=torch.float64)).Q
    # Descending spectra whose tails (indices >= k) are exactly flat.
    state["eig_a"] = torch.tensor([[9.0, 5.0, 4.0, 2.0, 2.0, 2.0]] * 2, dtype=torch.float64)
    state["eig_b"] = torch.tensor([[7.0, 3.0, 1.5] + [0.5] * 6] * 2, dtype=torch.float64)
    state["trace"] = torch.tensor([4.0, 9.0], dtype=torch.float64)
    M = torch.randn(2, m, n, dtype=torch.float64)

    def settings(rank):
        return KronSettings(Divergence(divergence), rank, TailRule.MEAN, 1.0, 0.98, 1e-8, 1e-8, 0.1, False)

    full = direction(state, M, settings(None))
    sub = direction(state, M, settings(k))
    torch.testing.assert_close(sub, full, rtol=1e-12, atol=0)
    # and a non-flat tail really changes the direction (the test can fail)
    state["eig_b"][:, -1] = 0.01
    assert not torch.allclose(direction(state, M, settings(k)), direction(state, M, settings(None)))


def test_adamw_path_matches_torch_adamw() -> None:
    torch.manual_seed(0)
    ours = [torch.randn(7, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt_ours = tk.Kron(
        [{"params": ours[:1]}, {"params": ours[1:], "kron": False}],
        lr=3e-3,
        betas=(0.9, 0.99),
        eps=1e-8,
        weight_decay=0.1,
    )
    opt_theirs = torch.optim.AdamW(theirs, lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    g = torch.Generator().manual_seed(3)
    for _ in range(30):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for p, q, grad in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
    # Same operations; the step size is a tensor here (no host read), a Python float in torch's
    # single-tensor path, so the two may differ by float32 rounding (a few ulp after 30 steps).
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=4 * torch.finfo(torch.float32).eps, atol=1e-7)


def test_loss_scale_invariance() -> None:
    batches = _batches(50)
    base, scaled = _mlp(), _mlp()
    _train(base, tk.Kron(base.parameters(), lr=1e-2), batches)
    _train(scaled, tk.Kron(scaled.parameters(), lr=1e-2), batches, scale=100.0)
    change = (_flat(base) - _flat(scaled)).norm() / _flat(base).norm()
    assert change < 0.01, f"parameters moved {float(change):.3%} relative when the loss was scaled by 100"


def _state_roundtrip(opt: torch.optim.Optimizer, fresh: torch.optim.Optimizer) -> None:
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))  # weights_only=True by default


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("rank", [None, 4])
def test_checkpoint_roundtrip_continues_bitwise(divergence: str, rank: int | None) -> None:
    batches = _batches(20)
    model = _mlp()
    kwargs = {"lr": 1e-2, "divergence": divergence, "rank": rank, "precondition_every": 4, "block_size": 8}
    opt = tk.Kron(model.parameters(), **kwargs)
    _train(model, opt, batches[:7])
    clone = _mlp(seed=5)
    clone.load_state_dict(model.state_dict())
    opt_clone = tk.Kron(clone.parameters(), **kwargs)
    _state_roundtrip(opt, opt_clone)
    _train(model, opt, batches[7:])
    _train(clone, opt_clone, batches[7:])
    assert torch.equal(_flat(model), _flat(clone))


def test_bf16_parameters_keep_float32_statistics_through_checkpoint() -> None:
    model = _mlp(dtype=torch.bfloat16)
    opt = tk.Kron(model.parameters(), lr=1e-2)
    _train(model, opt, _batches(3, dtype=torch.bfloat16))
    fresh = tk.Kron(model.parameters(), lr=1e-2)
    _state_roundtrip(opt, fresh)
    weight = model[0].weight
    assert _momentum(fresh.state[weight]).dtype == torch.float32
    assert fresh.state[weight]["blocks"][0]["factor_a"].dtype == torch.float32
    assert torch.equal(_momentum(fresh.state[weight]), _momentum(opt.state[weight]))


def test_float64_parameters_keep_float64_statistics() -> None:
    model = _mlp(dtype=torch.float64)
    opt = tk.Kron(model.parameters(), lr=1e-2)
    _train(model, opt, _batches(2, dtype=torch.float64))
    assert opt.state[model[0].weight]["blocks"][0]["factor_a"].dtype == torch.float64


def test_param_groups_override_options() -> None:
    model = _mlp()
    opt = tk.Kron(
        [
            {"params": model[0].parameters(), "lr": 0.0},
            {"params": model[2].parameters(), "divergence": "frobenius", "rank": 2, "tail": "kth"},
        ],
        lr=1e-2,
    )
    before = [p.detach().clone() for p in model[0].parameters()]
    _train(model, opt, _batches(5))
    assert all(torch.equal(a, b) for a, b in zip(before, model[0].parameters(), strict=True))
    assert opt.param_groups[1]["divergence"] == "frobenius" and opt.param_groups[0]["divergence"] == "logdet"
    with pytest.raises(ValueError, match="unknown param-group options"):
        opt.add_param_group({"params": [torch.zeros(2, 2, requires_grad=True)], "diverence": "logdet"})


def test_closure_returns_loss_and_steps() -> None:
    model = _mlp()
    opt = tk.Kron(model.parameters(), lr=1e-2)
    x, y = _batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    losses = [float(opt.step(closure).detach()) for _ in range(15)]
    assert losses[-1] < losses[0]


def test_lr_scheduler_and_tensor_lr() -> None:
    batches = _batches(12)
    a, b = _mlp(), _mlp()
    opt_a = tk.Kron(a.parameters(), lr=1e-2)
    opt_b = tk.Kron(b.parameters(), lr=torch.tensor(1e-2))
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=3, gamma=0.5)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=3, gamma=0.5)
    for batch in batches:
        _train(a, opt_a, [batch])
        _train(b, opt_b, [batch])
        sched_a.step()
        sched_b.step()
    assert opt_a.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**4)
    torch.testing.assert_close(_flat(a), _flat(b), rtol=1e-6, atol=1e-7)


def test_named_parameters_are_accepted() -> None:
    model = _mlp()
    opt = tk.Kron(model.named_parameters(), lr=1e-2)
    _train(model, opt, _batches(3))
    assert "param_names" in opt.state_dict()["param_groups"][0]


ERROR_CASES = [
    ({"lr": -1.0}, "lr"),
    ({"betas": (1.0, 0.9)}, "betas[0]"),
    ({"betas": (0.9,)}, "betas"),
    ({"eps": -1e-3}, "eps"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"divergence": "kl"}, "divergence"),
    ({"rank": 0}, "rank"),
    ({"rank": 2.5}, "rank"),
    ({"tail": "median"}, "tail"),
    ({"alpha": 0.0}, "alpha"),
    ({"precondition_every": 0}, "precondition_every"),
    ({"block_size": 0}, "block_size"),
    ({"kron": "yes"}, "kron"),
]


@pytest.mark.parametrize(("kwargs", "name"), ERROR_CASES, ids=[c[1] + "-" + str(c[0]) for c in ERROR_CASES])
def test_bad_arguments_name_the_parameter(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(name)):
        tk.Kron([torch.zeros(3, 3, requires_grad=True)], **kwargs)


def test_invalid_choice_lists_allowed_values() -> None:
    with pytest.raises(
        ValueError, match="'logdet'.*'von_neumann'.*'frobenius'|'frobenius'.*'von_neumann'.*'logdet'"
    ):
        tk.Kron([torch.zeros(3, 3, requires_grad=True)], divergence="kl")


def test_nonfinite_gradient_skips_parameter_without_touching_state() -> None:
    model = _mlp()
    opt = tk.Kron(model.parameters(), lr=1e-2)
    _train(model, opt, _batches(3))
    weight = model[0].weight
    before = weight.detach().clone()
    momentum = _momentum(opt.state[weight]).clone()
    opt.zero_grad()
    (model(_batches(1)[0][0]).sum()).backward()
    weight.grad[0, 0] = float("nan")
    opt.step()
    assert torch.equal(weight, before)
    assert torch.equal(_momentum(opt.state[weight]), momentum)
    assert opt.state[weight]["skipped_steps"] == 1


def test_blocked_parameter_equals_separate_block_parameters() -> None:
    """A 6 × 10 matrix with block_size 5 is four independent 3 × 5 preconditioned blocks."""
    torch.manual_seed(0)
    big = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    parts = [big.detach()[r : r + 3, c : c + 5].clone().requires_grad_() for r in (0, 3) for c in (0, 5)]
    opt_big = tk.Kron([big], lr=1e-2, block_size=5, precondition_every=3)
    opt_parts = tk.Kron(parts, lr=1e-2, precondition_every=3)
    g = torch.Generator().manual_seed(2)
    for _ in range(10):
        grad = torch.randn(6, 10, generator=g, dtype=torch.float64)
        big.grad = grad.clone()
        for p, (r, c) in zip(parts, [(0, 0), (0, 5), (3, 0), (3, 5)], strict=True):
            p.grad = grad[r : r + 3, c : c + 5].clone()
        opt_big.step()
        opt_parts.step()
    for p, (r, c) in zip(parts, [(0, 0), (0, 5), (3, 0), (3, 5)], strict=True):
        torch.testing.assert_close(big.detach()[r : r + 3, c : c + 5], p.detach(), rtol=1e-10, atol=1e-12)


def test_conv_weight_is_preconditioned_as_out_by_in_kh_kw() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, kernel_size=3)
    opt = tk.Kron(conv.parameters(), lr=1e-2)
    x = torch.randn(8, 3, 6, 6)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = conv(x).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert MOMENTUM not in opt.state[conv.weight]  # full rank: the momentum is kept rotated, per block group
    assert opt.state[conv.weight]["blocks"][0][MOMENTUM_HAT].shape == (1, 4, 27)
    assert losses[-1] < 0.5 * losses[0]


def test_zero_gradient_blocks_wait_for_a_nonzero_gradient() -> None:
    w = torch.ones(4, 6, requires_grad=True)
    opt = tk.Kron([w], lr=1e-1)
    w.grad = torch.zeros(4, 6)
    opt.step()
    assert torch.equal(w, torch.ones(4, 6))
    for _ in range(3):
        w.grad = torch.randn(4, 6)
        opt.step()
    assert torch.isfinite(w).all() and not torch.equal(w, torch.ones(4, 6))
