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

import pandas as pd
import torch
from torch import nn

import tritonkron as tk
from perf.gpu_e2e import VOCAB_MULTIPLE
from perf.shapes import GPT2_SMALL, LLAMA_7B, ModelShapes
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


ABLATION: dict[str, Callable[[nn.Module], list[dict]]] = {
    "off": lambda model: [{"params": list(model.parameters())}],
    "emb+head diagonal (64)": lambda model: [
        {"params": [model.tok_emb.weight, model.head.weight], "max_precond_dim": 64},
        {
            "params": [
                p for name, p in model.named_parameters() if name not in ("tok_emb.weight", "head.weight")
            ]
        },
    ],
    "wide sides diagonal (128)": lambda model: [{"params": list(model.parameters()), "max_precond_dim": 128}],
    "all diagonal (16)": lambda model: [{"params": list(model.parameters()), "max_precond_dim": 16}],
}
LRS = (3e-3, 1e-2)


def run_ablation(
    seeds: tuple[int, ...] = (0, 1), steps: int = 100, lrs: tuple[float, ...] = LRS
) -> pd.DataFrame:
    """Final validation loss of every (configuration, lr, seed) of the ablation (module doc)."""
    from perf.bench_lr import lm_workload
    from perf.peers import OptimizerEntry
    from perf.train import run_one

    workload, batches = lm_workload(steps)
    rows = []
    for seed in seeds:
        data = batches(seed)
        for label, groups in ABLATION.items():
            for lr in lrs:

                def build(model: nn.Module, rate: float, groups=groups) -> torch.optim.Optimizer:
                    return tk.Kron(groups(model), lr=rate, precondition_every=PERIOD)

                entry = OptimizerEntry(label, "tritonkron", "tk.Kron", build)
                started, cpu = time.perf_counter(), time.process_time()
                record = run_one(workload, entry, lr, seed, "max_precond_dim", data)
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
    """Per configuration: the best seed-mean lr, its loss (mean ± half range) and the gap to off."""
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
    table = pd.DataFrame(rows)
    table["− off"] = table["final loss"] - float(table.loc[table["config"] == "off", "final loss"].iloc[0])
    return table


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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for model in (_padded(GPT2_SMALL), LLAMA_7B):
        layers, totals = cost_table(model)
        print(f"\n## {model.name}: per layer\n\n{fmt(layers)}\n\n## {model.name}: totals\n\n{fmt(totals)}")
    if args.ablation:
        runs = run_ablation(steps=args.steps, lrs=tuple(float(x) for x in args.lrs.split(",")))
        print(f"\n## char-LM runs\n\n{fmt(runs)}\n\n## char-LM summary\n\n{fmt(ablation_summary(runs))}")
        wall, cpu = runs["wall_s"].sum(), runs["cpu_s"].sum()
        print(f"\ntotal wall {wall:.0f} s, CPU {cpu:.0f} s, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
