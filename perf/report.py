"""Render ``perf/REPORT.md`` and its PNG plots from the CSVs under ``perf/results/``.

Inputs (written by ``python -m perf train`` and ``python -m perf step``):

* ``train_sessions.jsonl``: one JSON line per training session (environment, workloads, optimizer
  entries with skip reasons, protocol);
* ``train_runs.csv``: one row per run; ``train_curves.csv``: the validation curve of every run;
* ``step.csv``: step time against layer size.

The report covers one session (the latest unless named). Derived numbers, per workload:

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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from perf.bench_step import step_section  # noqa: E402

__all__ = ["goal_lines", "load_session", "render", "summarize", "target_table"]

RESULTS = Path(__file__).resolve().parent / "results"
DPI = 90


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


def _best_runs(runs: pd.DataFrame) -> pd.DataFrame:
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


def _seconds(step: float | pd.Series, cost: tuple[float, float]) -> float | pd.Series:
    return (step * cost[0] + cost[1]) / 1e3


def _steps_to(curve: pd.DataFrame, target: float) -> float:
    hit = curve[(curve["step"] > 0) & (curve["val_loss"] <= target + 1e-12)]
    return math.nan if hit.empty else float(hit["step"].iloc[0])


def summarize(runs: pd.DataFrame, curves: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """The per-optimizer table of one workload (see the module docstring for each column)."""
    if runs.empty:
        return pd.DataFrame()
    best = _best_runs(runs)
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
                "s to target": _seconds(steps, costs[optimizer]),
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


def target_table(table: pd.DataFrame) -> str:
    """``table`` as GitHub Markdown, 4 significant digits, NaN shown as ``–``."""
    return table.to_markdown(index=False, floatfmt=".4g").replace(" nan ", "  –  ")


def _row(table: pd.DataFrame, label: str) -> pd.Series | None:
    rows = table[table["optimizer"] == label]
    return None if rows.empty else rows.iloc[0]


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def goal_lines(table: pd.DataFrame) -> list[str]:
    """The issue's four character-LM goals, each with the measured numbers and met / not met."""
    kron = table[table["optimizer"].str.startswith("Kron")]
    if kron.empty or _row(table, "AdamW") is None:
        return ["Goals: not evaluated (AdamW or tritonkron missing from this session)."]
    best = kron.sort_values("final val loss").iloc[0]
    lines = ["Goals of issue 4 on this workload (measured, not asserted):", ""]
    ratio = best.get("× AdamW steps", math.nan)
    if math.isnan(ratio):
        first = f"does not reach AdamW's final validation loss within the budget: {_verdict(False)}."
    else:
        first = (
            f"reaches AdamW's final validation loss in {best['steps to target']:.0f} steps = {ratio:.2f}× "
            f"AdamW's steps (goal ≤ 0.7×): {_verdict(bool(ratio <= 0.7))}."
        )
    lines.append(
        f"1. Best tritonkron configuration (lowest final validation loss) `{best['optimizer']}` {first}"
    )
    logdet = _row(table, "Kron logdet")
    if logdet is not None:
        lines.append(
            f"2. `Kron logdet` optimizer step at precondition_every=10: {logdet['step ms mean']:.3g} ms = "
            f"{logdet['mean × AdamW']:.1f}× AdamW amortised (mean), {logdet['p50 × AdamW']:.1f}× at the median "
            f"(goal ≤ 1.5×, judged on the mean): {_verdict(bool(logdet['mean × AdamW'] <= 1.5))}. For scale: one "
            f"forward + backward pass takes {logdet['fwd+bwd ms']:.3g} ms here."
        )
    beats = []
    for peer in ("heavyball KLShampoo", "heavyball SOAP"):
        row = _row(table, peer)
        if row is None:
            beats.append((peer, None, "skipped"))
        else:
            ok = (
                bool(best["final val loss"] < row["final val loss"])
                if not math.isnan(row["final val loss"])
                else True
            )
            beats.append((peer, ok, f"{row['final val loss']:.4f}"))
    detail = "; ".join(f"{p} {v}" for p, _, v in beats)
    oks = [ok for _, ok, _ in beats if ok is not None]
    lines.append(
        f"3. At equal steps `{best['optimizer']}` ends at {best['final val loss']:.4f} (± {best.get('± std', math.nan):.4f}) "
        f"vs {detail}: {_verdict(all(oks) if oks else None)}."
    )
    full = (
        logdet["precond B / param B"] if logdet is not None and "precond B / param B" in logdet else math.nan
    )
    subs = kron[kron["optimizer"].str.contains(" r=")]
    if not subs.empty and not math.isnan(full):
        ratios = {r["optimizer"]: r["precond B / param B"] / full for _, r in subs.iterrows()}
        best_sub = min(ratios, key=ratios.get)
        listed = ", ".join(f"`{k}` {v:.2f}" for k, v in ratios.items())
        lines.append(
            f"4. Preconditioner memory relative to full-rank `Kron logdet`: {listed} (goal ≤ 0.33 for subspace "
            f"mode; best `{best_sub}`): {_verdict(bool(ratios[best_sub] <= 1 / 3))}. Dense `rank=k` keeps the full "
            "factors (its savings are in compute), only `sketch=True` stores O((m + n)·k)."
        )
    return lines


