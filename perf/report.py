"""Render ``perf/REPORT.md`` and its PNG plots from the CSVs under ``perf/results/``.

Inputs (written by ``python -m perf train`` and ``python -m perf step``):

* ``train_sessions.jsonl``: one JSON line per training session (environment, workloads, optimizer
  entries with skip reasons, protocol);
* ``train_runs.csv``: one row per run; ``train_curves.csv``: the validation curve of every run;
* ``step.csv``: step time against layer size;
* ``lr_sensitivity_<date>.csv`` (``python -m perf.bench_lr``, optional): final loss against the
  learning rate; the newest one is shown with its figure.

The report covers one session (the latest unless named). Its numbers are derived by
:mod:`perf.report_summary` (the meaning of each column is there) and its plots drawn by
:mod:`perf.report_plots`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from perf.bench_lr import fmt, sensitivity_table
from perf.bench_step import step_section
from perf.report_plots import DPI, plot_curves, plot_lr_sensitivity
from perf.report_summary import load_session, mean_curves, step_costs, summarize

__all__ = [
    "DPI",
    "goal_lines",
    "load_session",
    "lr_section",
    "mean_curves",
    "plot_curves",
    "render",
    "session_device",
    "step_costs",
    "summarize",
    "target_table",
]

RESULTS = Path(__file__).resolve().parent / "results"


def target_table(table: pd.DataFrame) -> str:
    """``table`` as GitHub Markdown, 4 significant digits, NaN shown as ``–``."""
    return table.to_markdown(index=False, floatfmt=".4g").replace(" nan ", "  –  ")


def _row(table: pd.DataFrame, label: str) -> pd.Series | None:
    """The first row of ``table`` for optimizer ``label``, or None when it did not run."""
    rows = table[table["optimizer"] == label]
    return None if rows.empty else rows.iloc[0]


def _verdict(ok: bool | None) -> str:
    """``met`` / ``not met`` in bold, or ``n/a`` when the goal could not be judged."""
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def goal_lines(table: pd.DataFrame) -> list[str]:
    """The four character-LM goals, each with the measured numbers and met / not met."""
    kron = table[table["optimizer"].str.startswith("Kron")]
    if kron.empty or _row(table, "AdamW") is None:
        return ["Goals: not evaluated (AdamW or tritonkron missing from this session)."]
    best = kron.sort_values("final val loss").iloc[0]
    lines = ["Goals on this workload (measured, not asserted):", ""]
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
    fastest = kron.sort_values("mean × AdamW").iloc[0]
    lines.append(
        f"2. `{best['optimizer']}` optimizer step at precondition_every=10: {best['step ms mean']:.3g} ms = "
        f"{best['mean × AdamW']:.1f}× AdamW amortised (mean), {best['p50 × AdamW']:.1f}× at the median "
        f"(goal ≤ 1.5×, judged on the mean): {_verdict(bool(best['mean × AdamW'] <= 1.5))}. Fastest tritonkron "
        f"configuration: `{fastest['optimizer']}`, {fastest['mean × AdamW']:.1f}×. For scale: one forward + "
        f"backward pass takes {best['fwd+bwd ms']:.3g} ms here."
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


def session_device(env: dict) -> str:
    """The device a session ran on (``cuda (NVIDIA H200)``); sessions recorded before the field ran on the CPU."""
    return str(env.get("device") or f"cpu ({env['threads']} threads)")


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
        f"{wl['title']} on {wl['data']}, {wl['params']:,} parameters, {wl['steps']} steps, device {session_device(meta['env'])} "
        f"(`python -m perf train{' --quick' if meta['quick'] else ''}`, {mode} mode, session `{meta['session']}`). "
        "Seed means at each optimizer's best learning rate; × AdamW steps = steps to reach AdamW's final "
        "validation loss relative to AdamW (– = not reached); step ms mean = amortised `opt.step()`.",
        "",
        target_table(rows[columns]),
        "",
        f"![char_lm validation loss]({(rel / 'report_char_lm.png').as_posix()})",
        "",
    ]


def _session_lines(meta: dict) -> list[str]:
    """The report's title and the session's device, machine, versions and protocol."""
    env = meta["env"]
    return [
        "# tritonkron benchmarks against the peers",
        "",
        f"Session `{meta['session']}` ({'quick' if meta['quick'] else 'full'} mode), commit `{env['git_commit']}`, "
        f"{env['timestamp']}; total {meta.get('elapsed_s', math.nan):.0f} s. Command: `{meta['command']}`.",
        "",
        f"- device: {session_device(env)}",
        f"- machine: {env['cpu']} — {env['cores']} cores, torch threads {env['threads']}, {env['platform']}; "
        f"load average {env['load_start']} at start, {meta.get('load_end', '?')} at end (other jobs share the machine; "
        "ratios to AdamW are measured in the same process and are the robust numbers)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
        f"- protocol: {meta['protocol']}",
        "",
    ]


def _relative_results(results: Path, out: Path) -> Path:
    """The results folder relative to the report's folder (for image and CSV links), else as given."""
    return (
        Path(results.resolve().relative_to(out.parent.resolve()))
        if results.resolve().is_relative_to(out.parent.resolve())
        else results
    )


