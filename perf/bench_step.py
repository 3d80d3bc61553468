"""Optimizer step time against layer size, on GPT-2-small and Llama-7B weight shapes (CPU-sized).

Usage (from the repository root)::

    python -m perf step [--full] [--optimizers LABEL ...] [--steps 20] [--device auto|cpu|cuda]

Each case is one fp32 weight matrix of a real layer shape from :mod:`perf.shapes` (never literals):
the four GPT-2-small block matrices whole (768 × 768 up to 768 × 3072), one block of GPT-2's qkv
as ``tk.Kron(block_size=64 | 128 | 256)`` splits it (64² … 256²), one 1024-block of
Llama-7B's attention matrix (``tk.Kron`` splits 4096 × 4096 into 16 such blocks), and the ``tiny``
model's shapes for the small end; ``--full`` adds Llama-7B's whole 4096 × 4096 attention matrix.
Every optimizer of :func:`perf.peers.build_registry` (the tritonkron ablations excepted) steps the
matrix with fixed synthetic N(0, 1) gradients: ``warmup`` steps first (11 by default: state
allocation, initial eigendecompositions, any lazy import, and past pytorch-optimizer Shampoo's
start-up phase of 10 steps), then ``steps`` timed steps. With refresh period 10 a window of
20 steps holds two basis refreshes, so the **mean** is the amortised cost per step; p50/p20/p80 show
the typical (refresh-free) step. FLOP models are not given: the peers' internals differ too much for
one formula to be fair, and on CPU the absolute time is what a user pays. The matrix, its gradients
and the optimizer state live on ``--device``; on CUDA each timed step is bracketed by
``torch.cuda.synchronize()`` (:func:`perf.device.clock`).

Rows are appended to ``perf/results/step.csv`` (columns: op, provider, shape name, m, n,
B, dtype, metric, unit, p50, p20, p80, plus mean, device, versions, commit, timestamp).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from perf.device import clock
from perf.peers import OptimizerEntry
from perf.shapes import GPT2_SMALL, LLAMA_7B, TINY, LayerShape, ModelShapes, block_shapes

__all__ = ["StepCase", "bench_cases", "plot_step", "run_step_bench", "step_section"]

_SMALL_BLOCK_SIZES = (64, 128, 256)
"""Block sizes whose single GPT-2 qkv block fills the gap between the tiny and the whole matrices."""


@dataclass(frozen=True)
class StepCase:
    """One weight matrix to step: ``name`` (``"gpt2-small/attn_qkv"``), ``m`` × ``n``."""

    name: str
    m: int
    n: int


def _whole(model: ModelShapes, layer: LayerShape) -> StepCase:
    return StepCase(f"{model.name}/{layer.name}", layer.rows, layer.cols)


def bench_cases(full: bool = False) -> list[StepCase]:
    """The matrices of the benchmark, smallest first (see the module docstring)."""
    cases = [_whole(TINY, layer) for layer in TINY.transformer_block()[:2]]
    qkv = GPT2_SMALL.layer("attn_qkv")
    for block_size in _SMALL_BLOCK_SIZES:  # one block of GPT-2's qkv as tk.Kron(block_size=...) cuts it
        block = block_shapes(GPT2_SMALL, qkv, block_size)[0]
        cases.append(StepCase(f"{block.name} block (block_size={block_size})", block.m, block.n))
    cases += [_whole(GPT2_SMALL, layer) for layer in GPT2_SMALL.transformer_block()]
    qkvo = LLAMA_7B.layer("attn_qkvo")
    block = block_shapes(LLAMA_7B, qkvo)[0]
    cases.append(StepCase(f"{block.name} (one of {block.B} blocks)", block.m, block.n))
    if full:
        cases.append(_whole(LLAMA_7B, qkvo))
    return sorted(cases, key=lambda c: c.m * c.n)


class _OneMatrix(nn.Module):
    """A module holding a single weight, so the peers' model-based builders apply unchanged."""

    def __init__(self, m: int, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(m, n) * 0.02)


