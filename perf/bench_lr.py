"""Learning-rate sensitivity on the char-level LM: ``python -m perf.bench_lr``.

Final validation loss against the learning rate for AdamW, Muon (float32 Newton–Schulz on the
hidden matrices, AdamW on the rest; :mod:`perf.peers`), heavyball's SOAP and KLShampoo when
heavyball is importable (otherwise listed as skipped, with the reason), and five ``tk.Kron``
configurations (:data:`KRON_CONFIGS`), all at ``precondition_every=10``.

Workload: the quick char-LM of the training benchmark (:func:`perf.train_workloads.build_workload`,
CharGPT d128 × 2, context 64, batch 16, 64 fixed validation windows), trained for ``--steps`` steps.
Seed s fixes the initial weights and the batches (the quick workload's 100-step sequences for seeds
s, s + 1000, s + 2000, … joined), the same for every optimizer. Each optimizer gets three learning
rates of the half-decade ladder around its best one in the README (:data:`CENTERS`: ≈ ÷3, the
centre, ≈ 3×); when the seed-mean best lies at an edge of its grid, the next ladder value past
that edge is run too (once). Runs go seed 0 first, so an interrupted run keeps whole seeds.

Per (optimizer, lr): seed-mean final validation loss ± half the seed range, the diverged seeds
(non-finite loss, or a final loss above the initial one) and the largest RMS(ΔW)/lr of any
parameter at any step. Per optimizer: the best lr, the loss at the next ladder value above it
(≈ 3×) and below it (≈ ÷3) and their ratios to the best loss. Rows go to a CSV as each run ends
(``--resume`` skips the runs already there); the tables are printed and written as Markdown, and
the figure (final loss against lr) is drawn next to the CSV.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import tritonkron as tk
from perf.peers import PRECONDITION_EVERY, OptimizerEntry, build_registry
from perf.train import Workload, build_workload, run_one

__all__ = [
    "CENTERS", "KRON_CONFIGS", "LADDER", "WatchedOptimizer", "entries", "fmt", "lr_grid", "lr_table",
    "main", "run_grid", "sensitivity_table",
]  # fmt: skip

RESULTS = Path(__file__).resolve().parent / "results"
LADDER = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
KRON_CONFIGS: dict[str, dict[str, object]] = {
    "Kron default": {},  # bound="adam" since 2026-12-08 (results before that: "Kron default" = bound=None)
    "Kron bound=None": {"bound": None},
    'Kron bound="adam" + bias_correction': {"bound": "adam", "bias_correction": True},
    "Kron max_update_rms=1": {"max_update_rms": 1.0, "bound": None},
    "Kron rank=16 + sketch": {"rank": 16, "sketch": True},
}
PEERS = ("AdamW", "Muon (fp32 NS)", "heavyball SOAP", "heavyball KLShampoo")
# Centred on the best learning rates of the README's 100-step quick run (AdamW 1e-3, Muon 1e-2,
# SOAP 3e-3, KLShampoo 1e-2, Kron logdet 1e-2); the 1000-step full protocol found 1e-3 … 3e-3.
CENTERS = {"AdamW": 1e-3, "heavyball SOAP": 3e-3, **dict.fromkeys((PEERS[1], PEERS[3], *KRON_CONFIGS), 1e-2)}
CSV_COLUMNS = [
    "optimizer", "lr", "seed", "steps", "initial_val_loss", "final_val_loss", "best_val_loss",
    "diverged", "worst_update_rms_over_lr", "worst_param", "step_ms_mean", "wall_s", "date", "threads",
]  # fmt: skip


class WatchedOptimizer:
    """An optimizer (or :class:`perf.peers.Chain`) whose ``step`` records the largest RMS(ΔW)/lr.

    One host read per step (the largest per-parameter RMS); ``state`` is the inner optimizer's.
    """

    def __init__(self, inner: object, model: nn.Module, lr: float) -> None:
        self.inner = inner
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.lr = lr
        self.worst = 0.0
        self.worst_param = ""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients."""
        self.inner.zero_grad(set_to_none=set_to_none)  # type: ignore[attr-defined]

    @torch.no_grad()
    def step(self) -> None:
        """Step the inner optimizer and update the worst RMS(ΔW)/lr."""
        before = [p.detach().clone() for _, p in self.named]
        self.inner.step()  # type: ignore[attr-defined]
        rms = torch.stack(
            [(p - b).float().pow(2).mean().sqrt() for (_, p), b in zip(self.named, before, strict=True)]
        )
        rms = torch.nan_to_num(rms, nan=math.inf)
        i = int(rms.argmax())
        value = float(rms[i]) / self.lr
        if value > self.worst:
            self.worst, self.worst_param = value, self.named[i][0]

    @property
    def state(self) -> dict[object, object]:
        """The inner optimizer's state."""
        return self.inner.state  # type: ignore[attr-defined]


