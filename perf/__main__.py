"""``python -m perf``: train benchmarks against the peers, step-time benchmark, and the report.

Usage (from the repository root)::

    python -m perf train [--quick] [--workloads char_lm mlp cnn] [--optimizers LABEL ...] [--seeds N]
                         [--device auto|cpu|cuda]
    python -m perf step [--full] [--optimizers LABEL ...] [--device auto|cpu|cuda]
    python -m perf report [--session ID]

``train`` runs :mod:`perf.train`'s protocol on each workload, appends every run to
``perf/results/train_runs.csv`` / ``train_curves.csv`` as it finishes, records the session in
``train_sessions.jsonl`` and renders ``perf/REPORT.md``. ``step`` appends to ``perf/results/step.csv``
and re-renders the report when a training session exists. Optimizer labels are those of
:func:`perf.peers.build_registry` (``python -m perf train --list`` prints them). ``--device``
(:mod:`perf.device`; default ``auto``: CUDA when available, else the CPU) is where the models, batches
and optimizer states live; the report and ``step.csv`` state it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from autotune.provenance import git_commit
from perf import report
from perf.cli import nonnegative_int, positive_int
from perf.device import add_device_argument, describe_device
from perf.peers import OptimizerEntry, available, build_registry
from perf.train import RunRecord, run_benchmark
from perf.train_workloads import WORKLOADS, build_workload

RESULTS = Path(__file__).resolve().parent / "results"
_VERSIONED = ("numpy", "pandas", "matplotlib", "heavyball", "pytorch-optimizer", "triton")


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else the platform's processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _load() -> str:
    """The 1-, 5- and 15-minute load averages, or ``?`` where the platform has none."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def collect_env(device: torch.device | str = "cpu") -> dict[str, object]:
    """Machine, device (:func:`perf.device.describe_device` of ``device``), versions and commit of this run."""
    import tritonkron

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tritonkron": tritonkron.__version__,
    }
    versions |= {name: available(name) or "not installed" for name in _VERSIONED}
    return {
        "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git_commit": git_commit(Path(__file__).resolve().parent) or "unknown",
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": describe_device(device),
        "platform": platform.platform(),
        "load_start": _load(),
        "versions": versions,
    }


def append_csv(path: Path, rows: list[dict[str, object]]) -> None:
    """Append ``rows``; when the columns changed since the file was started, rewrite it with the union."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    if path.is_file() and path.stat().st_size > 0:
        with path.open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if header != columns:
            merged = pd.concat([pd.read_csv(path), pd.DataFrame(rows)], ignore_index=True)
            merged.to_csv(path, index=False)
            return
        new = False
    else:
        new = True
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _select(
    entries: list[OptimizerEntry], wanted: Sequence[str] | None
) -> tuple[list[OptimizerEntry], list[dict]]:
    """The entries to run, and the metadata of every entry (with skip / not-requested status)."""
    labels = {e.label for e in entries}
    unknown = [w for w in wanted or () if w not in labels]
    if unknown:
        raise SystemExit(f"unknown optimizer labels {unknown}; known: {sorted(labels)}")
    chosen = [e for e in entries if wanted is None or e.label in wanted]
    meta = []
    for e in entries:
        row = {k: v for k, v in dataclasses.asdict(e).items() if k != "build"}
        if e not in chosen and row["skip"] is None:
            row["skip"] = "not requested (--optimizers)"
        meta.append(row)
    return chosen, meta


def _say(line: str) -> None:
    """Print a progress line at once."""
    print(line, flush=True)


def _protocol(seeds: int, ablation_grid: bool, extend_edges: int) -> str:
    """The session's protocol, as the report states it."""
    return (
        "seed 0 at every lr of the grid, best lr = lowest final validation loss"
        + (
            f" (a best lr at an edge of the grid extends it past that edge, up to {extend_edges}×)"
            if extend_edges
            else ""
        )
        + (f", then seeds 1..{seeds - 1} at that lr; " if seeds > 1 else " (one seed); ")
        + (
            "tritonkron ablations on char_lm only, one seed, at Kron logdet's lr (no grid); "
            if not ablation_grid
            else "tritonkron ablations get the grid too; "
        )
        + "same initial weights and batches per seed for every optimizer; weight decay 0; "
        "refresh every 10 steps for all Shampoo-family methods; Muon with float32 Newton–Schulz "
        "(torch's own is bfloat16; the step section measures both); heavyball eager (`heavyball.utils.compile_mode = None`), "
        "so no compilation in any step time"
    )


