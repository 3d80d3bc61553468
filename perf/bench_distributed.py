"""Preconditioner work per rank and bytes communicated per step of distributed ``tk.Kron``.

Usage (from the repository root)::

    python -m perf.bench_distributed [--model gpt2-small llama-7b] [--ranks 1 2 3 4 5 6 7 8]
                                     [--comm-dtype float32|bfloat16] [--measure 1 2 3 4 | --measure]

Two parts:

* **cost model** (any world size): :mod:`tritonkron.distributed.plan`'s assignment (the code the
  optimizer runs: a parameter heavier than a rank's fair share is split by blocks over all ranks,
  the rest go whole to owners by greedy LPT over its cost model) applied to every Kronecker matrix
  of the model's transformer blocks ("blocks"), and for GPT-2-small also with the 50257 × 768 token
  embedding ("blocks+wte"). Per world size W it reports the number of split parameters, the
  modelled preconditioner work of the busiest rank over the mean (1.00 = perfect balance), the
  speed-up of that work over one rank (total / busiest; FSDP2 parameters are never split, so its
  speed-up is with whole ownership), the optimizer state per rank (dense full-rank blocks with their
  rotated momentum), and the bytes moved per step, summed over ranks:
  DDP (every direction broadcast to the W − 1 other ranks: (W − 1) · Σ numel · sizeof(comm_dtype))
  and FSDP2 (gradient rows to the owner and update rows back: 2 (W − 1)/W · Σ numel · sizeof).
* **measured** (real gloo processes on this machine): GPT-2-small's 48 block matrices scaled by
  1/16 per dim (48 × 144, 48 × 48, 48 × 192, 192 × 48, block size 64), without and with the token
  embedding scaled alike (3141 × 48: 50 blocks, a third of the work, so split from 4 ranks on), a few DDP steps with
  ``precondition_every=2``. It reports the directions each rank computed (the plan's counter; a
  split parameter counts on every rank), the bytes the plan counted against the model's prediction
  (a split parameter's all-gather adds its padding), and the seconds each rank spent in its own
  preconditioner work (max/mean, and the busiest rank's against one rank's). Processes beyond the core count share cores, so the
  seconds are contended; the counts and bytes are exact.

The table is printed (pandas + tabulate) and written to ``perf/results/distributed.csv``.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tritonkron as tk
from perf.shapes import DEFAULT_BLOCK_SIZE, GPT2_SMALL, LLAMA_7B, ModelShapes
from tritonkron.distributed.block_split import chunk_of
from tritonkron.distributed.plan import SPLIT, DistributedPlan, assign_owners, block_cost, layout_cost
from tritonkron.math.blocking import BlockLayout

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"gpt2-small": GPT2_SMALL, "llama-7b": LLAMA_7B}
PERIOD = 10
SCALE, MEASURE_STEPS, MEASURE_PERIOD = 16, 4, 2


def _matrices(model: ModelShapes, embedding: bool, scale: int = 1) -> list[tuple[int, int]]:
    """Every Kronecker matrix (rows, cols) of the model, in model order."""
    return [
        (layer.rows // scale, layer.cols // scale)
        for layer in model.layers
        if layer.in_block or embedding
        for _ in range(layer.count)
    ]


def _block_floats(a: int, b: int) -> int:
    """Floats of one dense full-rank block's state: 2(a² + b²) + a + b + 3 plus its rotated momentum a·b."""
    return 2 * (a * a + b * b) + a + b + 3 + a * b


def _share(layout: BlockLayout, world: int, rank: int, split: bool) -> tuple[float, int]:
    """(modelled work, state floats) of one parameter on ``rank``: all of it, or its chunk when split."""
    work, floats = 0.0, 0
    for g in layout.groups:
        chunk = chunk_of(len(g.offsets), world, rank) if split else slice(0, len(g.offsets))
        count = chunk.stop - chunk.start
        work += block_cost(*g.shape, PERIOD) * count
        floats += _block_floats(*g.shape) * count
    return work, floats


def _balance(plan: DistributedPlan, params: list, layouts: list, world: int) -> tuple[list[float], list[int]]:
    """Work and state floats per rank under ``plan``'s owners (a split parameter: a chunk on each)."""
    work, held = [0.0] * world, [0] * world
    for p, lay in zip(params, layouts, strict=True):
        owner = plan.owner_of(p)
        for r in range(world) if owner == SPLIT else [owner]:
            w, f = _share(lay, world, r, owner == SPLIT)
            work[r] += w
            held[r] += f
    return work, held


