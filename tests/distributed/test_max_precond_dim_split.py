"""A parameter with a diagonal side (``max_precond_dim``) split by blocks over two ranks (DDP).

Model: Linear(12, 36) and Linear(36, 6) with ``block_size=4`` and ``max_precond_dim=20``: the first
weight (36 × 12) keeps its 36 rows whole and diagonal and splits its 12 columns into 3 blocks of 4;
its modelled cost (:func:`tritonkron.distributed.plan.layout_cost`) is over a rank's fair share, so
it is split (chunks of 2 and 1 blocks); the second (6 × 36: two 3-row blocks, the 36 side diagonal)
keeps one owner. Compared with one process: the split weight to rounding (smaller batches), the
rest bit for bit; the sharded state dict round-trips through ``torch.save``/``torch.load``.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

import tritonkron as tk
from tests.distributed._harness import STEPS, gradients, launch
from tritonkron.distributed.plan import SPLIT

OPTIONS = {"block_size": 4, "max_precond_dim": 20, "precondition_every": 2}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 36), torch.nn.Tanh(), torch.nn.Linear(36, 6))


def _steps(model: torch.nn.Module, opt: tk.Kron, first: int, last: int) -> list[torch.Tensor]:
    for grads in gradients([p.shape for p in model.parameters()], STEPS)[first:last]:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _body(rank: int, world: int) -> dict:
    model = _model()
    opt = tk.Kron(model.parameters(), lr=0.05, **OPTIONS)
    _steps(model, opt, 0, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed_model = _model()
    resumed_model.load_state_dict(model.state_dict())
    resumed = tk.Kron(resumed_model.parameters(), lr=0.05, **OPTIONS)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    weight = model[0].weight
    return {
        "params": _steps(model, opt, 3, STEPS),
        "resumed": _steps(resumed_model, resumed, 3, STEPS),
        "split": opt._plan.owner_of(weight) == SPLIT and opt._plan.owner_of(model[2].weight) != SPLIT,
        "blocks": opt.state[weight]["blocks"][0]["diag_a"].shape[0],
    }


def test_split_diagonal_parameter_equals_single_process(tmp_path: Path) -> None:
    model = _model()
    expected = _steps(model, tk.Kron(model.parameters(), lr=0.05, **OPTIONS), 0, STEPS)
    per_rank = launch(_body, 2, tmp_path)
    for rank, result in enumerate(per_rank):
        assert result["split"] and result["blocks"] == [2, 1][rank]
        torch.testing.assert_close(result["params"][0], expected[0], rtol=1e-5, atol=1e-6)
        for got, want in zip(result["params"][1:], expected[1:], strict=True):
            assert torch.equal(got, want)
        for got, want in zip(result["resumed"], result["params"], strict=True):
            assert torch.equal(got, want)
