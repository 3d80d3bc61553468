"""Choosing ``max_precond_dim``: ``python -m perf.max_precond_dim [--ablation]``.

**Cost model** (docs/maths.md §7.1, §9.4). Per optimizer step, counting the multiply-adds of the
GEMMs only (element-wise work, AdamW parameters and the one-time initialisation left out), for the
block layouts :func:`tritonkron.math.blocking.layout_of` gives each matrix:

- a dense m × n block (rotated momentum, full rank): 3mn(m + n) + mn·min(m, n) per step, plus
  (8/3)(m³ + n³) per refresh (X Q: d³, Householder QR: (2/3)d³, Rayleigh quotients: d³), once every
  T = 10 steps;
- a block with its m side diagonal: 3mn² per step (G Q_B, Gᵀ diag(w) G, the direction) and
  (8/3)n³ per refresh (mirror: m ↔ n); both sides diagonal: none.

State bytes (float32): per block the rotated momentum mn, and per dense side d² (factor) + d²
(basis) + d (eigenvalues), per diagonal side d, plus trace, ready and failure count.

Models: GPT-2-small (:data:`perf.shapes.GPT2_SMALL`, the embedding padded to a multiple of 64 as
in :mod:`perf.gpu_e2e`: 50304 × 768, head tied) and Llama-7B's matrices (:data:`perf.shapes.LLAMA_7B`,
embeddings not in the registry), for ``max_precond_dim`` None / 4096 / 8192 / 16384.

**Quality ablation** (``--ablation``): the quick char-LM of the training benchmark
(:func:`perf.bench_lr.lm_workload`, CharGPT d128 × 2, 100 steps), ``tk.Kron`` defaults with
``max_precond_dim`` off; with the token embedding and the head in a group with
``max_precond_dim=64`` (their vocabulary side, and also their 128 side, diagonal: the char vocabulary
is smaller than d_model, so no limit makes only the vocabulary side diagonal); with
``max_precond_dim=128`` (the wide sides of the QKV and MLP matrices diagonal, the 128-sides dense:
the one-sided case); and with ``max_precond_dim=16`` (every factor diagonal). Learning rates 3e-3
and 1e-2 (``--lrs``; the Kron default's best of 3e-3 / 1e-2 / 3e-2 at 100 steps is 1e-2 in
``perf/results/lr_sensitivity_2026-12-07-100steps.md``), seeds 0 and 1, one thread (``--threads``);
reported: the final validation loss at each configuration's best seed-mean lr.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import tritonkron as tk
from perf.gpu_e2e import VOCAB_MULTIPLE
from perf.models import CharGPT
from perf.shapes import GPT2_SMALL, LLAMA_7B, ModelShapes
from perf.train_workloads import Workload
from tritonkron.math.blocking import layout_of

__all__ = ["CANDIDATES", "cost_table", "layer_cost", "main", "run_ablation"]

CANDIDATES: tuple[int | None, ...] = (None, 4096, 8192, 16384)
BLOCK_SIZE = 1024
PERIOD = 10
REFRESH = 8 / 3  # multiply-adds per d³ of one factor's refresh


def _padded(model: ModelShapes) -> ModelShapes:
    """GPT-2-small with its embedding rows padded to a multiple of :data:`VOCAB_MULTIPLE`."""
    layers = tuple(
        dataclasses.replace(layer, rows=-(-layer.rows // VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
        if layer.name == "wte"
        else layer
        for layer in model.layers
    )
    return dataclasses.replace(model, layers=layers)


def block_cost(m: int, n: int, diagonal: tuple[bool, bool]) -> tuple[float, float, int]:
    """(multiply-adds per step, refresh multiply-adds per step, state bytes) of one m × n block."""
    dense = [d for d, diag in zip((m, n), diagonal, strict=True) if not diag]
    if len(dense) == 2:
        step = 3 * m * n * (m + n) + m * n * min(m, n)
    else:
        step = 3 * m * n * sum(dense) if dense else 0
    refresh = REFRESH * sum(d**3 for d in dense) / PERIOD
    numbers = (
        m * n
        + sum(2 * d * d + d for d in dense)
        + sum(d for d, diag in zip((m, n), diagonal, strict=True) if diag)
    )
    return float(step), refresh, 4 * numbers + 9


def layer_cost(
    shape: tuple[int, int], max_precond_dim: int | None, block_size: int = BLOCK_SIZE
) -> tuple[float, float, int, int]:
    """(step MACs, refresh MACs per step, state bytes, blocks) of one matrix."""
    layout = layout_of(shape, block_size, max_precond_dim)
    step = refresh = 0.0
    state = blocks = 0
    for group in layout.groups:
        count = len(group.offsets)
        s, r, b = block_cost(*group.shape, layout.diagonal)
        step, refresh, state, blocks = (
            step + s * count,
            refresh + r * count,
            state + b * count,
            blocks + count,
        )
    return step, refresh, state, blocks


def cost_table(model: ModelShapes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per candidate and layer, one total per candidate)."""
    rows = []
    for limit in CANDIDATES:
        for layer in model.layers:
            step, refresh, state, blocks = layer_cost(layer.shape, limit)
            rows.append(
                {
                    "max_precond_dim": str(limit),
                    "layer": f"{layer.name} {layer.rows}×{layer.cols} ×{layer.count}",
                    "blocks": blocks * layer.count,
                    "step GMAC": step * layer.count / 1e9,
                    "refresh GMAC/step": refresh * layer.count / 1e9,
                    "state MiB": state * layer.count / 2**20,
                }
            )
    table = pd.DataFrame(rows)
    totals = table.groupby("max_precond_dim", sort=False)[
        ["blocks", "step GMAC", "refresh GMAC/step", "state MiB"]
    ].sum()
    totals["total GMAC/step"] = totals["step GMAC"] + totals["refresh GMAC/step"]
    base = totals.loc["None"]
    totals["vs None (GMAC)"] = totals["total GMAC/step"] / base["total GMAC/step"]
    totals["vs None (state)"] = totals["state MiB"] / base["state MiB"]
    return table, totals.reset_index()