def model_rows(
    name: str, embedding: bool, ranks: list[int], comm_dtype: torch.dtype
) -> list[dict[str, object]]:
    """Cost-model rows, one per world size: DDP with the optimizer's own assignment (heavy parameters
    split by blocks), and FSDP2, whose parameters keep one owner each."""
    mats = _matrices(MODELS[name], embedding)
    layouts = [BlockLayout.build(shape, DEFAULT_BLOCK_SIZE) for shape in mats]
    numel = sum(m * n for m, n in mats)
    itemsize = torch.empty((), dtype=comm_dtype).element_size()
    rows = []
    for world in ranks:
        params = [torch.empty(shape, device="meta") for shape in mats]  # stand-ins: only shapes matter
        plan = DistributedPlan(0, world)
        plan.assign(params, layouts, [PERIOD] * len(params))
        work, held = _balance(plan, params, layouts, world)
        whole = assign_owners([layout_cost(lay, PERIOD) for lay in layouts], world)
        fsdp = [
            sum(layout_cost(lay, PERIOD) for lay, o in zip(layouts, whole, strict=True) if o == r)
            for r in range(world)
        ]
        rows.append(
            {
                "source": "model",
                "model": name,
                "matrices": f"{'blocks+wte' if embedding else 'blocks'} ({len(mats)})",
                "ranks": world,
                "split": sum(plan.owner_of(p) == SPLIT for p in params),
                "max/mean work": max(work) / (sum(work) / world),
                "precond speed-up": sum(work) / max(work),
                "FSDP2 speed-up": sum(fsdp) / max(fsdp),
                "state GiB/rank (max)": max(held) * 4 / 2**30,
                "DDP MiB/step": (world - 1) * numel * itemsize / 2**20,
                "FSDP2 MiB/step": 2 * (world - 1) / world * numel * itemsize / 2**20,
            }
        )
    return rows


def _measure_worker(
    rank: int, world: int, port: int, comm_dtype: torch.dtype, out: str, embedding: bool
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(m, n)) for m, n in _matrices(GPT2_SMALL, embedding, SCALE)]
        opt = tk.Kron(
            params,
            lr=1e-3,
            precondition_every=MEASURE_PERIOD,
            block_size=DEFAULT_BLOCK_SIZE // SCALE,
            distributed=world > 1,
            comm_dtype=comm_dtype,
        )
        seconds = 0.0
        inner = opt._kron_update

        def timed(unit: object) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal seconds
            start = time.perf_counter()
            result = inner(unit)
            seconds += time.perf_counter() - start
            return result

        opt._kron_update = timed  # the instance attribute shadows the method for this benchmark only
        gen = torch.Generator().manual_seed(1)
        for _ in range(MEASURE_STEPS):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        plan = opt._plan
        counts = (
            (plan.computed, plan.sent_bytes, plan.received_bytes)
            if plan
            else (MEASURE_STEPS * len(params), 0, 0)
        )
        torch.save((*counts, seconds), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def measured_rows(worlds: list[int], comm_dtype: torch.dtype, scratch: Path) -> list[dict[str, object]]:
    """Rows from real gloo processes on the scaled GPT-2-small matrices, without and with the
    (scaled) token embedding, which is split by blocks from 4 ranks on."""
    itemsize = torch.empty((), dtype=comm_dtype).element_size()
    rows = []
    for embedding in (False, True):
        mats = _matrices(GPT2_SMALL, embedding, SCALE)
        numel = sum(m * n for m, n in mats)
        single = None
        for world in worlds:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            args = (world, port, comm_dtype, str(scratch), embedding)
            mp.spawn(_measure_worker, args=args, nprocs=world, join=True)
            per_rank = [torch.load(scratch / f"rank{r}.pt") for r in range(world)]
            computed = [r[0] for r in per_rank]
            seconds = [r[3] for r in per_rank]
            single = max(seconds) if world == 1 else single
            moved = sum(r[2] for r in per_rank) / MEASURE_STEPS
            rows.append(
                {
                    "source": "measured",
                    "model": f"gpt2-small/{SCALE}",
                    "matrices": f"{'blocks+wte' if embedding else 'blocks'} ({len(mats)})",
                    "ranks": world,
                    "directions/rank": "/".join(str(c // MEASURE_STEPS) for c in computed),
                    "max/mean seconds": max(seconds) / (sum(seconds) / world),
                    "busiest s": max(seconds),
                    "speed-up vs 1 rank": single / max(seconds) if single else float("nan"),
                    "DDP MiB/step": moved / 2**20,
                    "DDP MiB/step (model)": (world - 1) * numel * itemsize / 2**20,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: prints the table and writes ``perf/results/distributed.csv``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), nargs="+", default=sorted(MODELS))
    parser.add_argument("--ranks", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--comm-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--measure",
        type=int,
        nargs="*",
        default=[1, 2, 3, 4],
        help="world sizes run as processes (none: skip)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "distributed.csv")
    args = parser.parse_args(argv)
    if any(r < 1 for r in args.ranks + args.measure):
        parser.error("--ranks and --measure must be positive")
    comm_dtype = getattr(torch, args.comm_dtype)
    rows = []
    for name in args.model:
        for embedding in (False, True) if name == "gpt2-small" else (False,):
            rows += model_rows(name, embedding, args.ranks, comm_dtype)
    if args.measure:
        with tempfile.TemporaryDirectory() as scratch:
            rows += measured_rows(args.measure, comm_dtype, Path(scratch))
    table = pd.DataFrame(rows)
    for source, part in table.groupby("source", sort=False):
        print(f"\n{source}:\n" + part.dropna(axis=1, how="all").to_markdown(index=False, floatfmt=".3g"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
