"""The low-rank and sketched forms keep their momentum M per block group (``[B, m, n]``), advanced
inside the group step: the same bits as the parameter's M lerped in float32, a skipped step
leaving it untouched, and older state (the parameter's M) converting on load and continuing."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import tritonkron as tk
from tritonkron.math.blocking import layout_of
from tritonkron.state import BLOCKS, MOMENTUM, MOMENTUM_HAT

OPTIONS = {
    "low-rank": {"rank": 2, "block_size": 8, "precondition_every": 2},
    "sketched": {"rank": 2, "sketch": True, "sketch_rank": 4, "block_size": 8, "precondition_every": 3},
}
NAN_STEP = 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16))


def _grads(model: torch.nn.Module, step: int) -> None:
    """Seeded gradients; the first weight's holds a NaN at ``NAN_STEP`` (a skipped step)."""
    gen = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    if step == NAN_STEP:
        model[0].weight.grad[1, 2] = float("nan")


def _run(model: torch.nn.Module, opt: tk.Kron, first: int, last: int) -> None:
    for step in range(first, last):
        _grads(model, step)
        opt.step()


def _block_momentum(opt: tk.Kron, p: torch.Tensor, block_size: int) -> torch.Tensor:
    """The parameter's M assembled from its block groups' momentum."""
    blocks = opt.state[p][BLOCKS]
    return layout_of(tuple(p.shape), block_size).scatter([b[MOMENTUM] for b in blocks])


@pytest.mark.parametrize("name", list(OPTIONS))
def test_block_momentum_is_the_parameters_lerp_with_skips(name: str) -> None:
    options = OPTIONS[name]
    model = _model()
    opt = tk.Kron(model.parameters(), lr=0.01, **options)
    weights = [p for p in model.parameters() if p.dim() == 2]
    expected = {p: torch.zeros_like(p) for p in weights}
    for step in range(7):
        _grads(model, step)
        for p in weights:
            ok = torch.isfinite(p.grad).all()
            M = expected[p]
            expected[p] = torch.where(ok, M.lerp(p.grad, 1 - 0.9), M)
        opt.step()
        for p in weights:
            assert MOMENTUM not in opt.state[p]
            assert all(MOMENTUM_HAT not in b for b in opt.state[p][BLOCKS])
            assert torch.equal(_block_momentum(opt, p, options["block_size"]), expected[p]), step
    assert float(opt.state[model[0].weight]["skipped_steps"]) == 1


def _to_parameter_momentum(state_dict: dict, model: torch.nn.Module, block_size: int) -> dict:
    """The state as the versions with the parameter's M wrote it (``momentum`` beside ``blocks``)."""
    old = copy.deepcopy(state_dict)
    params = list(model.parameters())  # one param group: state keys are the parameters' indices
    for index, entry in old["state"].items():
        if BLOCKS not in entry:
            continue
        p = params[index]
        parts = [b.pop(MOMENTUM) for b in entry[BLOCKS]]
        entry[MOMENTUM] = layout_of(tuple(p.shape), block_size).scatter(parts)
    return old


def _reloaded(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("old_format", [False, True], ids=["block", "parameter"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_checkpoints_resume_bit_for_bit(name: str, old_format: bool) -> None:
    options = OPTIONS[name]
    model = _model()
    opt = tk.Kron(model.parameters(), lr=0.01, **options)
    _run(model, opt, 0, 5)
    saved, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    _run(model, opt, 5, 10)
    expected = [p.detach().clone() for p in model.parameters()]

    model.load_state_dict(weights)
    if old_format:
        saved = _to_parameter_momentum(saved, model, options["block_size"])
        assert any(MOMENTUM in entry for entry in saved["state"].values())
    resumed = tk.Kron(model.parameters(), lr=0.01, **options)
    resumed.load_state_dict(_reloaded(saved))
    _run(model, resumed, 5, 10)
    for p in model.parameters():
        assert MOMENTUM not in resumed.state[p]
    for got, want in zip(model.parameters(), expected, strict=True):
        assert torch.equal(got.detach(), want)


def test_a_misshapen_block_momentum_is_refused() -> None:
    model = _model()
    opt = tk.Kron(model.parameters(), lr=0.01, **OPTIONS["low-rank"])
    _run(model, opt, 0, 2)
    state = opt.state_dict()
    entry = next(e for e in state["state"].values() if BLOCKS in e)
    entry[BLOCKS][0][MOMENTUM] = entry[BLOCKS][0][MOMENTUM][:, :-1]
    resumed = tk.Kron(model.parameters(), lr=0.01, **OPTIONS["low-rank"])
    resumed.load_state_dict(state)
    _grads(model, 2)
    with pytest.raises(ValueError, match="block layout"):
        resumed.step()
