"""Result tables of the demo (:mod:`perf.demo`): seed means per grid point and the best learning rate.

One row per (optimizer, learning rate) in :func:`grid_table`, one per optimizer at its best learning
rate in :func:`summary_table`; :func:`to_markdown` renders either for the report.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

import pandas as pd

from perf.demo_training import RunResult

__all__ = ["grid_table", "summary_table", "to_markdown"]


def _mean(values: Iterable[float]) -> float:
    """Mean that is NaN when any value is (a diverged seed spoils its learning rate)."""
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else statistics.fmean(values)


def _std(values: Iterable[float]) -> float:
    values = list(values)
    if any(math.isnan(v) for v in values):
        return math.nan
    return statistics.stdev(values) if len(values) > 1 else 0.0


def grid_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per (optimizer, learning rate): seed means of the final metrics."""
    rows = []
    keys = dict.fromkeys((r.label, r.lr) for r in results)
    for label, lr in keys:
        runs = [r for r in results if r.label == label and r.lr == lr]
        rows.append(
            {
                "optimizer": label,
                "lr": lr,
                "train loss": _mean(r.train_loss for r in runs),
                "test loss": _mean(r.test_loss for r in runs),
                "test acc %": 100 * _mean(r.test_accuracy for r in runs),
            }
        )
    return pd.DataFrame(rows)


def summary_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per optimizer at its best learning rate (lowest mean final train loss).

    The step time is the median over every timed step of that optimizer (all learning rates and
    seeds: it does not depend on the learning rate), and its ratio to AdamW's median of this run.
    """
    grid = grid_table(results)
    labels = list(dict.fromkeys(r.label for r in results))
    medians = {
        label: statistics.median(t for r in results if r.label == label for t in r.step_times) * 1e3
        if any(r.step_times for r in results if r.label == label)
        else math.nan
        for label in labels
    }
    baseline = medians.get("AdamW", math.nan)
    rows = []
    for label in labels:
        candidates = grid[grid["optimizer"] == label]
        ranking = candidates["train loss"].fillna(math.inf)
        best = candidates.loc[ranking.idxmin()]
        best_runs = [r for r in results if r.label == label and r.lr == best["lr"]]
        rows.append(
            {
                "optimizer": label,
                "best lr": best["lr"],
                "train loss": best["train loss"],
                "± (seeds)": _std(r.train_loss for r in best_runs),
                "test loss": best["test loss"],
                "test acc %": best["test acc %"],
                "step ms (median)": medians[label],
                "× AdamW": medians[label] / baseline if baseline > 0 else math.nan,
            }
        )
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame) -> str:
    """The table as GitHub Markdown (pandas + tabulate), numbers with 4 significant digits."""
    return frame.to_markdown(index=False, floatfmt=".4g")
