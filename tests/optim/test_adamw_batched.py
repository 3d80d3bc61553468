"""The multi-tensor AdamW path (:func:`tritonkron.step.adamw.adamw_steps`) against the per-parameter one."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk
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
