"""FSDP2 (``fully_shard``, DTensor parameters) with distributed ``tk.Kron`` on gloo: lossless, parameters stay sharded.

The models here have no biases, so every parameter takes the Kronecker path; sharded biases (the
AdamW path) are covered by tests/distributed/test_fsdp_elementwise.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

import tritonkron as tk
from tests.distributed._harness import CONFIGS, STEPS, gradients, launch, make_model, make_opt, reference
from tritonkron.distributed.plan import load_checkpoint

SAVE_AT = 3
RESUMED = {"divergence": "von_neumann", "rank": 2}


def _sharded_model(world: int, bias: bool = False) -> tuple[torch.nn.Module, object]:
    """:func:`make_model` with every Linear and the whole model under ``fully_shard`` on a 1-D mesh."""
    mesh = init_device_mesh("cpu", (world,))
    model = make_model(bias=bias)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, mesh


def _steps(model: torch.nn.Module, mesh: object, opt: tk.Kron, first: int, last: int) -> None:
    params = list(model.parameters())
    for grads in gradients([p.shape for p in params], STEPS)[first:last]:
        for p, g in zip(params, grads, strict=True):
            # this rank's rows of the same full gradient on every rank (no communication)
            p.grad = distribute_tensor(g, mesh, p.placements, src_data_rank=None)
        opt.step()


def _resumed(world: int, options: dict, root: str) -> list[torch.Tensor]:
    """Save model and optimizer through DCP after SAVE_AT steps, rebuild both, load, finish."""
    model, mesh = _sharded_model(world)
    opt = make_opt(model.parameters(), options)
    _steps(model, mesh, opt, 0, SAVE_AT)
    dcp.save({"model": model.state_dict(), "optim": opt.state_dict()}, checkpoint_id=root)
    model, mesh = _sharded_model(world)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=root)
    model.load_state_dict(state["model"])
    opt = make_opt(model.parameters(), options)
    load_checkpoint(opt, root)
    _steps(model, mesh, opt, SAVE_AT, STEPS)
    return [p.full_tensor() for p in model.parameters()]


def _synthetic(rank: int, world: int, root: str) -> dict:
    """Every config on the shared synthetic gradients, a DCP save/resume, and one real training run."""
    results = []
    for options in CONFIGS:
        model, mesh = _sharded_model(world)
        opt = make_opt(model.parameters(), options)
        params = list(model.parameters())
        _steps(model, mesh, opt, 0, STEPS)
        results.append(
            {
                "params": [p.full_tensor() for p in params],
                "sharded": all(isinstance(p, DTensor) and p.to_local().shape[0] < p.shape[0] for p in params),
                "owned": sorted(i for i, p in enumerate(params) if p in opt.state),
                "computed": opt._plan.computed,
                "sent": opt._plan.sent_bytes,
                "received": opt._plan.received_bytes,
                "collectives": opt._plan.collectives,
            }
        )
    model, _ = _sharded_model(world)
    opt = make_opt(model.parameters(), {})
    for x, y in _batches():
        torch.nn.functional.mse_loss(model(x.chunk(world)[rank]), y.chunk(world)[rank]).backward()
        opt.step()
        opt.zero_grad()
    trained = [p.full_tensor() for p in model.parameters()]
    return {"configs": results, "trained": trained, "resumed": _resumed(world, RESUMED, root)}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(12, 12, generator=gen), torch.randn(12, 6, generator=gen)) for _ in range(STEPS)]


@pytest.mark.parametrize("world", [2, 3])
def test_fsdp2_equals_single_process(world: int, tmp_path: Path) -> None:
    per_rank = launch(_synthetic, world, tmp_path, str(tmp_path / "dcp"))
    shapes = [p.shape for p in make_model(bias=False).parameters()]
    # per step and matrix: gradient rows to the owner, update rows (+ the ok flag) back, 4 bytes each
    rows = [-(-s[0] // world) for s in shapes]
    moved = STEPS * (world - 1) * sum(4 * (2 * r * s[1] + 1) for r, s in zip(rows, shapes, strict=True))
    for c, options in enumerate(CONFIGS):
        expected = reference(options, bias=False)
        results = [per_rank[r]["configs"][c] for r in range(world)]
        for r, result in enumerate(results):
            assert result["sharded"]
            for got, want in zip(result["params"], expected, strict=True):
                assert torch.equal(got, want), (options, r)
        owned = [set(result["owned"]) for result in results]
        assert sorted(i for o in owned for i in o) == list(range(len(shapes)))  # disjoint and complete
        assert [result["computed"] for result in results] == [STEPS * len(o) for o in owned]
        assert sum(result["sent"] for result in results) == moved
        assert sum(result["received"] for result in results) == moved
        # coalesced: one all-to-all for the gradients and one for the updates per step, not per parameter
        assert [result["collectives"] for result in results] == [2 * STEPS] * world
    for result in per_rank:
        for got, want in zip(result["resumed"], reference(RESUMED, bias=False), strict=True):
            assert torch.equal(got, want)
    model = make_model(bias=False)
    opt = make_opt(model.parameters(), {})
    for x, y in _batches():
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    for result in per_rank:  # FSDP averages per-rank gradients: equal to the full batch up to rounding
        for got, ref, other in zip(
            result["trained"], model.parameters(), per_rank[0]["trained"], strict=True
        ):
            assert torch.equal(got, other)
            torch.testing.assert_close(got, ref.detach(), rtol=1e-4, atol=1e-5)
