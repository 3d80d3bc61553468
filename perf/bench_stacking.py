"""Cross-parameter stacking of equal-shape blocks (``Kron(stack=True)``) against per-parameter steps.

Usage (from the repository root)::

    python -m perf.bench_stacking [--steps 40] [--warmup 12] [--device auto|cpu|cuda]
                                  [--out perf/results/stacking.csv]

Every configuration steps its own copy of the parameters of :class:`perf.models.CharGPT`
(≈ 0.43 M scalars) with the same fixed N(0, 1) gradients; the configurations take turns step by
step, so machine contention hits them alike. AdamW (``torch.optim.AdamW``) is the baseline of the
same run. With ``precondition_every=10`` the timed window holds ``steps / 10`` basis refreshes, so
the **mean** is the amortised cost per step. After the run, the parameters stepped with and without
stacking are compared bit for bit (the ``same bits`` column), the guarantee of
:mod:`tritonkron.step.stacking`. Parameters, gradients and state live on ``--device`` (default ``auto``:
CUDA when available); on CUDA every timed step is bracketed by ``torch.cuda.synchronize()``.

The table is printed (pandas + tabulate) and written as CSV to ``--out`` with machine, versions,
device, commit and date.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

import tritonkron as tk
from perf.bench_table import timing_main
from perf.device import clock
from perf.models import CharGPT, count_parameters

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK_SIZES = (128, 1024)

Factory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def configurations(block_sizes: tuple[int, ...] = BLOCK_SIZES) -> dict[str, Factory]:
    """AdamW plus Kron at each block size, with and without stacking (labels → factories)."""
    configs: dict[str, Factory] = {"AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.95))}
    for block_size in block_sizes:
        for stack in (False, True):

            def build(ps: list[torch.Tensor], b: int = block_size, s: bool = stack) -> torch.optim.Optimizer:
                return tk.Kron(ps, lr=1e-3, precondition_every=10, block_size=b, stack=s)

            configs[_label(block_size, stack)] = build
    return configs


def _label(block_size: int, stack: bool) -> str:
    return f"Kron b={block_size} stack={stack}"


def run(
    steps: int, warmup: int, block_sizes: tuple[int, ...] = BLOCK_SIZES, device: torch.device | str = "cpu"
) -> pd.DataFrame:
    """Interleaved step times of every configuration on ``device``; ratios against AdamW and stack=False."""
    torch.manual_seed(0)
    model = CharGPT(80).to(device)
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=generator).to(device) for p in model.parameters()]
    configs = configurations(block_sizes)
    copies = {label: [p.detach().clone().requires_grad_() for p in model.parameters()] for label in configs}
    opts = {label: factory(copies[label]) for label, factory in configs.items()}
    times: dict[str, list[float]] = {label: [] for label in configs}
    for step in range(warmup + steps):
        for label, opt in opts.items():
            for p, g in zip(copies[label], grads, strict=True):
                p.grad = g.clone()
            start = clock(device)
            opt.step()
            if step >= warmup:
                times[label].append(1000 * (clock(device) - start))
    rows = []
    for label, ms in times.items():
        rows.append(
            {
                "optimizer": label,
                "parameters": count_parameters(model),
                "median_ms": statistics.median(ms),
                "mean_ms": statistics.fmean(ms),
            }
        )
    table = pd.DataFrame(rows)
    baseline = table.set_index("optimizer").loc["AdamW", "mean_ms"]
    table["mean_vs_adamw"] = table["mean_ms"] / baseline
    speedups, same = [], []
    for label in table["optimizer"]:
        if label == "AdamW":
            speedups.append(float("nan"))
            same.append("")
            continue
        block_size = int(label.split("b=")[1].split()[0])
        unstacked = _label(block_size, False)
        speedups.append(
            table.set_index("optimizer").loc[unstacked, "mean_ms"]
            / table.set_index("optimizer").loc[label, "mean_ms"]
        )
        equal = all(torch.equal(a, b) for a, b in zip(copies[unstacked], copies[label], strict=True))
        same.append("yes" if equal else "NO")
    table["speedup_vs_unstacked"] = speedups
    table["same bits"] = same
    return table


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    timing_main(argv, __doc__, RESULTS / "stacking.csv", "stacked vs per-parameter Kron steps", run)


if __name__ == "__main__":
    main()