def _headline_block(meta: dict, tables: dict[str, pd.DataFrame], results: Path, rel: Path) -> list[str]:
    """The headline section; when there is one, the same block (image path relative to the
    repository root, without its title) is written to ``results/headline.md`` for the README."""
    headline = _headline(meta, tables, rel)
    if headline:
        root = Path(__file__).resolve().parents[1]
        at_root = results.resolve().relative_to(root) if results.resolve().is_relative_to(root) else results
        readme = _headline(meta, tables, at_root)[2:]
        (results / "headline.md").write_text("\n".join(readme), encoding="utf-8")
    return headline


def _optimizer_lines(meta: dict, entries: pd.DataFrame) -> list[str]:
    """The optimizers section: every entry with its source, status, lr protocol and note."""
    entries["status"] = entries["skip"].fillna("run")
    entries["runs"] = entries["ablation"].map(
        lambda a: "ablation (lr of Kron logdet)" if a and not meta["ablation_grid"] else "lr grid"
    )
    return [
        "## Optimizers",
        "",
        entries[["label", "source", "status", "runs", "note"]].to_markdown(index=False),
        "",
    ]


def _workload_lines(
    name: str,
    meta: dict,
    table: pd.DataFrame,
    wruns: pd.DataFrame,
    wcurves: pd.DataFrame,
    results: Path,
    rel: Path,
) -> list[str]:
    """One workload's section: its data and protocol, contention, goals (char_lm), table and plot."""
    wl = meta["workloads"][name]
    lines = [f"## {name}: {wl['title']}", ""]
    lines.append(
        f"Data: {wl['note']}. {wl['params']:,} parameters; {wl['steps']} steps, validation every "
        f"{wl['eval_every']}; lr grid {', '.join(f'{x:g}' for x in wl['lrs'])}; "
        f"target = AdamW's final validation loss {table.attrs.get('target', math.nan):.4f}."
    )
    lines.append("")
    if table.empty:
        return lines + ["No runs recorded.", ""]
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
    return lines + [f"![{name} validation loss]({(rel / plot.name).as_posix()})", ""]


def lr_section(results: Path, rel: Path) -> list[str]:
    """The newest ``lr_sensitivity_*.csv`` under ``results`` as a section (summary table and the figure,
    drawn next to the CSV), or nothing when there is none."""
    found = sorted(results.glob("lr_sensitivity_*.csv"))
    if not found:
        return []
    runs = pd.read_csv(found[-1])
    plot = plot_lr_sensitivity(runs, found[-1].with_suffix(".png"))
    return [
        "## Learning-rate sensitivity: character-level language model",
        "",
        f"`python -m perf.bench_lr` (`{found[-1].name}`): the quick char-LM workload for "
        f"{int(runs['steps'].max())} steps, {runs['seed'].nunique()} seed(s) per lr, the same initial "
        "weights and batches per seed for every optimizer. Best lr = lowest seed-mean final validation "
        "loss; ≈3× / ≈÷3 = the next value of the ladder 1e-3, 3e-3, 1e-2, … above / below it; ratio = "
        "the loss there over the loss at the best (div: a seed diverged, – not run, `*` best at an edge "
        f"of the lrs run). Per-lr table: `{found[-1].with_suffix('.md').name}`.",
        "",
        fmt(sensitivity_table(runs)),
        "",
        f"![final loss against lr]({(rel / plot.name).as_posix()})",
        "",
    ]


def _reading_lines(rel: Path) -> list[str]:
    """The closing notes on reading the tables, with the paths of the raw CSVs."""
    return [
        "## Reading the tables",
        "",
        "`*` after a learning rate: best at the edge of the grid (the optimum may lie outside it). "
        "`–`: not reached within the budget, or not applicable. Steps to target use the seed-mean curve "
        "sampled at the validation points, so they are multiples of the validation period. Raw rows: "
        f"`{(rel / 'train_runs.csv').as_posix()}`, curves: `{(rel / 'train_curves.csv').as_posix()}`.",
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
    rel = _relative_results(results, out)
    lines = _session_lines(meta)
    entries = pd.DataFrame(meta["entries"])
    tables = {
        name: summarize(
            runs[runs["workload"] == name], curves[curves["workload"] == name], list(entries["label"])
        )
        for name in meta["workloads"]
    }
    lines += _headline_block(meta, tables, results, rel)
    lines += _optimizer_lines(meta, entries)
    for name in meta["workloads"]:
        wruns, wcurves = runs[runs["workload"] == name], curves[curves["workload"] == name]
        lines += _workload_lines(name, meta, tables[name], wruns, wcurves, results, rel)
    lines += step_section(results, rel)
    lines += lr_section(results, rel)
    lines += _reading_lines(rel)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