def _groups(limit: int | None, emb_head: int | None = None) -> Callable[[nn.Module], list[dict]]:
    """Param groups: every parameter with ``max_precond_dim=limit``, the token embedding and the
    head in their own group with ``emb_head`` when it is given."""
    special = ("tok_emb.weight", "head.weight")

    def groups(model: nn.Module) -> list[dict]:
        named = list(model.named_parameters())
        if emb_head is None:
            return [{"params": [p for _, p in named], "max_precond_dim": limit}]
        return [
            {"params": [p for n, p in named if n in special], "max_precond_dim": emb_head},
            {"params": [p for n, p in named if n not in special], "max_precond_dim": limit},
        ]

    return groups


# label: (d_model, param groups). d128 is the quick char-LM; at d64 the 84-character vocabulary is
# the only dim above 64, so max_precond_dim=64 on the embedding and head is the one-sided case.
ABLATION: dict[str, tuple[int, Callable[[nn.Module], list[dict]]]] = {
    "off": (128, _groups(None)),
    "emb+head both sides diagonal (64)": (128, _groups(None, 64)),
    "wide sides diagonal (128)": (128, _groups(128)),
    "all diagonal (16)": (128, _groups(16)),
    "d64 off": (64, _groups(None)),
    "d64 emb+head vocab side diagonal (64)": (64, _groups(None, 64)),
}
LRS = (3e-3, 1e-2)


def _width(workload: Workload, d_model: int) -> Workload:
    """The workload with its CharGPT at width ``d_model`` (same vocabulary, context, depth, heads)."""
    if d_model == 128:
        return workload
    ref = workload.make_model()

    def make_model() -> nn.Module:
        return CharGPT(ref.tok_emb.num_embeddings, context=ref.context, d_model=d_model, n_layer=2, n_head=4)

    return dataclasses.replace(workload, make_model=make_model)


