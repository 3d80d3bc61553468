"""The precision policy reaches the step's GEMMs: bf16/TF32 trajectories differ from IEEE's by
their operand rounding only (close, not equal), on every direction form."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk


def _train(precision: str, **options: object) -> torch.Tensor:
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(16, 12))
    opt = tk.Kron([W], **{"lr": 1e-2, "precondition_every": 2, "precision": precision, **options})
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        W.grad = torch.randn(16, 12, generator=g)
        opt.step()
    return W.detach().clone()


@pytest.mark.parametrize(
    "options", [{}, {"rank": 2}, {"rank": 2, "sketch": True}], ids=["rotated", "low_rank", "sketch"]
)
@pytest.mark.parametrize(("precision", "tolerance"), [("bf16", 5e-2), ("tf32", 1e-2)])
def test_policy_changes_the_step_by_its_rounding_only(
    options: dict, precision: str, tolerance: float
) -> None:
    exact = _train("ieee", **options)
    rounded = _train(precision, **options)
    moved = (exact - _train("ieee", lr=0.0, **options)).norm()
    assert not torch.equal(exact, rounded)  # the policy is applied
    assert (exact - rounded).norm() <= tolerance * moved
