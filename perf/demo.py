"""Autotune, then train a small MLP on real images with AdamW and with ``tritonkron.Kron``, and compare them.

Usage (from the repository root)::

    python -m perf.demo [--steps N] [--seeds S] [--lrs 1e-3,3e-3] [--tune-steps 30]
                        [--device auto|cpu|cuda] [--out perf/results/demo.md]

First the tuner (:func:`autotune.tune_model`, what ``python -m autotune`` runs) calibrates the
demo MLP for ``--tune-steps`` steps on the training split and writes its tuning file next to the
report (``tuning.json`` in ``--out``'s folder); ``Kron(rank="auto", tuning=...)`` and
``Kron(rank="auto", sketch=True, tuning=...)`` are then trained with the other configurations,
and the report includes the tuner's per-shape summary. Training runs with the tuned
``cpu_threads`` knob. Every optimizer configuration is trained from the same initial weights on the same minibatch
sequence for each seed, over a small learning-rate grid; the learning rate with the lowest mean
final training loss (full training split, after the last step) is reported. Only ``opt.step()`` is
timed. Data, models, optimizers and the tuning run live on ``--device`` (default ``auto``: CUDA
when available, else the CPU; :mod:`perf.device`), which the report states. The table is printed
and written as Markdown to ``--out``.

Modules: :mod:`perf.demo_training` (optimizer configurations, the MLP, one training run),
:mod:`perf.demo_tables` (the result tables), :mod:`perf.demo_autotune` (the autotune step); this
module is the command line and writes the report. Their public names are importable from here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import tritonkron as tk
from autotune.__main__ import summary_frame
from autotune.measure import cpu_threads
from autotune.search import TuneResult
from perf.cli import positive_int
from perf.demo_autotune import autotune_demo, autotune_section, tuned_threads
from perf.demo_tables import grid_table, summary_table, to_markdown
from perf.demo_training import (
    BETAS,
    EPS,
    OptimizerFactory,
    OptimizerSpec,
    RunResult,
    batch_schedule,
    evaluate,
    make_mlp,
    optimizer_specs,
    train_run,
)
from perf.device import add_device_argument, describe_device
from perf.workloads import (
    FASHION_MNIST_ROOT,
    Dataset,
    load_digits_dataset,
    load_fashion_mnist,
    load_image_classification,
)

__all__ = [
    "BETAS",
    "DEFAULT_LRS",
    "EPS",
    "OptimizerFactory",
    "OptimizerSpec",
    "RunResult",
    "autotune_demo",
    "autotune_section",
    "batch_schedule",
    "build_parser",
    "evaluate",
    "grid_table",
    "load_data",
    "main",
    "make_mlp",
    "optimizer_specs",
    "summary_table",
    "to_markdown",
    "train_run",
    "tuned_threads",
]


def _parse_lrs(text: str) -> list[float]:
    """``--lrs``: comma-separated positive finite learning rates."""
    try:
        lrs = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lrs must be comma-separated numbers; got {text!r}") from None
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise argparse.ArgumentTypeError(f"--lrs must be positive numbers; got {text!r}")
    return lrs


def _parse_hidden(text: str) -> list[int]:
    """``--hidden``: comma-separated positive layer widths."""
    try:
        hidden = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden must be comma-separated integers; got {text!r}") from None
    if any(h < 1 for h in hidden):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive; got {text!r}")
    return hidden


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m perf.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m perf.demo",
        description="Compare AdamW with tritonkron.Kron on a small MLP trained on real images.",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=150, help="optimizer steps per run (default 150)"
    )
    parser.add_argument("--seeds", type=positive_int, default=2, help="seeds per learning rate (default 2)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="minibatch size (default 128)")
    parser.add_argument(
        "--lrs",
        type=_parse_lrs,
        default=None,
        help="comma-separated learning-rate grid (default 1e-3,3e-3,1e-2)",
    )
    parser.add_argument(
        "--dataset",
        choices=("auto", "fashion_mnist", "digits"),
        default="auto",
        help="auto: Fashion-MNIST when installed, else scikit-learn digits (default auto)",
    )
    parser.add_argument(
        "--fashion-root", default=FASHION_MNIST_ROOT, help="folder of the Fashion-MNIST IDX files"
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=10_000,
        help="Fashion-MNIST examples kept per split (default 10000)",
    )
    parser.add_argument(
        "--hidden",
        type=_parse_hidden,
        default=None,
        help="comma-separated hidden widths (default 128,64 for Fashion-MNIST, 64 for digits)",
    )
    parser.add_argument(
        "--rank", type=positive_int, default=16, help="rank of the subspace Kron config (default 16)"
    )
    parser.add_argument(
        "--precondition-every", type=positive_int, default=10, help="Kron basis refresh period (default 10)"
    )
    parser.add_argument(
        "--tune-steps",
        type=positive_int,
        default=30,
        help="calibration steps of the autotune step; its tuning.json goes next to --out (default 30)",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("perf/results/demo.md"),
        help="Markdown output (default perf/results/demo.md)",
    )
    return parser


DEFAULT_LRS = (1e-3, 3e-3, 1e-2)


def load_data(args: argparse.Namespace) -> Dataset:
    """The data set chosen by ``--dataset``."""
    if args.dataset == "digits":
        return load_digits_dataset()
    if args.dataset == "fashion_mnist":
        return load_fashion_mnist(args.fashion_root, limit=args.limit)
    return load_image_classification("fashion_mnist", root=args.fashion_root, limit=args.limit)


def _autotune_step(
    args: argparse.Namespace, data: Dataset, hidden: Sequence[int]
) -> tuple[TuneResult, Path, float]:
    """Tune the demo MLP on ``data``'s device, print the tuner's summary; (result, tuning file, seconds)."""
    print(f"autotune: calibrating {args.tune_steps} steps ...", flush=True)
    tuned, tuning_path, tune_s = autotune_demo(
        data,
        hidden,
        args.out.parent / "tuning.json",
        steps=args.tune_steps,
        batch_size=args.batch_size,
        precondition_every=args.precondition_every,
    )
    print(to_markdown(summary_frame(tuned)))
    print(f"autotune: wrote {tuning_path} on {tuned.device} in {tune_s:.0f} s", flush=True)
    return tuned, tuning_path, tune_s


def _train_grid(
    data: Dataset,
    specs: Sequence[OptimizerSpec],
    lrs: Sequence[float],
    schedules: dict[int, torch.Tensor],
    hidden: Sequence[int],
    threads: int,
) -> tuple[list[RunResult], str]:
    """Train every (spec, lr, seed) with ``threads`` torch threads; the runs and the device line.

    The device line (:func:`perf.device.describe_device` of the data's device) is taken while the
    tuned thread count is in force, so on the CPU it gives the threads the runs used.
    """
    results: list[RunResult] = []
    total = len(specs) * len(lrs) * len(schedules)
    with cpu_threads(threads):  # surplus threads on a shared CPU slow small matrix products badly
        device = describe_device(data.x_train.device)
        for spec in specs:
            for lr in lrs:
                for seed, batches in schedules.items():
                    result = train_run(data, spec, lr, seed, batches, hidden)
                    results.append(result)
                    print(
                        f"[{len(results):>3}/{total}] {spec.label:<24} lr={lr:<8g} seed={seed}  "
                        f"train loss {result.train_loss:.4f}  test acc {100 * result.test_accuracy:5.1f}%  "
                        f"({result.wall_s:.1f} s)",
                        flush=True,
                    )
    return results, device


def _grid_settings(args: argparse.Namespace, data: Dataset) -> tuple[list[int], list[float], list[int]]:
    """Hidden widths (default by data set), learning-rate grid and seeds of the comparison."""
    hidden = args.hidden if args.hidden is not None else ([128, 64] if data.name == "fashion_mnist" else [64])
    lrs = args.lrs if args.lrs is not None else list(DEFAULT_LRS)
    return hidden, lrs, list(range(args.seeds))


def _report_header(
    args: argparse.Namespace,
    data: Dataset,
    architecture: str,
    seeds: Sequence[int],
    lrs: Sequence[float],
    tuning_path: Path,
    device: str,
    threads: int,
    elapsed: float,
) -> list[str]:
    """The report's title, set-up bullets and the paragraph explaining the summary table."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# tritonkron demo: autotune, then AdamW vs Kron on a small MLP",
        "",
        f"- dataset: `{data.name}` — {data.note}",
        f"- model: MLP {architecture} (ReLU), cross-entropy, batch {args.batch_size}",
        f"- steps: {args.steps} per run; seeds: {args.seeds} ({', '.join(map(str, seeds))}); "
        f"learning-rate grid: {', '.join(f'{lr:g}' for lr in lrs)}",
        f"- all optimizers: betas {BETAS}, eps {EPS:g}, weight decay 0; Kron precondition_every "
        f"{args.precondition_every}, block_size 1024 (rank=auto: the tuned block sizes and ranks, "
        f"`{tuning_path}`)",
        f"- device: {device}",
        f"- torch {torch.__version__}, tritonkron {getattr(tk, '__version__', '?')}, Python {platform.python_version()}",
        f"- date: {now}; CPU threads: {threads} (torch, the tuned `cpu_threads`) of {os.cpu_count()} (os); "
        f"total time {elapsed:.0f} s",
        "",
        "Best learning rate per optimizer = lowest mean final loss on the whole training split. "
        "Losses and accuracy are seed means at that learning rate (± is the seed std of the train loss). "
        "Step time is the median of `opt.step()` over all runs of that optimizer; × AdamW is its ratio "
        "to AdamW's median measured in the same process. NaN means a run diverged.",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print the summary table and write it as Markdown to ``--out``.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The process exit status (0).
    """
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    data = load_data(args).to(args.device)
    hidden, lrs, seeds = _grid_settings(args, data)
    if args.tune_steps < 2:
        raise ValueError(f"--tune-steps must be at least 2; got {args.tune_steps}")
    architecture = " → ".join(str(w) for w in [data.num_features, *hidden, data.num_classes])
    print(f"data: {data.note}")
    print(f"device: {describe_device(args.device)}")
    tuned, tuning_path, tune_s = _autotune_step(args, data, hidden)
    specs = optimizer_specs(args.rank, args.precondition_every, tuning_path)
    print(
        f"model: MLP {architecture}; {args.steps} steps of batch {args.batch_size}; seeds {seeds}; lrs {lrs}"
    )
    schedules = {
        seed: batch_schedule(data.x_train.shape[0], args.steps, args.batch_size, seed).to(args.device)
        for seed in seeds
    }
    threads = tuned_threads(tuned)
    results, device = _train_grid(data, specs, lrs, schedules, hidden, threads)
    total = len(results)
    summary = summary_table(results)
    grid = grid_table(results)
    elapsed = time.perf_counter() - started
    table = to_markdown(summary)
    print()
    print(table)
    print(f"\n{total} runs in {elapsed:.0f} s")

    lines = _report_header(args, data, architecture, seeds, lrs, tuning_path, device, threads, elapsed)
    lines += [
        table,
        "",
        *autotune_section(tuned, tuning_path, tune_s),
        "## All grid points",
        "",
        to_markdown(grid),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