def plot_curves(
    name: str, title: str, runs: pd.DataFrame, curves: pd.DataFrame, labels: list[str], out: Path
) -> Path:
    """Validation loss against steps and against estimated training seconds (seed means at the best lr).

    Seconds are :func:`step_costs`'s contention-free estimate; measured ones are in the curves CSV.

    The PNG's ``Description`` text chunk lists the plotted optimizers as JSON (checked by the tests).
    """
    mcurves = mean_curves(_best_runs(runs), curves)
    costs = step_costs(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=DPI)
    for label in labels:
        if label not in mcurves:
            continue
        c = mcurves[label][mcurves[label]["step"] > 0]
        style = "-" if label.startswith("Kron") else "--"
        width = 2.0 if label in ("AdamW", "Kron logdet") else 1.2
        axes[0].plot(c["step"], c["val_loss"], style, lw=width, label=label)
        axes[1].plot(_seconds(c["step"], costs[label]), c["val_loss"], style, lw=width, label=label)
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


_HEADLINE_COLUMNS = [
    "optimizer",
    "best lr",
    "final val loss",
    "± std",
    "× AdamW steps",
    "step ms mean",
    "mean × AdamW",
    "state B / param B",
]


def _plotted(meta: dict, table: pd.DataFrame) -> list[str]:
    """Labels drawn in a workload's plot: every non-ablation optimizer that ran, plus the best Kron."""
    labels = [e["label"] for e in meta["entries"] if not e["ablation"] and e["skip"] is None]
    kron = table[table["optimizer"].str.startswith("Kron")].sort_values("final val loss")["optimizer"]
    return labels + [x for x in kron.head(1) if x not in labels]


def _headline(meta: dict, tables: dict[str, pd.DataFrame], rel: Path) -> list[str]:
    """The character-LM summary, trimmed to the columns a reader picks an optimizer by."""
    table = tables.get("char_lm")
    if table is None or table.empty:
        return []
    wl = meta["workloads"]["char_lm"]
    rows = table[table["optimizer"].isin(_plotted(meta, table))]
    columns = [c for c in _HEADLINE_COLUMNS if c in rows]
    mode = "quick" if meta["quick"] else "full"
    return [
        "## Headline: character-level language model",
        "",
        f"{wl['title']} on {wl['data']}, {wl['params']:,} parameters, {wl['steps']} steps, 2 CPU cores "
        f"(`python -m perf train{' --quick' if meta['quick'] else ''}`, {mode} mode, session `{meta['session']}`). "
        "Seed means at each optimizer's best learning rate; × AdamW steps = steps to reach AdamW's final "
        "validation loss relative to AdamW (– = not reached); step ms mean = amortised `opt.step()`.",
        "",
        target_table(rows[columns]),
        "",
        f"![char_lm validation loss]({(rel / 'report_char_lm.png').as_posix()})",
        "",
    ]


