"""The report's PNG plots: validation loss against steps and against training seconds."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from perf.report_summary import best_runs, estimated_seconds, mean_curves, step_costs  # noqa: E402

__all__ = ["DPI", "plot_curves"]

DPI = 90


def plot_curves(
    name: str, title: str, runs: pd.DataFrame, curves: pd.DataFrame, labels: list[str], out: Path
) -> Path:
    """Validation loss against steps and against estimated training seconds (seed means at the best lr).

    Seconds are :func:`step_costs`'s contention-free estimate; measured ones are in the curves CSV.

    The PNG's ``Description`` text chunk lists the plotted optimizers as JSON (checked by the tests).
    """
    mcurves = mean_curves(best_runs(runs), curves)
    costs = step_costs(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=DPI)
    for label in labels:
        if label not in mcurves:
            continue
        c = mcurves[label][mcurves[label]["step"] > 0]
        style = "-" if label.startswith("Kron") else "--"
        width = 2.0 if label in ("AdamW", "Kron logdet") else 1.2
        axes[0].plot(c["step"], c["val_loss"], style, lw=width, label=label)
        axes[1].plot(estimated_seconds(c["step"], costs[label]), c["val_loss"], style, lw=width, label=label)
    for ax, xlabel in zip(
        axes, ("optimizer steps", "estimated training seconds (fwd + bwd + step, 2 CPU cores)"), strict=True
    ):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{title}: validation loss (seed mean at each optimizer's best lr)", fontsize=10)
    fig.tight_layout()
    path = out / f"report_{name}.png"
    plotted = [label for label in labels if label in mcurves]
    fig.savefig(path, metadata={"Title": f"{name} validation loss", "Description": json.dumps(plotted)})
    plt.close(fig)
    return path
