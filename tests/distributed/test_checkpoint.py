"""Checkpoints of distributed ``tk.Kron``: torch.distributed.checkpoint across world sizes, torch.save on one rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

import tritonkron as tk
from tests.distributed._harness import STEPS, gradients, launch, make_model, make_opt, reference
from tritonkron.distributed.plan import gather_state_dict, load_checkpoint, load_full_state_dict

SAVE_AT = 3  # steps before the checkpoint; STEPS - SAVE_AT after it (a refresh on each side)
OPTIONS = [{"divergence": "logdet"}, {"divergence": "frobenius", "rank": 2}]


def _steps(model: torch.nn.Module, opt: tk.Kron, first: int, last: int) -> list[torch.Tensor]:
    for grads in gradients([p.shape for p in model.parameters()], STEPS)[first:last]:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _resume_from_dcp(path: Path, options: dict) -> tuple[list[torch.Tensor], tk.Kron]:
    model = make_model()
    model_state = model.state_dict()
    dcp.load({"model": model_state}, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    model.load_state_dict(model_state)
    opt = make_opt(model.parameters(), options)
    load_checkpoint(opt, path, key="optim")
    return _steps(model, opt, SAVE_AT, STEPS), opt


def _resume_from_file(path: Path, options: dict) -> list[torch.Tensor]:
    saved = torch.load(path, weights_only=True)
    model = make_model()
    model.load_state_dict(saved["model"])
    opt = make_opt(model.parameters(), options)
    load_full_state_dict(opt, saved["optim"])
    return _steps(model, opt, SAVE_AT, STEPS)


def _save_then_resume(rank: int, world: int, root: str) -> list[dict]:
    """Save through DCP and (gathered) torch.save after SAVE_AT steps, then resume from DCP on the same ranks."""
    results = []
    for c, options in enumerate(OPTIONS):
        model = make_model()
        opt = make_opt(model.parameters(), options)
        _steps(model, opt, 0, SAVE_AT)
        dcp.save({"model": model.state_dict(), "optim": opt.state_dict()}, checkpoint_id=f"{root}/dcp{c}")
        full = gather_state_dict(opt, dst=0)
        if rank == 0:
            torch.save({"model": model.state_dict(), "optim": full}, f"{root}/full{c}.pt")
        resumed, _ = _resume_from_dcp(Path(f"{root}/dcp{c}"), options)
        results.append({"resumed": resumed, "owned_in_file": sorted(opt.state_dict()["state"])})
    return results


def _resume_elsewhere(rank: int, world: int, root: str) -> list[dict]:
    """Resume the checkpoints written by another world size, from DCP and from the gathered file."""
    results = []
    for c, options in enumerate(OPTIONS):
        from_dcp, opt = _resume_from_dcp(Path(f"{root}/dcp{c}"), options)
        from_file = _resume_from_file(Path(f"{root}/full{c}.pt"), options)
        results.append({"dcp": from_dcp, "file": from_file, "held": sorted(opt.state_dict()["state"])})
    return results


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_checkpoints_resume_on_the_same_and_other_world_sizes(tmp_path: Path) -> None:
    saved = launch(_save_then_resume, 2, tmp_path / "out2", str(tmp_path))
    resumed = launch(_resume_elsewhere, 3, tmp_path / "out3", str(tmp_path))
    params = list(make_model().parameters())
    matrices = {i for i, p in enumerate(params) if p.dim() > 1}
    for c, options in enumerate(OPTIONS):
        expected = reference(options)
        for result in saved:  # DCP, same world size
            for got, want in zip(result[c]["resumed"], expected, strict=True):
                assert torch.equal(got, want), options
        assert sorted({i for r in saved for i in r[c]["owned_in_file"]}) == list(range(len(params)))
        for result in resumed:  # 2 → 3 ranks, from DCP and from the gathered file
            for key in ("dcp", "file"):
                for got, want in zip(result[c][key], expected, strict=True):
                    assert torch.equal(got, want), (key, options)
        held = [set(r[c]["held"]) & matrices for r in resumed]
        assert sorted(i for h in held for i in h) == sorted(matrices)  # re-sharded: each matrix on one rank
        # 2 ranks → 1 process: DCP and the gathered file both load without a process group
        single, opt = _resume_from_dcp(tmp_path / f"dcp{c}", options)
        assert opt._plan is None and set(opt.state_dict()["state"]) == set(range(len(params)))
        for got, want in zip(single, expected, strict=True):
            assert torch.equal(got, want), ("single", options)
        for got, want in zip(_resume_from_file(tmp_path / f"full{c}.pt", options), expected, strict=True):
            assert torch.equal(got, want), ("single file", options)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_load_checkpoint_names_a_missing_key(tmp_path: Path) -> None:
    model = make_model()
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp_path), no_dist=True)
    with pytest.raises(ValueError, match="key='optim'"):
        load_checkpoint(make_opt(model.parameters(), {}), tmp_path)
