"""The report's PNG plots: validation loss against steps and against training seconds, and final
loss against the learning rate."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from perf.report_summary import best_runs, estimated_seconds, mean_curves, step_costs  # noqa: E402

__all__ = ["DPI", "plot_curves", "plot_lr_sensitivity"]

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


def plot_lr_sensitivity(runs: pd.DataFrame, path: Path) -> Path:
    """Final validation loss against the learning rate (log x), one line per optimizer.

    ``runs`` has one row per run (columns ``optimizer``, ``lr``, ``final_val_loss``, ``diverged``,
    ``initial_val_loss``, as :mod:`perf.bench_lr` writes them). Points are seed means with bars over
    the seed range; a lr where a seed diverged (non-finite, or above the initial loss) is an ``x`` at the
    top edge. The PNG's ``Description`` text chunk lists the plotted optimizers as JSON.
    """
    finite = runs[~runs["diverged"].astype(bool)]
    low = float(finite["final_val_loss"].min()) if len(finite) else 0.0
    high = float(finite["final_val_loss"].max()) if len(finite) else 1.0
    top = min(float(runs["initial_val_loss"].max()), high + 0.1 * (high - low) + 0.02)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=DPI)
    labels = list(dict.fromkeys(runs["optimizer"]))
    for label in labels:
        g = runs[runs["optimizer"] == label]
        stats = g.groupby("lr").agg(
            mean=("final_val_loss", "mean"), lo=("final_val_loss", "min"), hi=("final_val_loss", "max")
        )
        bad = g.groupby("lr")["diverged"].any()
        ok = stats[~bad].clip(upper=top)
        style = "-" if label.startswith("Kron") else "--"
        line = ax.errorbar(
            ok.index, ok["mean"], yerr=[ok["mean"] - ok["lo"], ok["hi"] - ok["mean"]],
            fmt="o" + style, ms=4, lw=1.4, capsize=2, label=label,
        )  # fmt: skip
        if bad.any():
            ax.plot(bad[bad].index, [top] * int(bad.sum()), "x", ms=8, color=line[0].get_color())
    ax.set_xscale("log")
    ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final validation loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(
        "char-LM: final validation loss against lr (seed mean, bars: seed range; x: diverged)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, metadata={"Title": "lr sensitivity", "Description": json.dumps(labels)})
    plt.close(fig)
    return path
