"""Load one training session's results and derive the per-optimizer numbers of the report.

Derived numbers, per workload:

* **best lr** and the seed statistics: from :mod:`perf.train`'s grid-then-seeds protocol (``*`` marks
  a best learning rate at the edge of the grid);
* **target** = AdamW's final validation loss (seed mean at its best learning rate); **steps to
  target** = first evaluation at which an optimizer's seed-mean validation curve is at or below it,
  and **s to target** the training time to get there (forward, backward, step; no evaluation),
  estimated free of machine contention by :func:`step_costs` (the measured cumulative seconds of
  every run are in ``train_curves.csv``);
* **step ms**: the smallest per-run median of ``opt.step()`` (p50) and the smallest per-run mean
  (mean: steps 2…N, so it includes the periodic refreshes but not the first step, whose one-off
  state allocation and initial eigendecompositions are **first step ms**) over the optimizer's runs, each also as a ratio to
  AdamW's from the same session. The machine is shared and contention only ever adds time, so the
  least-contended run is the estimate; **fwd+bwd ms** (same work for every optimizer) shows the
  scale of a whole training step;
* **state B/param B**: optimizer-state bytes over parameter bytes; **precond B/param B**:
  tritonkron's preconditioner state only (factors, bases, eigenvalues; momentum excluded).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

__all__ = ["best_runs", "estimated_seconds", "load_session", "mean_curves", "step_costs", "summarize"]


def load_session(results: Path, session: str | None = None) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The metadata, runs and curves of ``session`` (the latest in ``train_sessions.jsonl`` if None).

    Raises:
        FileNotFoundError: no session has been recorded under ``results``.
        KeyError: ``session`` is not recorded.
    """
    meta_path = results / "train_sessions.jsonl"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no training results in {results} (run `python -m perf train` first)")
    sessions = [
        json.loads(line) for line in meta_path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    chosen = sessions[-1] if session is None else next((s for s in sessions if s["session"] == session), None)
    if chosen is None:
        raise KeyError(f"session {session!r} not in {meta_path}; known: {[s['session'] for s in sessions]}")
    runs = pd.read_csv(results / "train_runs.csv")
    curves = pd.read_csv(results / "train_curves.csv")
    sid = chosen["session"]
    return chosen, runs[runs["session"] == sid].copy(), curves[curves["session"] == sid].copy()


def best_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs at each optimizer's reported learning rate (grid winner, its extra seeds, ablations)."""
    keep = []
    for _, group in runs.groupby("optimizer", sort=False):
        extra = group[group["phase"].isin(["seed", "ablation"])]
        if len(extra):
            lr = extra["lr"].iloc[0]
        else:  # one seed: the grid winner
            scores = group["final_val_loss"].fillna(math.inf)
            lr = group.loc[scores.idxmin(), "lr"]
        keep.append(group[group["lr"] == lr])
    return pd.concat(keep) if keep else runs.iloc[0:0]


def mean_curves(best: pd.DataFrame, curves: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Seed-mean validation curve (step, train_s, val_loss, val_acc) of each optimizer at its best lr."""
    out = {}
    for optimizer, group in best.groupby("optimizer", sort=False):
        lr = group["lr"].iloc[0]
        c = curves[(curves["optimizer"] == optimizer) & (curves["lr"] == lr)]
        out[optimizer] = c.groupby("step", as_index=False)[["train_s", "val_loss", "val_acc"]].mean(
            numeric_only=True
        )
    return out


def step_costs(runs: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Contention-free estimate of each optimizer's training cost: ``(ms per step, one-off first-step ms)``.

    A step costs the workload's least-contended forward + backward median (the same work for every
    optimizer) plus the optimizer's least-contended steady-state mean step; the first step's extra
    cost (state allocation, initial eigendecompositions) is added once.
    """
    fwd_bwd = float(runs["fwd_bwd_ms_p50"].min())
    out = {}
    for optimizer, group in runs.groupby("optimizer", sort=False):
        mean = float(group["step_ms_mean"].min())
        out[optimizer] = (fwd_bwd + mean, max(0.0, float(group["first_step_ms"].min()) - mean))
    return out


def estimated_seconds(step: float | pd.Series, cost: tuple[float, float]) -> float | pd.Series:
    """Training seconds to reach ``step`` at ``cost``, a ``(ms per step, one-off ms)`` of :func:`step_costs`."""
    return (step * cost[0] + cost[1]) / 1e3


def _steps_to(curve: pd.DataFrame, target: float) -> float:
    hit = curve[(curve["step"] > 0) & (curve["val_loss"] <= target + 1e-12)]
    return math.nan if hit.empty else float(hit["step"].iloc[0])


def summarize(runs: pd.DataFrame, curves: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """The per-optimizer table of one workload (see the module docstring for each column)."""
    if runs.empty:
        return pd.DataFrame()
    best = best_runs(runs)
    mcurves = mean_curves(best, curves)
    # Least-contended run: the machine is shared, and contention only ever adds time.
    step_p50 = runs.groupby("optimizer")["step_ms_p50"].min()
    step_mean = runs.groupby("optimizer")["step_ms_mean"].min()
    fwd_bwd = runs.groupby("optimizer")["fwd_bwd_ms_p50"].min()
    first = runs.groupby("optimizer")["first_step_ms"].min()
    costs = step_costs(runs)
    adamw = best[best["optimizer"] == "AdamW"]
    target = float(adamw["final_val_loss"].mean()) if len(adamw) else math.nan
    adamw_steps = _steps_to(mcurves["AdamW"], target) if "AdamW" in mcurves else math.nan
    rows = []
    for optimizer in [o for o in order if o in set(best["optimizer"])]:
        b = best[best["optimizer"] == optimizer]
        grid = runs[(runs["optimizer"] == optimizer) & (runs["phase"] == "grid")]["lr"]
        lr = float(b["lr"].iloc[0])
        edge = len(grid.unique()) > 1 and lr in (grid.min(), grid.max())
        steps = _steps_to(mcurves[optimizer], target)
        finals = b["final_val_loss"]
        rows.append(
            {
                "optimizer": optimizer,
                "best lr": f"{lr:g}{'*' if edge else ''}",
                "seeds": len(b),
                "final val loss": finals.mean() if finals.notna().all() else math.nan,
                "± std": finals.std(ddof=1) if len(b) > 1 else math.nan,
                "best val loss": b["best_val_loss"].mean(),
                "final val acc %": 100 * b["final_val_acc"].mean(),
                "steps to target": steps,
                "× AdamW steps": steps / adamw_steps if adamw_steps > 0 else math.nan,
                "s to target": estimated_seconds(steps, costs[optimizer]),
                "step ms p50": step_p50[optimizer],
                "p50 × AdamW": step_p50[optimizer] / step_p50.get("AdamW", math.nan),
                "step ms mean": step_mean[optimizer],
                "mean × AdamW": step_mean[optimizer] / step_mean.get("AdamW", math.nan),
                "first step ms": first[optimizer],
                "fwd+bwd ms": fwd_bwd[optimizer],
                "state B / param B": (b["state_bytes"] / b["param_bytes"]).mean(),
                "precond B / param B": (b["precond_bytes"] / b["param_bytes"]).mean()
                if optimizer.startswith("Kron")
                else math.nan,
            }
        )
    table = pd.DataFrame(rows)
    table.attrs["target"] = target
    return table.dropna(axis=1, how="all")
