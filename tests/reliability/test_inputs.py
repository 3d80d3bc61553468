"""Adversarial inputs: each works correctly or fails at once with an error naming the parameter."""

from __future__ import annotations

import io

import pytest
import torch

import tritonkron as tk


def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)  # weights_only=True by default


def _step_with(params: list[torch.Tensor], grads: list[torch.Tensor | None], opt: tk.Kron) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()


def test_sparse_gradient_is_rejected_with_the_parameter_name() -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = tk.Kron(emb.named_parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(ValueError, match="'weight'.*sparse"):
        opt.step()
    assert torch.equal(emb.weight, before)


def test_complex_parameter_is_rejected_with_its_position() -> None:
    p = torch.randn(3, 4, dtype=torch.complex64, requires_grad=True)
    opt = tk.Kron([p])
    p.grad = torch.randn_like(p)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\].*complex"):
        opt.step()


def test_nonfinite_raise_names_the_parameter_and_updates_nothing() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = tk.Kron(model.named_parameters(), nonfinite="raise", lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    states = _roundtrip(opt.state_dict())
    model(torch.randn(5, 4)).sum().backward()
    model[1].weight.grad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="'1.weight'"):
        opt.step()
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)  # the earlier parameters of the loop were not updated either
    after = opt.state_dict()["state"]
    for key, value in states["state"].items():
        for name, tensor in value.items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(after[key][name], tensor)


def test_nonfinite_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        tk.Kron([torch.zeros(2, 2, requires_grad=True)], nonfinite="ignore")


@pytest.mark.parametrize(
    "shape", [(1, 7), (7, 1), (2, 300), (300, 2), (0, 5), (5, 0), (3, 4, 2, 2), (1, 1)], ids=str
)
def test_degenerate_and_extreme_shapes_step_finite(shape: tuple[int, ...]) -> None:
    p = torch.randn(shape, requires_grad=True)
    opt = tk.Kron([p], lr=0.01, precondition_every=2, block_size=64)
    gen = torch.Generator().manual_seed(0)
    start = p.detach().clone()
    for _ in range(4):
        _step_with([p], [torch.randn(shape, generator=gen)], opt)
    assert torch.isfinite(p).all()
    if p.numel() > 0:
        assert not torch.equal(p, start)


def test_non_contiguous_and_channels_last_match_contiguous() -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(8, 3, 3, 3, generator=gen)
    grads = [torch.randn(8, 3, 3, 3, generator=gen) for _ in range(4)]
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        p = base.clone().to(memory_format=fmt).requires_grad_()
        opt = tk.Kron([p], lr=0.01, precondition_every=2)
        for g in grads:
            _step_with([p], [g.clone().to(memory_format=fmt)], opt)
        results.append(p.detach().contiguous())
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)
    transposed = torch.randn(10, 6, generator=gen).t().detach().requires_grad_()  # a non-contiguous leaf
    dense = transposed.detach().contiguous().requires_grad_()
    assert not transposed.is_contiguous()
    opts = [tk.Kron([x], lr=0.01, precondition_every=2) for x in (transposed, dense)]
    for _ in range(3):
        g = torch.randn(6, 10, generator=gen)
        _step_with([transposed], [g.clone()], opts[0])
        _step_with([dense], [g.clone()], opts[1])
    torch.testing.assert_close(transposed.detach(), dense.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_keep_float32_statistics_through_a_checkpoint(dtype: torch.dtype) -> None:
    p = torch.randn(6, 5).to(dtype).requires_grad_()
    opt = tk.Kron([p], lr=0.01, precondition_every=2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        _step_with([p], [torch.randn(6, 5, generator=gen).to(dtype)], opt)
    assert p.dtype == dtype and torch.isfinite(p.float()).all()
    blocks = opt.state[p]["blocks"][0]
    assert blocks["factor_a"].dtype == torch.float32
    saved = _roundtrip(opt.state_dict())
    q = p.detach().clone().requires_grad_()
    opt2 = tk.Kron([q], lr=0.01, precondition_every=2)
    opt2.load_state_dict(saved)
    assert opt2.state[q]["blocks"][0]["factor_a"].dtype == torch.float32
    g = torch.randn(6, 5, generator=gen).to(dtype)
    _step_with([p], [g.clone()], opt)
    _step_with([q], [g.clone()], opt2)
    assert torch.equal(p, q)


def test_parameters_without_gradients_in_some_steps_are_left_alone() -> None:
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(3, 5, requires_grad=True)
    opt = tk.Kron([a, b], lr=0.05, precondition_every=2)
    gen = torch.Generator().manual_seed(3)
    _step_with([a, b], [torch.randn(4, 3, generator=gen), torch.randn(3, 5, generator=gen)], opt)
    b_before = b.detach().clone()
    b_step = opt.state[b]["step"].clone()
    for _ in range(3):
        _step_with([a, b], [torch.randn(4, 3, generator=gen), None], opt)
    assert torch.equal(b, b_before) and torch.equal(opt.state[b]["step"], b_step)
    assert int(opt.state[a]["step"]) == 4


def test_same_parameter_in_two_groups_fails_at_construction() -> None:
    p = torch.randn(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="more than one parameter group"):
        tk.Kron([{"params": [p]}, {"params": [p], "lr": 0.1}])


def test_state_from_another_model_fails_at_the_first_step_naming_the_shape() -> None:
    small = torch.randn(4, 3, requires_grad=True)
    opt = tk.Kron([small])
    _step_with([small], [torch.randn(4, 3)], opt)
    saved = _roundtrip(opt.state_dict())
    other = torch.randn(5, 3, requires_grad=True)
    opt2 = tk.Kron([other])
    opt2.load_state_dict(saved)
    before = other.detach().clone()
    with pytest.raises(ValueError, match=r"shape \(5, 3\)"):
        _step_with([other], [torch.randn(5, 3)], opt2)
    assert torch.equal(other, before)


def test_older_state_format_is_read() -> None:
    """State written before the device-side counters: an int ``skipped_steps``, a CPU ``step``."""
    p = torch.randn(4, 3, requires_grad=True)
    opt = tk.Kron([p], precondition_every=2)
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):
        _step_with([p], [torch.randn(4, 3, generator=gen)], opt)
    saved = _roundtrip(opt.state_dict())
    old = _roundtrip(opt.state_dict())
    old["state"][0]["skipped_steps"] = 0
    old["state"][0]["step"] = old["state"][0]["step"].cpu()
    q, r = p.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
    opt_new, opt_old = tk.Kron([q], precondition_every=2), tk.Kron([r], precondition_every=2)
    opt_new.load_state_dict(saved)
    opt_old.load_state_dict(old)
    g = torch.randn(4, 3, generator=gen)
    _step_with([q], [g.clone()], opt_new)
    _step_with([r], [g.clone()], opt_old)
    assert torch.equal(q, r)
    assert int(opt_old.state[r]["skipped_steps"]) == 0
