"""The multi-tensor AdamW path (:func:`tritonkron.step.adamw.adamw_steps`) against the per-parameter one."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import tritonkron as tk
from perf.step_proxies import OpCounter, counting
from tritonkron.step.adamw import adamw_step, adamw_steps

SHAPES = [(7,), (3, 4), (1,), (2, 3, 5), (16,)]


def _params(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in SHAPES]


def _grads(step: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g).to(dtype) for s in SHAPES]


def test_tensor_lr_is_refused() -> None:
    with pytest.raises(ValueError, match="float lr"):
        adamw_steps(_params(), {"lr": torch.tensor(1e-3)}, [{} for _ in SHAPES])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_batched_steps_equal_per_parameter_steps_bitwise(dtype: torch.dtype) -> None:
    group = {
        "lr": 3e-3,
        "betas": (0.9, 0.99),
        "eps": 1e-8,
        "weight_decay": 0.1,
    }
    batched, single = _params(dtype), _params(dtype)
    states_b = [{} for _ in SHAPES]
    states_s = [{} for _ in SHAPES]
    with torch.no_grad():
        for step in range(12):
            grads = _grads(step, dtype)
            if step == 5:
                grads[1][0, 0] = float("nan")  # that parameter skips the step, the others do not
            for p, q, grad in zip(batched, single, grads, strict=True):
                p.grad, q.grad = grad.clone(), grad.clone()
            adamw_steps(batched, group, states_b)
            for q, state in zip(single, states_s, strict=True):
                adamw_step(q, group, state)
    for p, q, sb, ss in zip(batched, single, states_b, states_s, strict=True):
        assert torch.equal(p, q)
        for key in ss:
            assert torch.equal(sb[key], ss[key]), key
    assert float(states_b[1]["skipped_steps"]) == 1 and float(states_b[0]["skipped_steps"]) == 0
    assert float(states_b[1]["step"]) == 11 and float(states_b[0]["step"]) == 12


def test_group_of_several_adamw_parameters_matches_torch_adamw() -> None:
    ours, theirs = _params(), _params()
    opt_ours = tk.Kron([{"params": ours, "kron": False}], lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    opt_theirs = torch.optim.AdamW(theirs, lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for step in range(30):
        for p, q, grad in zip(ours, theirs, _grads(step, torch.float32), strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt_ours.step()
        opt_theirs.step()
    for p, q in zip(ours, theirs, strict=True):  # tensor step size vs torch's float: a few ulp
        torch.testing.assert_close(p, q, rtol=4 * torch.finfo(torch.float32).eps, atol=1e-7)


GROUP = {"lr": 3e-3, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``t`` (``torch.equal`` would take -0.0 for 0.0 and never NaN for NaN)."""
    return t.detach().view(BITS[t.dtype])


def _counted_step(n: int, bad: dict[int, float], dtype: torch.dtype = torch.float32) -> OpCounter:
    """What one steady :func:`adamw_steps` on ``n`` 1-D parameters dispatches; ``bad`` puts a value
    (NaN, Inf) in the gradient of the parameters it names."""
    g = torch.Generator().manual_seed(n)
    params = [torch.randn(3 + i % 5, generator=g).to(dtype).requires_grad_() for i in range(n)]
    states: list[dict] = [{} for _ in params]
    with torch.no_grad():
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=g).to(dtype)
                if step == 2 and i in bad:
                    p.grad[-1] = bad[i]
            if step < 2:
                adamw_steps(params, GROUP, states)
                continue
            with counting() as counter:
                adamw_steps(params, GROUP, states)
    return counter


@pytest.mark.parametrize(
    "bad", [{}, {1: float("nan")}, {0: float("inf"), 2: float("nan")}], ids=["finite", "nan", "inf+nan"]
)
def test_a_step_makes_no_host_read(bad: dict[int, float]) -> None:
    counter = _counted_step(4, bad)
    assert counter.host_reads == 0, counter.ops


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", [{}, {1: float("nan")}], ids=["finite", "nan"])
def test_op_count_does_not_grow_with_the_batch(bad: dict[int, float], dtype: torch.dtype) -> None:
    small, large = _counted_step(3, bad, dtype), _counted_step(12, bad, dtype)
    assert small.ops == large.ops, (small.ops, large.ops)


def test_multi_dim_parameters_add_only_views() -> None:
    """Parameters of ≥ 2 dims (``kron=False`` groups) are flattened and reshaped back: views, no kernels."""

    def ops(n: int) -> Counter[str]:
        params = [torch.randn(2, 3, requires_grad=True) for _ in range(n)]
        states: list[dict] = [{} for _ in params]
        with torch.no_grad():
            for p in params:
                p.grad = torch.randn(2, 3)
            adamw_steps(params, GROUP, states)
            with counting() as counter:
                adamw_steps(params, GROUP, states)
        return Counter({name: k for name, k in counter.ops.items() if name != "view"})

    assert ops(3) == ops(12)


# (step, parameter index) -> the value put in one element of that parameter's gradient
NON_FINITE = {
    (0, 2): float("inf"),  # the first step skipped: the step count stays 0
    (3, 0): float("nan"),
    (3, 4): float("-inf"),
    (6, 0): float("nan"),
    (6, 1): float("nan"),
    (6, 2): float("nan"),
    (6, 3): float("nan"),
    (6, 4): float("nan"),  # every parameter skips
    (9, 1): float("nan"),
}


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_mixed_finite_and_non_finite_batches_equal_per_parameter_steps_bit_for_bit(
    dtype: torch.dtype, weight_decay: float
) -> None:
    group = {**GROUP, "weight_decay": weight_decay}
    batched, single = _params(dtype), _params(dtype)
    states_b: list[dict] = [{} for _ in SHAPES]
    states_s: list[dict] = [{} for _ in SHAPES]
    with torch.no_grad():
        for step in range(12):
            grads = _grads(step, dtype)
            for (at, i), value in NON_FINITE.items():
                if at == step:
                    grads[i].view(-1)[-1] = value
            for p, q, grad in zip(batched, single, grads, strict=True):
                p.grad, q.grad = grad.clone(), grad.clone()
            if step == 4:  # a checkpoint of tritonkron < 0.2 holds a plain int count
                states_b[3]["skipped_steps"] = states_s[3]["skipped_steps"] = 2
            adamw_steps(batched, group, states_b)
            for q, state in zip(single, states_s, strict=True):
                adamw_step(q, group, state)
    for p, q, sb, ss in zip(batched, single, states_b, states_s, strict=True):
        assert torch.equal(_bits(p), _bits(q))
        assert sb.keys() == ss.keys()
        for key in ss:
            assert torch.equal(_bits(sb[key]), _bits(ss[key])), key
    skips = [sum(i == j for _, j in NON_FINITE) for i in range(len(SHAPES))]
    assert [float(s["skipped_steps"]) for s in states_b] == [k + 2 * (i == 3) for i, k in enumerate(skips)]
    assert [float(s["step"]) for s in states_b] == [12 - k for k in skips]
