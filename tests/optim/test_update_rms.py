"""``max_update_rms``: the direction of a parameter is scaled so that its RMS is at most c."""

from __future__ import annotations

import re

import pytest
import torch

import tritonkron as tk
from tritonkron.step.unit import limit_rms


def _rms(x: torch.Tensor) -> float:
    return float(x.square().mean().sqrt())


def test_limit_rms_caps_and_leaves_small_directions_alone() -> None:
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        U = scale * torch.randn(6, 9, generator=g, dtype=torch.float64)
        capped = limit_rms(U, 0.5)
        assert _rms(capped) <= 0.5 * (1 + 1e-12)
        if _rms(U) <= 0.5:
            assert torch.equal(capped, U)
        else:  # same direction, RMS exactly c
            assert abs(_rms(capped) - 0.5) < 1e-12
            torch.testing.assert_close(capped / _rms(capped), U / _rms(U))
    assert torch.equal(limit_rms(torch.zeros(3, 3), 1.0), torch.zeros(3, 3))  # a skipped step stays zero


def _run(max_update_rms: float | None, spike: float) -> tuple[list[torch.Tensor], list[float]]:
    """Quiet gradients in a few directions, then one large gradient in new directions."""
    torch.manual_seed(0)
    W = torch.zeros(8, 6, dtype=torch.float64, requires_grad=True)
    opt = tk.Kron([W], lr=1.0, precondition_every=3, max_update_rms=max_update_rms, bound=None)
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(8, 2, generator=g, dtype=torch.float64)
    history, rms = [], []
    for step in range(8):
        grad = basis @ torch.randn(2, 6, generator=g, dtype=torch.float64) * 1e-3
        if step == 6:
            grad = grad + spike * torch.randn(8, 6, generator=g, dtype=torch.float64)
        before = W.detach().clone()
        W.grad = grad
        opt.step()
        rms.append(_rms(W.detach() - before))  # lr = 1, no weight decay: the applied direction
        history.append(W.detach().clone())
    return history, rms


def test_cap_bounds_the_step_after_a_gradient_in_new_directions() -> None:
    _, free = _run(None, spike=1.0)
    _, capped = _run(1.0, spike=1.0)
    assert max(free) > 10.0  # the unbounded direction that the cap is for
    assert max(capped) <= 1.0 + 1e-9


def test_a_cap_never_reached_changes_nothing() -> None:
    free, rms = _run(None, spike=0.0)
    capped, _ = _run(max(rms) * 2, spike=0.0)
    for a, b in zip(free, capped, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("value", [0.0, -1.0, "big", float("nan")])
def test_bad_values_name_the_option(value: object) -> None:
    with pytest.raises(ValueError, match=re.escape("max_update_rms")):
        tk.Kron([torch.zeros(3, 3, requires_grad=True)], max_update_rms=value)  # type: ignore[arg-type]
