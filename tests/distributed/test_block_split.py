"""A parameter heavier than a rank's fair share is split by blocks over all ranks (DDP), losslessly.

Model: Linear(12, 40) and Linear(40, 6) with ``block_size=8``: the first weight has 10 blocks of
8 × 6 and costs two thirds of the model, so on 2 and 3 ranks it is split (chunks 5/5 and 4/4/2);
the second (5 blocks) keeps one owner. Checked: parameters bit-identical to one process for the
eigenbasis, low-rank and sketched forms; checkpoints through DCP (saved on 2 ranks, resumed on 2, on
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
from tritonkron.distributed import SPLIT, gather_state_dict, load_checkpoint, load_full_state_dict

CONFIGS = [{"divergence": "logdet"}, {"divergence": "frobenius", "rank": 2}, {"rank": 2, "sketch": True}]
SAVE_AT = 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 6))


def _opt(model: torch.nn.Module, options: dict) -> tk.Kron:
    return tk.Kron(model.parameters(), lr=0.05, precondition_every=2, block_size=8, **options)


def _steps(model: torch.nn.Module, opt: tk.Kron, first: int, last: int) -> list[torch.Tensor]:
    for grads in gradients([p.shape for p in model.parameters()], STEPS)[first:last]:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


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


@pytest.mark.parametrize(("world", "chunks"), [(2, [5, 5]), (3, [4, 4, 2])])
def test_split_parameter_equals_single_process(world: int, chunks: list[int], tmp_path: Path) -> None:
    per_rank = launch(_straight, world, tmp_path)
    for c, options in enumerate(CONFIGS):
        expected = _reference(options)
        for rank, results in enumerate(per_rank):
            result = results[c]
            assert result["split"] and result["blocks"] == chunks[rank]
            for got, want in zip(result["params"], expected, strict=True):
                assert torch.equal(got, want), (options, rank)


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
        for got, want in zip(result["per_rank_file"], expected, strict=True):
            assert torch.equal(got, want)
    for result in resumed:
        for name in ("from_dcp", "from_file"):
            for got, want in zip(result[name], expected, strict=True):
                assert torch.equal(got, want), name
    assert not dist.is_initialized()
    model = _model()  # one process, no process group: the whole split state from the DCP checkpoint
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=f"{root}/dcp", no_dist=True)
    model.load_state_dict(state["model"])
    opt = _opt(model, OPTIONS)
    load_checkpoint(opt, f"{root}/dcp")
    for got, want in zip(_steps(model, opt, SAVE_AT, STEPS), expected, strict=True):
        assert torch.equal(got, want)