def _session_meta(
    args: argparse.Namespace,
    session: str,
    env: dict[str, object],
    seeds: int,
    ablation_grid: bool,
    extend_edges: int,
    entries_meta: list[dict],
) -> dict[str, object]:
    """The session's record for ``train_sessions.jsonl`` (workloads are added as they are built)."""
    return {
        "session": session,
        "quick": bool(args.quick or args.tiny),
        "command": "python -m perf " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
        "env": env,
        "seeds": seeds,
        "ablation_grid": ablation_grid,
        "protocol": _protocol(seeds, ablation_grid, extend_edges),
        "entries": entries_meta,
        "workloads": {},
    }


def _run_recorder(
    results: Path, session: str, env: dict[str, object], data: str
) -> Callable[[RunRecord], None]:
    """A callback appending each finished run to ``train_runs.csv`` and its curve to ``train_curves.csv``."""

    def record(r: RunRecord) -> None:
        """Append run ``r`` (stamped with the session, commit, device and data) and its curve."""
        row = {"session": session, "git_commit": env["git_commit"], "device": env["device"], "data": data}
        row |= {k: v for k, v in dataclasses.asdict(r).items() if k != "curve"}
        append_csv(results / "train_runs.csv", [row])
        keys = ("workload", "optimizer", "lr", "seed")
        head = {"session": session} | {k: getattr(r, k) for k in keys}
        curve = [
            head | dict(zip(("step", "train_s", "train_loss", "val_loss", "val_acc"), c, strict=True))
            for c in r.curve
        ]
        append_csv(results / "train_curves.csv", curve)

    return record