def run_ablation(
    seeds: tuple[int, ...] = (0, 1),
    steps: int = 100,
    lrs: tuple[float, ...] = LRS,
    configs: tuple[str, ...] = tuple(ABLATION),
    done: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Final validation loss of every (configuration, lr, seed) of the ablation (module doc);
    the runs already in ``done`` are kept, not rerun."""
    from perf.bench_lr import lm_workload
    from perf.peers import OptimizerEntry
    from perf.train import run_one

    workload, batches = lm_workload(steps)
    rows = [] if done is None else done.to_dict("records")
    have = {(r["config"], float(r["lr"]), int(r["seed"])) for r in rows}
    for seed in seeds:
        data = batches(seed)
        for label in configs:
            width, groups = ABLATION[label]
            for lr in lrs:
                if (label, lr, seed) in have:
                    continue

                def build(model: nn.Module, rate: float, groups=groups) -> torch.optim.Optimizer:
                    return tk.Kron(groups(model), lr=rate, precondition_every=PERIOD)

                entry = OptimizerEntry(label, "tritonkron", "tk.Kron", build)
                started, cpu = time.perf_counter(), time.process_time()
                record = run_one(_width(workload, width), entry, lr, seed, "max_precond_dim", data)
                rows.append(
                    {
                        "config": label,
                        "lr": lr,
                        "seed": seed,
                        "final_val_loss": record.final_val_loss,
                        "step_ms": record.step_ms_mean,
                        "wall_s": time.perf_counter() - started,
                        "cpu_s": time.process_time() - cpu,
                    }
                )
                print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def ablation_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: the best seed-mean lr, its loss (mean ± half range) and the gap to the
    best of ``off`` at the same width."""
    means = runs.groupby(["config", "lr"], sort=False)["final_val_loss"].agg(["mean", "min", "max"])
    rows = []
    for config in runs["config"].unique():
        sub = means.loc[config]
        lr = float(sub["mean"].idxmin())
        best = sub.loc[lr]
        rows.append(
            {
                "config": config,
                "best lr": lr,
                "final loss": best["mean"],
                "± (half range)": (best["max"] - best["min"]) / 2,
                "step ms": runs[(runs["config"] == config) & (runs["lr"] == lr)]["step_ms"].mean(),
            }
        )
    table = pd.DataFrame(rows).set_index("config")
    baseline = ["d64 off" if ABLATION[c][0] == 64 else "off" for c in table.index]
    table["− off (same width)"] = (
        table["final loss"].to_numpy() - table.loc[baseline, "final loss"].to_numpy()
    )
    return table.reset_index()


def fmt(table: pd.DataFrame) -> str:
    """Markdown via tabulate, 4 significant digits."""
    return table.to_markdown(index=False, floatfmt=".4g")


def main(argv: list[str] | None = None) -> None:
    """Print the cost tables, and with ``--ablation`` run and summarise the char-LM ablation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablation", action="store_true", help="also run the char-LM ablation")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lrs", default=",".join(map(str, LRS)), help="comma-separated learning rates")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--configs", default=",".join(ABLATION), help="comma-separated ablation labels")
    parser.add_argument("--csv", type=Path, default=None, help="runs CSV: runs already there are kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for model in (_padded(GPT2_SMALL), LLAMA_7B):
        layers, totals = cost_table(model)
        print(f"\n## {model.name}: per layer\n\n{fmt(layers)}\n\n## {model.name}: totals\n\n{fmt(totals)}")
    if args.ablation:
        done = pd.read_csv(args.csv) if args.csv is not None and args.csv.exists() else None
        lrs = tuple(float(x) for x in args.lrs.split(","))
        runs = run_ablation(steps=args.steps, lrs=lrs, configs=tuple(args.configs.split(",")), done=done)
        if args.csv is not None:
            runs.to_csv(args.csv, index=False)
        print(f"\n## char-LM runs\n\n{fmt(runs)}\n\n## char-LM summary\n\n{fmt(ablation_summary(runs))}")
        wall, cpu = runs["wall_s"].sum(), runs["cpu_s"].sum()
        print(f"\ntotal wall {wall:.0f} s, CPU {cpu:.0f} s, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
