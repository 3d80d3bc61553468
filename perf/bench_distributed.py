"""Preconditioner work per rank and bytes communicated per step of data-parallel ``tk.Kron``.

Usage (from the repository root)::

    python -m perf.bench_distributed [--model gpt2-small|llama-7b] [--ranks 1 2 4 8] [--comm-dtype float32]

For 1–8 ranks this applies :mod:`tritonkron.distributed`'s owner assignment (greedy LPT over its
cost model, the same code the optimizer runs) to every Kronecker matrix of the model's transformer
blocks (the embedding takes its own path: see the README) and reports

* the modelled preconditioner work of the busiest rank against the mean (1.00 = perfect balance)
  and the speed-up of the preconditioner work over one rank (total / busiest);
* the parameters' directions broadcast per step: Σ numel · sizeof(comm_dtype), sent once in total
  (each owner sends its share), i.e. the same bytes as one all-gather of the updates;
* the optimizer state held per rank (factors, bases, eigenvalues, momentum of the owned matrices).

Distributed Shampoo (``/work/shared/ANCHORS.md``) also gives each block one owner and all-gathers
the search directions, and reports at most ~10 % per-step overhead over Adam-like methods under
DDP; the same structure here means per-rank preconditioner work falls ~1/world_size while the
communicated bytes stay one copy of the parameters per step. This is a cost model, not a timing:
no multi-process timing is taken on a 2-core machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from perf.shapes import DEFAULT_BLOCK_SIZE, GPT2_SMALL, LLAMA_7B
from tritonkron.distributed import assign_owners, block_cost
from tritonkron.reference.blocking import BlockLayout

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"gpt2-small": GPT2_SMALL, "llama-7b": LLAMA_7B}
PERIOD = 10


def _matrices(model_name: str) -> list[tuple[str, int, int]]:
    model = MODELS[model_name]
    return [
        (layer.name, layer.rows, layer.cols)
        for layer in model.transformer_block()
        for _ in range(layer.count)
    ]


def _state_floats(layout: BlockLayout) -> int:
    """Floats of dense Kron state: per block 2(m² + n²) + m + n + 2, plus the m × n momentum."""
    m, n = layout.matrix
    per_block = sum(
        (2 * (a * a + b * b) + a + b + 2) * len(g.offsets) for g in layout.groups for a, b in [g.shape]
    )
    return per_block + m * n


def run(model_name: str, ranks: list[int], comm_dtype: torch.dtype) -> pd.DataFrame:
    """One row per world size."""
    mats = _matrices(model_name)
    layouts = [BlockLayout.build((m, n), DEFAULT_BLOCK_SIZE) for _, m, n in mats]
    costs = [sum(block_cost(*g.shape, PERIOD) * len(g.offsets) for g in lay.groups) for lay in layouts]
    state = [_state_floats(lay) for lay in layouts]
    numel = sum(m * n for _, m, n in mats)
    itemsize = torch.empty((), dtype=comm_dtype).element_size()
    rows = []
    for world in ranks:
        owners = assign_owners(costs, world)
        work = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(world)]
        held = [sum(s for s, o in zip(state, owners, strict=True) if o == r) for r in range(world)]
        rows.append(
            {
                "model": model_name,
                "ranks": world,
                "matrices": len(mats),
                "max/mean work": max(work) / (sum(work) / world),
                "precond speed-up": sum(work) / max(work),
                "broadcast MB/step": numel * itemsize / 2**20,
                "state GB/rank (max)": max(held) * 4 / 2**30,
                "state GB/rank (1 rank)": sum(state) * 4 / 2**30,
            }
        )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: prints the table and writes ``perf/results/distributed.csv``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), nargs="+", default=sorted(MODELS))
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--comm-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--out", type=Path, default=RESULTS / "distributed.csv")
    args = parser.parse_args(argv)
    if any(r < 1 for r in args.ranks):
        parser.error("--ranks must be positive")
    table = pd.concat([run(m, args.ranks, getattr(torch, args.comm_dtype)) for m in args.model])
    print(table.to_markdown(index=False, floatfmt=".3g"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
