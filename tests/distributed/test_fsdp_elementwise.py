"""FSDP2 models with biases: the AdamW path steps DTensor parameters shard by shard, decisions agreed.

Also covers the collective refresh-failure check: a failure counted on the owner raises on every
rank together (the others would otherwise wait in the next collective).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor, distribute_tensor

import tritonkron as tk
from tests.distributed._harness import STEPS, gradients, launch, make_model, make_opt
from tests.distributed.test_fsdp import _sharded_model
from tritonkron.distributed.plan import gather_state_dict, load_checkpoint, load_full_state_dict
from tritonkron.math.basis import Eigenpairs
from tritonkron.step import dense as preconditioner

OPTIONS = [{"divergence": "logdet"}, {"divergence": "frobenius", "rank": 2}]
NAN_STEP, NAN_PARAM = 2, 1  # a NaN in the first row of the first bias at step 2: only rank 0's shard has it
SAVE_AT = 3


def _gradients() -> list[list[torch.Tensor]]:
    grads = gradients([p.shape for p in make_model().parameters()], STEPS)
    grads[NAN_STEP][NAN_PARAM][0] = math.nan
    return grads


def _reference(options: dict, last: int = STEPS, opt_state: dict | None = None) -> list[torch.Tensor]:
    """One process: the same gradients (NaN included); optionally resumed from a full state dict at SAVE_AT."""
    model = make_model()
    opt = make_opt(model.parameters(), options)
    first = 0
    if opt_state is not None:
        model.load_state_dict(opt_state["model"])
        opt.load_state_dict(opt_state["optim"])
        first = SAVE_AT
    for grads in _gradients()[first:last]:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _steps(model: torch.nn.Module, mesh: object, opt: tk.Kron, first: int, last: int) -> None:
    for grads in _gradients()[first:last]:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = distribute_tensor(g, mesh, p.placements, src_data_rank=None)
        opt.step()


def _full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}


def _load_full_model(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into the sharded parameters (each rank its own rows)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            rows = distribute_tensor(full[name], p.device_mesh, p.placements, src_data_rank=None)
            p.to_local().copy_(rows.to_local())


def _body(rank: int, world: int, root: str) -> list[dict]:
    """Per config: straight run; resumed from DCP; resumed from the gathered single-file state dict."""
    results = []
    for c, options in enumerate(OPTIONS):
        model, mesh = _sharded_model(world, bias=True)
        opt = make_opt(model.parameters(), options)
        _steps(model, mesh, opt, 0, SAVE_AT)
        dcp.save({"model": model.state_dict(), "optim": opt.state_dict()}, checkpoint_id=f"{root}/dcp{c}")
        full = gather_state_dict(opt, dst=0)
        model_at_save = _full(model)  # a collective: every rank calls it
        biases = [p for p in model.parameters() if p.dim() == 1]
        moments_sharded = all(
            isinstance(opt.state[p]["exp_avg"], DTensor)
            and opt.state[p]["exp_avg"].to_local().numel() < p.numel()
            for p in biases
        )
        _steps(model, mesh, opt, SAVE_AT, STEPS)
        straight = [p.full_tensor() for p in model.parameters()]

        model, mesh = _sharded_model(world, bias=True)  # resume from DCP
        state = {"model": model.state_dict()}
        dcp.load(state, checkpoint_id=f"{root}/dcp{c}")
        model.load_state_dict(state["model"])
        opt = make_opt(model.parameters(), options)
        load_checkpoint(opt, f"{root}/dcp{c}")
        _steps(model, mesh, opt, SAVE_AT, STEPS)
        from_dcp = [p.full_tensor() for p in model.parameters()]

        model, mesh = _sharded_model(world, bias=True)  # resume from the gathered single file
        box = [full]
        torch.distributed.broadcast_object_list(box, src=0)
        _load_full_model(model, model_at_save)
        opt = make_opt(model.parameters(), options)
        load_full_state_dict(opt, box[0])
        _steps(model, mesh, opt, SAVE_AT, STEPS)
        from_file = [p.full_tensor() for p in model.parameters()]
        results.append(
            {
                "straight": straight,
                "from_dcp": from_dcp,
                "from_file": from_file,
                "gathered": {"model": model_at_save, "optim": full} if rank == 0 else None,
                "moments_sharded": moments_sharded,
            }
        )
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_biases_equal_single_process(world: int, tmp_path: Path) -> None:
    per_rank = launch(_body, world, tmp_path, str(tmp_path))
    for c, options in enumerate(OPTIONS):
        expected = _reference(options)
        for rank, results in enumerate(per_rank):
            result = results[c]
            assert result["moments_sharded"]
            for name in ("straight", "from_dcp", "from_file"):
                for got, want in zip(result[name], expected, strict=True):
                    assert torch.equal(got, want), (options, rank, name)
        gathered = per_rank[0][c]["gathered"]
        resumed = _reference(options, opt_state=gathered)  # the gathered file continues in one process
        for got, want in zip(resumed, expected, strict=True):
            assert torch.equal(got, want), options
        # the NaN lay in rank 0's rows only, yet the whole bias skipped its step on every rank
        skipped_bias = gathered["optim"]["state"][NAN_PARAM]["skipped_steps"]
        assert float(skipped_bias) == 1.0


def _poisoned(X: torch.Tensor, Q: torch.Tensor, steps: int = 1, method: str = "householder") -> Eigenpairs:
    """A refresh whose QR 'failed': NaN bases and eigenvalues."""
    nan = torch.full_like(Q, math.nan)
    return Eigenpairs(nan[..., 0, :], nan)


def _refresh_failure(rank: int, world: int) -> dict:
    """Refreshes fail on rank 0 only (as if its owned block diverged); every rank must raise together."""
    if rank == 0:
        preconditioner.subspace_iteration = _poisoned
    model = make_model()
    opt = tk.Kron(model.parameters(), lr=0.01, precondition_every=1, max_refresh_failures=2)
    raised_at, message = None, ""
    for step, grads in enumerate(gradients([p.shape for p in model.parameters()], 6)):
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        try:
            opt.step()
        except RuntimeError as error:
            raised_at, message = step, str(error)
            break
    return {
        "raised_at": raised_at,
        "message": message,
        "owned": any(p in opt.state for p in model.parameters() if p.dim() == 2),
    }


def test_refresh_failure_raises_on_every_rank(tmp_path: Path) -> None:
    per_rank = launch(_refresh_failure, 2, tmp_path)
    steps = {result["raised_at"] for result in per_rank}
    assert len(steps) == 1 and None not in steps, per_rank
    messages = {result["message"] for result in per_rank}
    assert len(messages) == 1 and "2 consecutive" in messages.pop()


def _raise_policy(rank: int, world: int) -> dict:
    """nonfinite="raise" with the NaN in rank 0's rows of a sharded bias: every rank raises, nothing moves."""
    model, mesh = _sharded_model(world, bias=True)
    opt = make_opt(model.parameters(), {"nonfinite": "raise"})
    before = [p.full_tensor() for p in model.parameters()]
    try:
        _steps(model, mesh, opt, NAN_STEP, NAN_STEP + 1)
        message = ""
    except FloatingPointError as error:
        message = str(error)
    after = [p.full_tensor() for p in model.parameters()]
    return {
        "message": message,
        "unchanged": all(torch.equal(a, b) for a, b in zip(after, before, strict=True)),
    }


def test_raise_policy_is_collective_on_shards(tmp_path: Path) -> None:
    per_rank = launch(_raise_policy, 2, tmp_path)
    for result in per_rank:
        assert "non-finite gradient" in result["message"] and "shape (16,)" in result["message"]
        assert result["unchanged"]