def _train_workload(
    args: argparse.Namespace,
    name: str,
    chosen: list[OptimizerEntry],
    meta: dict[str, object],
    env: dict[str, object],
    seeds: int,
    ablation_grid: bool,
    extend_edges: int,
) -> None:
    """Build workload ``name``, add it to ``meta``'s workloads and run the benchmark protocol on it."""
    workload = build_workload(name, quick=args.quick, tiny=args.tiny, device=args.device)
    meta["workloads"][name] = {  # type: ignore[index]
        "title": workload.title,
        "data": workload.data,
        "note": workload.note,
        "params": workload.params,
        "steps": workload.steps,
        "eval_every": workload.eval_every,
        "lrs": list(workload.lrs),
    }
    _say(f"{name}: {workload.title}; {workload.params:,} parameters; {workload.note}")
    record = _run_recorder(args.results_dir, str(meta["session"]), env, workload.data)
    # Quick mode runs the tritonkron ablations on the headline workload only, with one seed.
    entries = chosen if ablation_grid or name == "char_lm" else [e for e in chosen if not e.ablation]
    run_benchmark(
        workload,
        entries,
        seeds,
        ablation_grid,
        ablation_seeds=None if ablation_grid else 1,
        on_record=record,
        progress=_say,
        extend_edges=extend_edges,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Run the training benchmark and render the report."""
    results: Path = args.results_dir
    ranks = (4,) if args.tiny else (8, 32)
    chosen, entries_meta = _select([e for e in build_registry(ranks) if not e.step_only], args.optimizers)
    if args.no_ablations:
        chosen = [e for e in chosen if not e.ablation]
    seeds = args.seeds if args.seeds is not None else (2 if (args.quick or args.tiny) else 3)
    session = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    started = time.perf_counter()
    env = collect_env(args.device)
    ablation_grid = not (args.quick or args.tiny)
    extend_edges = (
        args.extend_edges if args.extend_edges is not None else (1 if args.quick or args.tiny else 2)
    )
    meta = _session_meta(args, session, env, seeds, ablation_grid, extend_edges, entries_meta)
    _say(f"session {session}; commit {env['git_commit']}; device {env['device']}; {env['cpu']}")
    for e in entries_meta:
        if e["skip"]:
            _say(f"  {e['label']}: {e['skip']}")
    for name in args.workloads:
        _train_workload(args, name, chosen, meta, env, seeds, ablation_grid, extend_edges)
    meta["elapsed_s"] = time.perf_counter() - started
    meta["load_end"] = _load()
    with (results / "train_sessions.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(meta) + "\n")
    out = report.render(results, args.out)
    _say(f"{meta['elapsed_s']:.0f} s in all; wrote {out}")
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    """Run the step-time benchmark, append to step.csv and re-render the report if possible."""
    from perf.bench_step import StepCase, bench_cases, run_step_bench

    entries = [e for e in build_registry() if not e.ablation or e.label.endswith("sketch")]
    chosen, _ = _select(entries, args.optimizers)
    for e in chosen:
        if e.skip:
            _say(f"  {e.label}: {e.skip}")
    env = collect_env(args.device)
    _say(f"device {env['device']}")
    cases = [StepCase("tiny/attn_qkv", 16, 48)] if args.tiny else bench_cases(args.full)
    steps = 3 if args.tiny else args.steps
    warmup = 1 if args.tiny else 11
    rows = run_step_bench(chosen, cases, warmup=warmup, steps=steps, progress=_say, device=args.device)
    session = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stamp = {"session": session, "op": "optimizer_step", "dtype": "float32", "device": env["device"]}
    tail = {"torch": torch.__version__, "triton": env["versions"]["triton"], "git_commit": env["git_commit"]}
    tail |= {"cpu": env["cpu"], "threads": env["threads"], "timestamp": env["timestamp"]}
    columns = ("unit", "p50", "p20", "p80", "mean", "note")
    append_csv(
        args.results_dir / "step.csv", [stamp | r | {c: r.get(c, "") for c in columns} | tail for r in rows]
    )
    if (args.results_dir / "train_sessions.jsonl").is_file():
        _say(f"wrote {report.render(args.results_dir, args.out)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Render the report from the CSVs."""
    _say(f"wrote {report.render(args.results_dir, args.out, args.session)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="CSV and PNG folder (default perf/results)"
    )
    common.add_argument(
        "--out", type=Path, default=None, help="report path (default <results-dir>/../REPORT.md)"
    )
    train = sub.add_parser("train", parents=[common], help="train every optimizer on the workloads")
    train.add_argument("--quick", action="store_true", help="the ~10-minute budget")
    train.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # seconds-long test run
    train.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    train.add_argument("--optimizers", nargs="+", default=None, help="labels to run (default all)")
    train.add_argument(
        "--seeds", type=positive_int, default=None, help="seeds at the best lr (default 2 quick, 3 full)"
    )
    train.add_argument("--no-ablations", action="store_true", help="skip the tritonkron ablation configs")
    train.add_argument("--list", action="store_true", help="print the optimizer labels and exit")
    add_device_argument(train)
    train.add_argument(
        "--extend-edges",
        type=nonnegative_int,
        default=None,
        help="extra lrs tried past an edge of the grid while the best lies there (default 1 quick, 2 full)",
    )
    step = sub.add_parser("step", parents=[common], help="step time against layer size")
    step.add_argument("--full", action="store_true", help="add Llama-7B's whole 4096×4096 matrix")
    step.add_argument("--optimizers", nargs="+", default=None)
    step.add_argument("--steps", type=positive_int, default=20, help="timed steps per case (default 20)")
    step.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    add_device_argument(step)
    rep = sub.add_parser("report", parents=[common], help="render perf/REPORT.md from the CSVs")
    rep.add_argument("--session", default=None, help="training session id (default: the latest)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m perf``."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    if args.command == "train" and args.list:
        for e in build_registry():
            _say(f"{e.label:<30} {e.kind:<10} {e.skip or e.source}{'  (ablation)' if e.ablation else ''}")
        return 0
    args.results_dir.mkdir(parents=True, exist_ok=True)
    return {"train": cmd_train, "step": cmd_step, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