def _kron(options: dict[str, object]) -> Callable[[nn.Module, float], torch.optim.Optimizer]:
    def build(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return tk.Kron(model.parameters(), lr=lr, precondition_every=PRECONDITION_EVERY, **options)  # type: ignore[arg-type]

    return build


def entries(labels: list[str] | None = None) -> list[OptimizerEntry]:
    """The peers of :data:`PEERS` (skipped ones keep their reason) and the Kron configurations."""
    registry = {e.label: e for e in build_registry()}
    source = f"tritonkron {tk.__version__} Kron"
    found = [registry[label] for label in PEERS]
    found += [OptimizerEntry(label, "tritonkron", source, _kron(o)) for label, o in KRON_CONFIGS.items()]
    return found if labels is None else [e for e in found if e.label in labels]


def lr_grid(center: float) -> list[float]:
    """The ladder values ≈ ÷3, 1× and ≈ 3× ``center``."""
    i = min(range(len(LADDER)), key=lambda k: abs(math.log(LADDER[k] / center)))
    return list(LADDER[max(0, i - 1) : i + 2])


def _step_ladder(lr: float, direction: int) -> float | None:
    """The ladder value next to ``lr`` (up for +1, down for −1), or None past the ladder's end."""
    i = min(range(len(LADDER)), key=lambda k: abs(math.log(LADDER[k] / lr))) + direction
    return LADDER[i] if 0 <= i < len(LADDER) else None


def lm_workload(
    steps: int, tiny: bool = False, corpus: str = "auto"
) -> tuple[Workload, Callable[[int], list]]:
    """The char-LM workload on ``corpus`` (``perf.text.load_corpus``) and ``seed -> batches``."""
    workload = build_workload("char_lm", quick=True, tiny=tiny, corpus=corpus)
    workload = dataclasses.replace(workload, eval_every=max(1, steps // 10), steps=steps)

    def batches(seed: int) -> list:
        out: list = []
        chunk = 0
        while len(out) < steps:
            out += workload.batches(seed + 1000 * chunk)
            chunk += 1
        return out[:steps]

    return workload, batches


def _run(workload: Workload, entry: OptimizerEntry, lr: float, seed: int, batches: list) -> dict:
    """One run as a CSV row."""
    watched: list[WatchedOptimizer] = []

    def build(model: nn.Module, rate: float) -> WatchedOptimizer:
        watched.append(WatchedOptimizer(entry.build(model, rate), model, rate))  # type: ignore[misc]
        return watched[-1]

    record = run_one(workload, dataclasses.replace(entry, build=build), lr, seed, "lr", batches)
    initial = record.curve[0][3]
    final = record.final_val_loss
    return {
        "optimizer": entry.label,
        "lr": lr,
        "seed": seed,
        "steps": record.steps_done,
        "initial_val_loss": initial,
        "final_val_loss": final,
        "best_val_loss": record.best_val_loss,
        "diverged": bool(record.diverged or not math.isfinite(final) or final > initial),
        "worst_update_rms_over_lr": watched[0].worst,
        "worst_param": watched[0].worst_param,
        "step_ms_mean": record.step_ms_mean,
        "wall_s": record.wall_s,
        "date": time.strftime("%Y-%m-%d"),
        "threads": torch.get_num_threads(),
    }


def _best_lr(rows: pd.DataFrame) -> float:
    """The lr of the lowest seed-mean final loss (a lr with a diverged seed scores +∞)."""
    score = rows.groupby("lr").apply(
        lambda g: math.inf if g["diverged"].any() else g["final_val_loss"].mean(), include_groups=False
    )
    return float(score.idxmin())


def run_grid(
    workload: Workload,
    batches: Callable[[int], list],
    chosen: list[OptimizerEntry],
    grids: dict[str, list[float]],
    seeds: int,
    on_row: Callable[[dict], None],
    previous: list[dict] | None = None,
    extend: bool = True,
    progress: Callable[[str], None] = print,
) -> list[dict]:
    """Every (optimizer, lr, seed) of ``grids`` (seed by seed), then one ladder step past an edge
    where an optimizer's seed-mean best lies there; runs already in ``previous`` (rows of an earlier,
    interrupted call) are skipped and counted. Returns the new rows."""
    previous = previous or []
    done = {(r["optimizer"], float(r["lr"]), int(r["seed"])) for r in previous}
    rows: list[dict] = []
    cache = {seed: batches(seed) for seed in range(seeds)}
    started = time.perf_counter()

    def run(entry: OptimizerEntry, lr: float, seed: int) -> None:
        if (entry.label, lr, seed) in done:
            return
        row = _run(workload, entry, lr, seed, cache[seed])
        rows.append(row)
        on_row(row)
        status = "DIVERGED" if row["diverged"] else f"val {row['final_val_loss']:.4f}"
        progress(
            f"{entry.label:<36} lr={lr:<7g} seed={seed} {status:<12} worst RMS/lr "
            f"{row['worst_update_rms_over_lr']:8.3g} ({row['wall_s']:.0f} s, total {time.perf_counter() - started:.0f} s)"
        )

    for seed in range(seeds):
        for entry in chosen:
            for lr in grids[entry.label]:
                run(entry, lr, seed)
    if extend:
        for entry in chosen:
            grid = sorted(grids[entry.label])
            mine = pd.DataFrame([r for r in previous + rows if r["optimizer"] == entry.label])
            if mine.empty or len(grid) < 2:
                continue
            best = _best_lr(mine[mine["lr"].isin(grid)])
            edge = 1 if best == grid[-1] else -1 if best == grid[0] else 0
            extra = _step_ladder(best, edge) if edge else None
            if extra is not None:
                grids[entry.label] = grid + [extra]
                for seed in range(seeds):
                    run(entry, extra, seed)
    return rows


def _spread(values: pd.Series) -> float:
    finite = values[values.map(math.isfinite)]
    return (finite.max() - finite.min()) / 2 if len(finite) > 1 else math.nan


def lr_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (optimizer, lr): seed-mean final loss, ± half the seed range, diverged seeds, worst RMS/lr."""
    out = []
    for (optimizer, lr), g in runs.groupby(["optimizer", "lr"], sort=False):
        finite = g["final_val_loss"][g["final_val_loss"].map(math.isfinite)]
        out.append(
            {
                "optimizer": optimizer,
                "lr": lr,
                "seeds": len(g),
                "final val loss": finite.mean() if len(finite) else math.nan,
                "± half-range": _spread(g["final_val_loss"]),
                "diverged": f"{int(g['diverged'].sum())}/{len(g)}",
                "worst RMS(ΔW)/lr": g["worst_update_rms_over_lr"].max(),
            }
        )
    table = pd.DataFrame(out)
    order = {label: i for i, label in enumerate(dict.fromkeys(runs["optimizer"]))}
    return table.sort_values(["optimizer", "lr"], key=lambda c: c.map(order) if c.name == "optimizer" else c)


def _at(runs: pd.DataFrame, lr: float | None) -> float:
    """Seed-mean final loss at ``lr`` (+∞ when a seed diverged, NaN when not run)."""
    g = runs[runs["lr"].sub(lr or 0).abs() < 1e-12] if lr is not None else runs.iloc[0:0]
    if g.empty:
        return math.nan
    return math.inf if g["diverged"].any() else float(g["final_val_loss"].mean())


def sensitivity_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer: best lr, its loss, the losses one ladder step above (≈ 3×) and below (≈ ÷3)
    and their ratios to the best (inf: diverged; NaN: not run), and the worst RMS(ΔW)/lr up to ≈ 3× best."""
    out = []
    for optimizer, g in runs.groupby("optimizer", sort=False):
        best = _best_lr(g)
        lrs = sorted(g["lr"].unique())
        up, down = _step_ladder(best, 1), _step_ladder(best, -1)
        loss, loss_up, loss_down = _at(g, best), _at(g, up), _at(g, down)
        up_ok = g[g["lr"] <= (up or best) * 1.0001]
        out.append(
            {
                "optimizer": optimizer,
                "best lr": f"{best:g}{'*' if best in (lrs[0], lrs[-1]) else ''}",
                "loss at best": loss,
                "± half-range": _spread(g[g["lr"] == best]["final_val_loss"]),
                "lr ≈3×": up,
                "loss ≈3×": loss_up,
                "ratio ≈3×": loss_up / loss,
                "loss ≈÷3": loss_down,
                "ratio ≈÷3": loss_down / loss,
                "diverged at lr": ", ".join(f"{x:g}" for x in lrs if g[g["lr"] == x]["diverged"].any())
                or "–",
                "worst RMS/lr ≤ 3× best": up_ok["worst_update_rms_over_lr"].max(),
            }
        )
    return pd.DataFrame(out)


def fmt(table: pd.DataFrame) -> str:
    """``table`` as GitHub Markdown (4 significant digits; NaN: ``–``, not run; inf: diverged)."""
    text = table.to_markdown(index=False, floatfmt=".4g")
    return text.replace(" nan ", "  –  ").replace(" inf ", " div ")


def _markdown(runs: pd.DataFrame, skipped: list[OptimizerEntry], command: str, data: str = "") -> str:
    per_lr, summary = lr_table(runs), sensitivity_table(runs)
    lines = [
        "# Learning-rate sensitivity on the char-level LM",
        "",
        *([f"Text: {data}.", ""] if data else []),
        f"`{command}`, {time.strftime('%Y-%m-%d')}: {len(runs)} runs, {runs['wall_s'].sum():.0f} s of run time in "
        f"all, cpu ({'/'.join(map(str, sorted(runs['threads'].unique())))} torch threads per run). "
        f"Quick char-LM workload (CharGPT d128 × 2, batch 16), {int(runs['steps'].max())} steps, "
        f"seeds 0–{runs['seed'].max()}; protocol in `perf/bench_lr.py`.",
        "",
        *(f"- {e.label}: {e.skip}" for e in skipped),
        "",
        "## Per optimizer",
        "",
        fmt(summary),
        "",
        "## Per learning rate",
        "",
        fmt(per_lr),
        "",
    ]
    return "\n".join(lines)


def _append(path: Path, row: dict) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    """Run the grid, print and write the tables, draw the figure; returns the runs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--optimizers", default=None, help="comma-separated labels (default: all)")
    parser.add_argument(
        "--lrs", default=None, help="one comma-separated grid for all (default: per optimizer)"
    )
    parser.add_argument("--no-extend", action="store_true", help="no extra lr past a grid edge")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / f"lr_sensitivity_{time.strftime('%Y-%m-%d')}.md"
    )
    parser.add_argument("--resume", action="store_true", help="keep the CSV's rows and skip their runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (at most the cores)")
    corpora = ("auto", "python_stdlib")
    parser.add_argument("--corpus", default="auto", choices=corpora, help="python_stdlib: held-out text")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(args.threads, torch.get_num_threads())))
    chosen = entries(None if args.optimizers is None else [s.strip() for s in args.optimizers.split(",")])
    skipped = [e for e in chosen if e.build is None]
    for e in skipped:
        print(f"{e.label}: {e.skip}")
    runnable = [e for e in chosen if e.build is not None]
    fixed = None if args.lrs is None else [float(x) for x in args.lrs.split(",")]
    grids = {e.label: fixed or lr_grid(CENTERS[e.label]) for e in runnable}
    path = args.out.with_suffix(".csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = pd.read_csv(path).to_dict("records") if args.resume and path.is_file() else []
    if not args.resume and path.is_file():
        path.unlink()
    workload, batches = lm_workload(args.steps, tiny=args.tiny, corpus=args.corpus)
    started = time.perf_counter()
    run_grid(
        workload,
        batches,
        runnable,
        grids,
        args.seeds,
        lambda row: _append(path, row),
        previous,
        not args.no_extend,
    )
    runs = pd.read_csv(path)
    wall = time.perf_counter() - started
    print("\n" + fmt(lr_table(runs)) + "\n\n" + fmt(sensitivity_table(runs)))
    command = "python -m perf.bench_lr " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(_markdown(runs, skipped, command.strip(), workload.note), encoding="utf-8")
    from perf.report_plots import plot_lr_sensitivity

    print(f"wrote {args.out}, {path}, {plot_lr_sensitivity(runs, path.with_suffix('.png'))} ({wall:.0f} s)")
    return runs


if __name__ == "__main__":
    main()
