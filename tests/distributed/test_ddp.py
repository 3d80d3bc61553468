"""Data-parallel ``tk.Kron`` on gloo (CPU processes) equals the single-process optimizer bit for bit."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import tritonkron as tk
from tests.distributed._harness import CONFIGS, STEPS, gradients, launch, make_model, make_opt, reference
from tritonkron.distributed.plan import assign_owners, block_cost, kept_state_ids


def _train(options: dict, resume_at: int | None = None) -> tuple[list[torch.Tensor], tk.Kron]:
    """STEPS steps on the shared synthetic gradients; with ``resume_at``, save and rebuild there.

    The save is ``torch.save`` of each rank's own state dict, read back with ``weights_only=True``.
    """
    model = make_model()
    opt = make_opt(model.parameters(), options)
    for step, grads in enumerate(gradients([p.shape for p in model.parameters()], STEPS)):
        if step == resume_at:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            model = make_model()
            model.load_state_dict(saved["model"])
            opt = make_opt(model.parameters(), options)
            opt.load_state_dict(saved["opt"])
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt


def _synthetic(rank: int, world: int) -> list[dict]:
    params = make_model().parameters()
    assert tk.Kron(params, distributed=False)._plan is None
    assert tk.Kron(make_model().parameters(), distributed=True)._plan.world_size == world
    results = []
    for options in CONFIGS:
        params, opt = _train(options)
        plan = opt._plan
        owned = sorted(
            i for i, p in enumerate(opt.param_groups[0]["params"]) if p in opt.state and p.dim() > 1
        )
        resumed, _ = _train(options, resume_at=3)
        results.append(
            {
                "params": params,
                "resumed": resumed,
                "owned": owned,
                "kept": sorted(kept_state_ids(opt)),
                "computed": plan.computed,
                "sent": plan.sent_bytes,
                "received": plan.received_bytes,
            }
        )
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_equals_single_process_and_splits_the_work(world: int, tmp_path: Path) -> None:
    per_rank = launch(_synthetic, world, tmp_path)
    params = list(make_model().parameters())
    matrices = [i for i, p in enumerate(params) if p.dim() > 1]
    vectors = [i for i, p in enumerate(params) if p.dim() < 2]
    direction_bytes = STEPS * sum(params[i].numel() for i in matrices) * 4  # float32 directions
    for c, options in enumerate(CONFIGS):
        expected = reference(options)
        results = [per_rank[r][c] for r in range(world)]
        for r, result in enumerate(results):
            for got, want in zip(result["params"], expected, strict=True):
                assert torch.equal(got, want), (options, r)
            for got, want in zip(result["resumed"], expected, strict=True):
                assert torch.equal(got, want), ("resumed", options, r)
            assert result["kept"] == sorted(result["owned"] + vectors)
        owned = [set(result["owned"]) for result in results]
        assert sorted(i for o in owned for i in o) == matrices  # disjoint and complete
        assert [result["computed"] for result in results] == [STEPS * len(o) for o in owned]
        assert sum(1 for o in owned if o) == min(world, len(matrices))  # nobody idle when work exists
        assert sum(result["sent"] for result in results) == direction_bytes
        assert all(result["received"] == direction_bytes - result["sent"] for result in results)


def _ddp_wrapper(rank: int, world: int) -> dict[str, list[torch.Tensor]]:
    """Real ``DistributedDataParallel``: each rank takes its slice of the batch, as fp32 and bf16 comm."""
    out = {}
    for name, comm_dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model = DistributedDataParallel(make_model())
        opt = make_opt(model.parameters(), {"comm_dtype": comm_dtype})
        for x, y in _batches():
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        out[name] = [p.detach().clone() for p in model.parameters()]
    return out


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(12, 12, generator=gen), torch.randn(12, 6, generator=gen)) for _ in range(STEPS)]


def test_ddp_wrapper_matches_full_batch_training(tmp_path: Path) -> None:
    """DDP averages per-rank gradients, which differs from the full-batch gradient in the last bits only."""
    per_rank = launch(_ddp_wrapper, 2, tmp_path)
    model = make_model()
    opt = make_opt(model.parameters(), {})
    for x, y in _batches():
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    for result in per_rank:
        for got, ref, other in zip(result["fp32"], model.parameters(), per_rank[0]["fp32"], strict=True):
            assert torch.equal(got, other)  # ranks agree exactly
            torch.testing.assert_close(got, ref.detach(), rtol=1e-4, atol=1e-5)
        for got, ref in zip(result["bf16"], model.parameters(), strict=True):
            torch.testing.assert_close(got, ref.detach(), rtol=0, atol=2e-2)  # updates rounded to bf16


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
        tk.Kron(make_model().parameters(), distributed=True)
    with pytest.raises(ValueError, match="distributed must be"):
        tk.Kron(make_model().parameters(), distributed="yes")
    with pytest.raises(ValueError, match="comm_dtype"):
        tk.Kron(make_model().parameters(), comm_dtype=torch.int8)


def _stackable_model() -> torch.nn.Module:
    """Matrices whose 8 × 8 blocks one process stacks into one batch (block_size 8)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 16)
    )


def _train_stackable(distributed: bool) -> tuple[list[torch.Tensor], tk.Kron]:
    model = _stackable_model()
    opt = tk.Kron(model.parameters(), lr=0.05, precondition_every=2, block_size=8, distributed=distributed)
    for grads in gradients([p.shape for p in model.parameters()], STEPS):
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], opt


def _stackable_ranks(rank: int, world: int) -> list[torch.Tensor]:
    return _train_stackable(distributed=True)[0]


def test_ddp_equals_the_stacked_single_process_step(tmp_path: Path) -> None:
    expected, opt = _train_stackable(distributed=False)
    weights = [p for p in opt.param_groups[0]["params"] if p.dim() == 2]
    storages = {opt.state[p]["blocks"][0]["factor_a"].untyped_storage().data_ptr() for p in weights}
    assert len(storages) == 1  # one process stacked every 8 × 8 block into one batch
    for got_rank in launch(_stackable_ranks, 2, tmp_path):
        for got, want in zip(got_rank, expected, strict=True):
            assert torch.equal(got, want)
