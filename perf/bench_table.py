"""The command line and CSV output shared by the step-timing benchmarks (``bench_compile``, ``bench_stacking``)."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

from perf.device import add_device_argument, describe_device


def timing_parser(doc: str, default_out: Path, warmup_help: str) -> argparse.ArgumentParser:
    """``--steps`` (timed steps, default 40: 4 refreshes), ``--warmup`` (default 12), ``--device`` and ``--out``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps (default 40: 4 refreshes)")
    parser.add_argument("--warmup", type=int, default=12, help=warmup_help)
    add_device_argument(parser)
    parser.add_argument("--out", type=Path, default=default_out)
    return parser


def print_and_write(table: pd.DataFrame, out: Path, device: torch.device | str = "cpu") -> None:
    """Print ``table`` (Markdown), add the device, machine, its load, torch, commit and date, write it as CSV."""
    from perf.__main__ import collect_env

    print(table.to_markdown(index=False, floatfmt=".3g"))
    env = collect_env(device)
    table["device"] = env["device"]
    table["cpu"] = env["cpu"]
    table["load_start"] = env["load_start"]
    table["torch"] = torch.__version__
    table["commit"] = env["git_commit"]
    table["date"] = dt.date.today().isoformat()
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"wrote {out}")


def timing_main(
    argv: Sequence[str] | None,
    doc: str,
    default_out: Path,
    title: str,
    run: Callable[..., pd.DataFrame],
    min_warmup: int = 0,
    warmup_help: str = "untimed first steps",
) -> None:
    """Parse the flags, print ``title``, then ``run(steps, warmup, device=device)``'s table, and write it."""
    parser = timing_parser(doc, default_out, warmup_help)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < min_warmup:
        parser.error(f"--steps must be >= 1 and --warmup >= {min_warmup}")
    print(f"{title}, device {describe_device(args.device)}")
    print_and_write(run(args.steps, args.warmup, device=args.device), args.out, args.device)