def time_steps(
    entry: OptimizerEntry,
    case: StepCase,
    warmup: int,
    steps: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Seconds of each timed ``opt.step()`` of ``entry`` on one ``case`` matrix on ``device``."""
    assert entry.build is not None, entry.skip
    g = torch.Generator().manual_seed(seed)
    model = _OneMatrix(case.m, case.n).to(device)
    grads = [torch.randn(case.m, case.n, generator=g).to(device) for _ in range(min(4, warmup + steps))]
    opt = entry.build(model, 1e-3)
    times = []
    for i in range(warmup + steps):
        model.weight.grad = grads[i % len(grads)].clone()
        t0 = clock(device)
        opt.step()
        elapsed = clock(device) - t0
        if i >= warmup:
            times.append(elapsed)
    return times


def _q(times: Sequence[float], q: float) -> float:
    ordered = sorted(times)
    return 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_step_bench(
    entries: Sequence[OptimizerEntry],
    cases: Sequence[StepCase],
    warmup: int = 11,
    steps: int = 20,
    max_seconds_per_case: float = 60.0,
    progress: Callable[[str], None] | None = None,
    device: torch.device | str = "cpu",
) -> list[dict[str, object]]:
    """Time every runnable entry on every case, on ``device``.

    An entry whose warm-up plus timed steps on a case took longer than ``max_seconds_per_case`` is
    not run on larger cases (a row with ``metric="skipped"`` records why).

    Returns:
        One row per (entry, case): label, case, m, n, params, p50/p20/p80 and mean in ms.
    """
    rows: list[dict[str, object]] = []
    too_slow: dict[str, str] = {}
    for case in cases:
        for entry in entries:
            if entry.build is None:
                continue
            base = {"provider": entry.label, "shape": case.name, "m": case.m, "n": case.n, "B": 1}
            base |= {"params": case.m * case.n, "warmup": warmup, "timed_steps": steps}
            if entry.label in too_slow:
                rows.append({**base, "metric": "skipped", "note": too_slow[entry.label]})
                continue
            started = time.perf_counter()
            times = time_steps(entry, case, warmup, steps, device=device)
            total = time.perf_counter() - started
            row = {
                **base,
                "metric": "time",
                "unit": "ms",
                "p50": _q(times, 0.5),
                "p20": _q(times, 0.2),
                "p80": _q(times, 0.8),
                "mean": 1e3 * statistics.fmean(times),
                "note": "",
            }
            rows.append(row)
            if total > max_seconds_per_case:
                too_slow[entry.label] = (
                    f"not run: {total:.0f} s on {case.name} exceeded {max_seconds_per_case:.0f} s"
                )
            if progress is not None:
                progress(
                    f"[step] {case.name:<40} {case.m}x{case.n:<6} {entry.label:<28} "
                    f"p50 {row['p50']:9.2f} ms  mean {row['mean']:9.2f} ms"
                )
    return [r for r in rows if not (r["metric"] == "time" and math.isnan(float(r["p50"])))]


def plot_step(step: pd.DataFrame, out: Path) -> Path:
    """Amortised step time against matrix size, one line per optimizer (log-log).

    The PNG's ``Description`` text chunk lists the plotted optimizers as JSON.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=90)
    for provider, group in step.groupby("provider", sort=False):
        g = group.sort_values("params")
        ax.plot(g["params"], g["mean"], "-o" if provider.startswith("Kron") else "--s", ms=3, label=provider)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("matrix parameters (m × n)")
    ax.set_ylabel("ms per step (mean, incl. refreshes)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "report_step.png"
    labels = list(dict.fromkeys(step["provider"]))
    fig.savefig(path, metadata={"Title": "step time against layer size", "Description": json.dumps(labels)})
    plt.close(fig)
    return path


def step_section(results: Path, rel: Path) -> list[str]:
    """The report's Markdown for the latest session in ``results/step.csv`` (tables and plot).

    Args:
        results: folder holding ``step.csv``; the plot is written there.
        rel: how the report refers to ``results`` (for the image link).
    """
    path = results / "step.csv"
    if not path.is_file():
        return ["## Step time against layer size", "", "Not measured yet (`python -m perf step`).", ""]
    step = pd.read_csv(path)
    step = step[step["session"] == step["session"].iloc[-1]]
    timed = step[step["metric"] == "time"]
    lines = ["## Step time against layer size", ""]
    lines.append(
        f"Session `{step['session'].iloc[0]}` (commit `{step['git_commit'].iloc[0]}`): one fp32 matrix per "
        f"case, synthetic gradients, {int(step['warmup'].iloc[0])} warm-up steps then "
        f"{int(step['timed_steps'].iloc[0])} timed steps. The tables give the mean (the amortised cost, "
        "including the basis refreshes of the window; period 10) and its ratio to AdamW's on the same "
        f"matrix. Device: {step['device'].iloc[0]}; CPU: {step['cpu'].iloc[0]}, torch threads {step['threads'].iloc[0]}."
    )
    lines.append("")
    if not timed.empty:
        pivot = timed.pivot_table(index="provider", columns="shape", values="mean", sort=False)
        order = list(dict.fromkeys(timed.sort_values("params")["shape"]))
        first = timed.drop_duplicates("shape").set_index("shape")
        pivot = pivot[order]
        ms = pivot.T
        ms.insert(0, "m × n", [f"{int(first.loc[c, 'm'])}×{int(first.loc[c, 'n'])}" for c in order])
        lines += [
            "Mean ms per step:",
            "",
            ms.reset_index(names="matrix").to_markdown(index=False, floatfmt=".3g"),
            "",
        ]
        if "AdamW" in pivot.index:
            ratio = (pivot / pivot.loc["AdamW"]).drop(index="AdamW").T
            ratio.insert(0, "m × n", ms["m × n"])
            table = ratio.reset_index(names="matrix").to_markdown(index=False, floatfmt=".3g")
            lines += ["Ratio to AdamW on the same matrix:", "", table, ""]
        fp32, bf16 = "Muon (fp32 NS)", "Muon (bf16 NS, stock)"
        if {fp32, bf16} <= set(pivot.index):
            ratio = pivot.loc[bf16, order] / pivot.loc[fp32, order]
            lines += [
                f"Muon's Newton–Schulz precision on this device: torch's stock bfloat16 iteration took "
                f"{ratio.min():.2g}–{ratio.max():.2g}× the time of the float32 one used in training "
                "(below 1: bfloat16 is faster here, so the float32 substitution does not flatter Muon).",
                "",
            ]
        plot = plot_step(timed, results)
        lines += [f"![step time against layer size]({(rel / plot.name).as_posix()})", ""]
    skipped = step[step["metric"] == "skipped"]
    for _, row in skipped.drop_duplicates("provider").iterrows():
        lines.append(f"- {row['provider']}: {row['note']}")
    return lines + [""]