def render(results: Path = RESULTS, out: Path | None = None, session: str | None = None) -> Path:
    """Write the report (Markdown + PNGs next to the CSVs) and return its path.

    Args:
        results: folder of the CSVs; PNGs are written there too.
        out: the Markdown file (default ``results/../REPORT.md``).
        session: the training session to report (default: the latest).
    """
    out = out if out is not None else results.parent / "REPORT.md"
    meta, runs, curves = load_session(results, session)
    rel = (
        Path(results.resolve().relative_to(out.parent.resolve()))
        if results.resolve().is_relative_to(out.parent.resolve())
        else results
    )
    env = meta["env"]
    lines = [
        "# tritonkron benchmarks against the peers",
        "",
        f"Session `{meta['session']}` ({'quick' if meta['quick'] else 'full'} mode), commit `{env['git_commit']}`, "
        f"{env['timestamp']}; total {meta.get('elapsed_s', math.nan):.0f} s. Command: `{meta['command']}`.",
        "",
        f"- machine: {env['cpu']} — {env['cores']} cores, torch threads {env['threads']}, {env['platform']}; "
        f"load average {env['load_start']} at start, {meta.get('load_end', '?')} at end (other jobs share the machine; "
        "ratios to AdamW are measured in the same process and are the robust numbers)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
        f"- protocol: {meta['protocol']}",
        "",
    ]
    entries = pd.DataFrame(meta["entries"])
    tables = {
        name: summarize(
            runs[runs["workload"] == name], curves[curves["workload"] == name], list(entries["label"])
        )
        for name in meta["workloads"]
    }
    headline = _headline(meta, tables, rel)
    if headline:
        lines += headline
        # The same block for the repository README, its image path relative to the repository root.
        root = Path(__file__).resolve().parents[1]
        at_root = results.resolve().relative_to(root) if results.resolve().is_relative_to(root) else results
        readme = _headline(meta, tables, at_root)[2:]
        (results / "headline.md").write_text("\n".join(readme), encoding="utf-8")
    lines += ["## Optimizers", ""]
    entries["status"] = entries["skip"].fillna("run")
    entries["runs"] = entries["ablation"].map(
        lambda a: "ablation (lr of Kron logdet)" if a and not meta["ablation_grid"] else "lr grid"
    )
    lines += [entries[["label", "source", "status", "runs", "note"]].to_markdown(index=False), ""]
    for name, wl in meta["workloads"].items():
        wruns, wcurves = runs[runs["workload"] == name], curves[curves["workload"] == name]
        table = tables[name]
        lines += [f"## {name}: {wl['title']}", ""]
        lines.append(
            f"Data: {wl['note']}. {wl['params']:,} parameters; {wl['steps']} steps, validation every "
            f"{wl['eval_every']}; lr grid {', '.join(f'{x:g}' for x in wl['lrs'])}; "
            f"target = AdamW's final validation loss {table.attrs.get('target', math.nan):.4f}."
        )
        lines.append("")
        if table.empty:
            lines += ["No runs recorded.", ""]
            continue
        fb = wruns["fwd_bwd_ms_p50"]
        lines += [
            f"Machine contention: the forward + backward median, the same work in every run, ranged from "
            f"{fb.min():.3g} to {fb.max():.3g} ms across this workload's runs; step times below are each "
            "optimizer's least-contended run.",
            "",
        ]
        if name == "char_lm":
            lines += goal_lines(table) + [""]
        lines += [target_table(table), ""]
        plot = plot_curves(name, wl["title"], wruns, wcurves, _plotted(meta, table), results)
        lines += [f"![{name} validation loss]({(rel / plot.name).as_posix()})", ""]
    lines += step_section(results, rel)
    lines += [
        "## Reading the tables",
        "",
        "`*` after a learning rate: best at the edge of the grid (the optimum may lie outside it). "
        "`–`: not reached within the budget, or not applicable. Steps to target use the seed-mean curve "
        "sampled at the validation points, so they are multiples of the validation period. Raw rows: "
        f"`{(rel / 'train_runs.csv').as_posix()}`, curves: `{(rel / 'train_curves.csv').as_posix()}`.",
        "",
    ]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
