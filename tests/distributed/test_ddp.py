"""Data-parallel ``tk.Kron`` on gloo (CPU processes) equals the single-process optimizer bit for bit."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tritonkron as tk
from tritonkron.distributed import assign_owners, block_cost

STEPS = 5  # with precondition_every=2: two basis refreshes
CONFIGS = [{"divergence": d, "rank": r} for d in ("logdet", "von_neumann", "frobenius") for r in (None, 2)]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10), torch.nn.Linear(10, 6)
    )


def _train(options: dict, resume_at: int | None = None) -> tuple[list[torch.Tensor], tk.Kron]:
    """STEPS steps with the same synthetic gradients on every process (as after DDP's all-reduce).

    With ``resume_at``, the model and optimizer are saved after that many steps (``torch.save`` of
    each rank's own state dict, ``torch.load(weights_only=True)``), rebuilt and resumed.
    """
    model = _model()
    opt = tk.Kron(model.parameters(), lr=0.05, precondition_every=2, weight_decay=0.01, **options)
    gen = torch.Generator().manual_seed(7)
    for step in range(STEPS):
        if step == resume_at:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer)
            model = _model()
            model.load_state_dict(saved["model"])
            opt = tk.Kron(model.parameters(), lr=0.05, precondition_every=2, weight_decay=0.01, **options)
            opt.load_state_dict(saved["opt"])
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = []
        for options in CONFIGS:
            params, opt = _train(options)
            owned = sorted(
                i for i, p in enumerate(opt.param_groups[0]["params"]) if p in opt.state and p.dim() > 1
            )
            resumed, _ = _train(options, resume_at=3)
            results.append(
                {"params": params, "resumed": resumed, "owned": owned, "computed": opt._plan.computed}
            )
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_equals_single_process_and_splits_the_work(world: int, tmp_path: Path) -> None:
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    matrices = [i for i, p in enumerate(_model().parameters()) if p.dim() > 1]
    for c, options in enumerate(CONFIGS):
        expected, _ = _train(options)
        for r in range(world):
            for got, want in zip(per_rank[r][c]["params"], expected, strict=True):
                assert torch.equal(got, want), (options, r)
            for got, want in zip(per_rank[r][c]["resumed"], expected, strict=True):
                assert torch.equal(got, want), ("resumed", options, r)
        owned = [set(per_rank[r][c]["owned"]) for r in range(world)]
        assert sorted(i for o in owned for i in o) == matrices  # disjoint and complete
        assert [per_rank[r][c]["computed"] for r in range(world)] == [STEPS * len(o) for o in owned]
        assert sum(1 for o in owned if o) == min(world, len(matrices))  # nobody idle when work exists


def test_lpt_balances_and_is_deterministic() -> None:
    costs = [block_cost(m, n, 10) for m, n in [(768, 768), (768, 768), (768, 256), (64, 64), (256, 768)]]
    owners = assign_owners(costs, 2)
    assert owners == assign_owners(costs, 2)
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(2)]
    assert max(loads) <= 4 / 3 * (sum(costs) / 2)  # LPT's bound against the perfect split
    assert assign_owners([1.0, 1.0, 1.0], 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="world_size"):
        assign_owners([1.0], 0)


def test_distributed_true_without_a_process_group_fails_clearly() -> None:
    with pytest.raises(ValueError, match="distributed=True"):
        tk.Kron(_model().parameters(), distributed=True)
    with pytest.raises(ValueError, match="comm_dtype"):
        tk.Kron(_model().parameters(), comm_dtype=torch.int8)
