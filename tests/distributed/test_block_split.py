"""A parameter heavier than a rank's fair share is split by blocks over all ranks (DDP), losslessly.

Model: Linear(12, 36) and Linear(36, 6) with ``block_size=8``: the first weight has block groups of
2 (8 × 6) and 8 (7 × 6) blocks and costs two thirds of the model, so on 2 and 3 ranks it is split
(the first group's chunks 1/1 and 1/1/0: a rank may hold no block of a group); the second keeps
one owner.

The split weight's blocks are computed in smaller batches than in one process, and batched CPU
kernels may round differently for another batch size, so it is compared to one process at 1e-5;
every other parameter, and all ranks with each other, bit for bit. Checked: parameters equal to one process for the
eigenbasis, low-rank and sketched forms (see below for the tolerance); checkpoints through DCP (saved on 2 ranks, resumed on 2, on
3 and in one process), through a gathered file and through per-rank ``torch.save`` files.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

import tritonkron as tk
from tests.distributed._harness import STEPS, gradients, launch
from tritonkron.distributed.plan import SPLIT, gather_state_dict, load_checkpoint, load_full_state_dict

CONFIGS = [{"divergence": "logdet"}, {"divergence": "frobenius", "rank": 2}, {"rank": 2, "sketch": True}]
SAVE_AT = 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 36), torch.nn.Tanh(), torch.nn.Linear(36, 6))


def _opt(model: torch.nn.Module, options: dict) -> tk.Kron:
    return tk.Kron(model.parameters(), lr=0.05, precondition_every=2, block_size=8, **options)


def _steps(model: torch.nn.Module, opt: tk.Kron, first: int, last: int) -> list[torch.Tensor]:
    for grads in gradients([p.shape for p in model.parameters()], STEPS)[first:last]:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _assert_matches(got: list[torch.Tensor], want: list[torch.Tensor], what: object = None) -> None:
    """Split weight (index 0) to rounding, the rest bit for bit."""
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6, msg=str(what))
    for g, w in zip(got[1:], want[1:], strict=True):
        assert torch.equal(g, w), what


def _reference(options: dict) -> list[torch.Tensor]:
    model = _model()
    return _steps(model, _opt(model, options), 0, STEPS)


def _straight(rank: int, world: int) -> list[dict]:
    results = []
    for options in CONFIGS:
        model = _model()
        opt = _opt(model, options)
        params = _steps(model, opt, 0, STEPS)
        weight = model[0].weight
        results.append(
            {
                "params": params,
                "split": opt._plan.owner_of(weight) == SPLIT and opt._plan.owner_of(model[2].weight) != SPLIT,
                "blocks": opt.state[weight]["blocks"][0]["basis_a"].shape[0],
            }
        )
    return results


@pytest.mark.parametrize(("world", "chunks"), [(2, [1, 1]), (3, [1, 1, 0])])
def test_split_parameter_equals_single_process(world: int, chunks: list[int], tmp_path: Path) -> None:
    per_rank = launch(_straight, world, tmp_path)
    for c, options in enumerate(CONFIGS):
        expected = _reference(options)
        for rank, results in enumerate(per_rank):
            result = results[c]
            assert result["split"] and result["blocks"] == chunks[rank]
            _assert_matches(result["params"], expected, (options, rank))
            for got, other in zip(result["params"], per_rank[0][c]["params"], strict=True):
                assert torch.equal(got, other)  # every rank applies the same gathered update


OPTIONS = {"divergence": "logdet"}


def _save(rank: int, world: int, root: str) -> dict:
    model = _model()
    opt = _opt(model, OPTIONS)
    _steps(model, opt, 0, SAVE_AT)
    dcp.save({"model": model.state_dict(), "optim": opt.state_dict()}, checkpoint_id=f"{root}/dcp")
    full = gather_state_dict(opt, dst=0)
    if rank == 0:
        torch.save({"model": model.state_dict(), "optim": full}, f"{root}/full.pt")
    buffer = io.BytesIO()  # a per-rank file, read back with weights_only=True
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model = _model()
    model.load_state_dict(saved["model"])
    opt = _opt(model, OPTIONS)
    opt.load_state_dict(saved["optim"])
    return {"per_rank_file": _steps(model, opt, SAVE_AT, STEPS)}


def _resume(rank: int, world: int, root: str) -> dict:
    model = _model()
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=f"{root}/dcp")
    model.load_state_dict(state["model"])
    opt = _opt(model, OPTIONS)
    load_checkpoint(opt, f"{root}/dcp")
    from_dcp = _steps(model, opt, SAVE_AT, STEPS)
    saved = torch.load(f"{root}/full.pt", weights_only=True)
    model = _model()
    model.load_state_dict(saved["model"])
    opt = _opt(model, OPTIONS)
    load_full_state_dict(opt, saved["optim"])
    return {"from_dcp": from_dcp, "from_file": _steps(model, opt, SAVE_AT, STEPS)}


def test_split_state_checkpoints_reshard(tmp_path: Path) -> None:
    root = str(tmp_path)
    expected = _reference(OPTIONS)
    saved = launch(_save, 2, tmp_path / "save", root)
    resumed = launch(_resume, 2, tmp_path / "two", root) + launch(_resume, 3, tmp_path / "three", root)
    for result in saved:
        _assert_matches(result["per_rank_file"], expected, "per-rank file")
    for result in resumed:
        for name in ("from_dcp", "from_file"):
            _assert_matches(result[name], expected, name)
    assert not dist.is_initialized()
    model = _model()  # one process, no process group: the whole split state from the DCP checkpoint
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=f"{root}/dcp", no_dist=True)
    model.load_state_dict(state["model"])
    opt = _opt(model, OPTIONS)
    load_checkpoint(opt, f"{root}/dcp")
    _assert_matches(_steps(model, opt, SAVE_AT, STEPS), expected, "one process")
