"""Benchmark of ``rank="auto"`` (tuned ranks, dense and sketched) against full and fixed ranks on the demo model.

Usage (from the repository root)::

    python -m perf.bench_autotune [--dataset auto|digits|fashion_mnist] [--steps 200] [--seeds 2]
                                  [--tune-steps 50] [--ranks 4,16,32] [--lr 3e-3] [--tuning PATH]
                                  [--csv perf/results/autotune.csv] [--out FILE.md]
                                  [--device auto|cpu|cuda]

The demo model of :mod:`perf.demo` (an MLP on Fashion-MNIST when installed, else on scikit-learn's
digits) is first tuned with :func:`autotune.tune_model` (or ``--tuning`` loads an existing file),
then trained, for each seed, from one initialisation on one minibatch sequence with each optimizer:

- ``full``: ``tk.Kron`` with ``rank=None`` (default block size 1024): the baseline;
- ``full, tuned blocks``: ``rank=None`` at the tuned block sizes (separates the block-size effect);
- ``rank=k``: one fixed rank for every layer (``--ranks``), dense factors;
- ``rank=auto``: ``tk.Kron(rank="auto", tuning=PATH)``, each layer's tuned ranks and block size;
- ``rank=k sketch``: fixed rank with ``sketch=True`` (rank-ℓ factor sketches, ℓ = 2k);
- ``rank=auto sketch``: ``tk.Kron(rank="auto", sketch=True, tuning=PATH)``, each layer's tuned
  sketched ranks k_A, k_B and sketch rank ℓ;
- AdamW, for reference.

Dense factors keep d × d matrices whatever the rank, so only the sketched rows save memory.
Columns (seed means): median ``opt.step()`` time; preconditioner memory (the Kronecker factor or
sketch state of every block, ``opt.state[p]["blocks"]``) and the whole optimizer state (momentum
and the AdamW path included), both also relative to ``full``; the final loss on the whole training
split (± its seed std) and the test accuracy. The verdict line checks the goal "``rank=auto sketch``
needs at least 3× less preconditioner memory than ``full`` at an equal or better (≤) mean final
loss". The table is also written as CSV (``--csv``, with the run's metadata on every row). On the
CPU the thread count is the tuned ``cpu_threads`` knob unless ``--threads`` is given. Tuning and
training run on ``--device`` (default ``auto``: CUDA when available, else the CPU), which the
report and the CSV state; on CUDA the step timer synchronises at both ends. This is a benchmark,
not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tritonkron as tk
from autotune.__main__ import ProgressBar
from autotune.measure import state_bytes
from autotune.search import SearchOptions, tune_model
from perf.demo_training import batch_schedule, evaluate, make_mlp
from perf.device import add_device_argument, clock, describe_device
from perf.workloads import FASHION_MNIST_ROOT, Dataset, load_digits_dataset, load_image_classification
from tritonkron.optim import BLOCKS
from tritonkron.tuning.file import TuningTable, device_name, load_tuning
from tritonkron.tuning.lookup import sketch_tuning_for, tuned_param_groups

BETAS = (0.9, 0.98)
GOAL_MEMORY = 3.0
"""The goal: ``rank=auto sketch`` needs this many times less preconditioner memory than ``full``."""

Builder = Callable[[nn.Module, float], torch.optim.Optimizer]


def _load(dataset: str, limit: int) -> Dataset:
    if dataset == "digits":
        return load_digits_dataset()
    return load_image_classification("fashion_mnist", root=FASHION_MNIST_ROOT, limit=limit)


def demo_model(data: Dataset, seed: int) -> nn.Module:
    """The demo MLP of :mod:`perf.demo` (hidden 128, 64 on Fashion-MNIST; 64 on digits), on ``data``'s device."""
    torch.manual_seed(seed)
    hidden = [128, 64] if data.name == "fashion_mnist" else [64]
    return make_mlp(data.num_features, hidden, data.num_classes).to(data.x_train.device)


def demo_factory(
    data: Dataset, seed: int, batch_size: int
) -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    """``(model, loss_fn)`` as ``python -m autotune`` expects: loss on a fresh random training batch."""
    model = demo_model(data, seed)
    gen = torch.Generator().manual_seed(seed + 1)

    def loss_fn(m: nn.Module) -> Tensor:
        idx = torch.randint(0, data.x_train.shape[0], (batch_size,), generator=gen).to(data.x_train.device)
        return F.cross_entropy(m(data.x_train[idx]), data.y_train[idx])

    return model, loss_fn


def _full_tuned_blocks(model: nn.Module, table: TuningTable, lr: float) -> list[dict[str, Any]]:
    """Param groups at the tuned block sizes with full rank (``rank=None``)."""
    device = device_name(next(model.parameters()).device)
    groups = tuned_param_groups(model.parameters(), table, device, lr=lr)
    for group in groups:
        if "rank" in group:
            group["rank"] = None
    return groups


def optimizers(ranks: Sequence[int], table: TuningTable) -> dict[str, Builder]:
    """The compared optimizers by label (see the module docstring)."""

    def kron(**options: Any) -> Builder:
        return lambda model, lr: tk.Kron(model.parameters(), lr=lr, betas=BETAS, **options)

    specs: dict[str, Builder] = {"full": kron()}
    specs["full, tuned blocks"] = lambda model, lr: tk.Kron(_full_tuned_blocks(model, table, lr), betas=BETAS)
    specs |= {f"rank={k}": kron(rank=k) for k in ranks}
    specs["rank=auto"] = kron(rank="auto", tuning=table)
    specs |= {f"rank={k} sketch": kron(rank=k, sketch=True) for k in ranks}
    specs["rank=auto sketch"] = kron(rank="auto", sketch=True, tuning=table)
    specs["AdamW"] = lambda model, lr: torch.optim.AdamW(
        model.parameters(), lr=lr, betas=BETAS, weight_decay=0.0
    )
    return specs


def _architecture(model: nn.Module) -> str:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return " → ".join(str(w) for w in [linears[0].in_features, *(m.out_features for m in linears)])


def _layer_ranks(label: str, model: nn.Module, table: TuningTable) -> str:
    if label == "AdamW":
        return "-"
    mats = [p for p in model.parameters() if p.dim() >= 2]
    dev = device_name(mats[0].device) if mats else "cpu"
    if label == "rank=auto sketch":
        tuned = [sketch_tuning_for(table, p.shape, p.dtype, dev) for p in mats]
        return "; ".join(f"{c.rank_a}/{c.rank_b} ℓ{c.sketch_rank}" if c else "2k" for c in tuned)
    if label == "rank=auto":
        entries = [table.lookup(p.shape, p.dtype, dev) for p in mats]
        return ", ".join(f"{e.rank_a or 'full'}/{e.rank_b or 'full'}" if e else "full" for e in entries)
    if label.startswith("full"):
        return "full"
    return label.removeprefix("rank=").removesuffix(" sketch")


def precond_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the preconditioner state: every block's factors or sketches (``state[p]["blocks"]``)."""
    return sum(state_bytes(state.get(BLOCKS, [])) for state in opt.state.values())


def train(
    data: Dataset, build: Builder, init: dict[str, Tensor], batches: Tensor, lr: float, seed: int
) -> dict[str, float]:
    """Train the demo model from ``init`` on ``batches``; step-time median, memory, final metrics."""
    model = demo_model(data, seed)
    model.load_state_dict(init)
    opt = build(model, lr)
    device = data.x_train.device
    times = []
    for idx in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not math.isfinite(float(loss.detach())):
            return dict.fromkeys(("step_ms", "precond_mb", "state_mb", "train_loss", "test_acc"), math.nan)
        loss.backward()
        start = clock(device)
        opt.step()
        times.append(clock(device) - start)
    model.eval()
    train_loss, _ = evaluate(model, data.x_train, data.y_train)
    _, test_acc = evaluate(model, data.x_test, data.y_test)
    return {
        "step_ms": 1e3 * statistics.median(times[1:] or times),  # the first step only initialises
        "precond_mb": precond_bytes(opt) / 2**20,
        "state_mb": state_bytes(list(opt.state.values())) / 2**20,
        "train_loss": train_loss,
        "test_acc": 100 * test_acc,
    }


def _parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"ranks must be positive ints; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m perf.bench_autotune``."""
    p = argparse.ArgumentParser(prog="python -m perf.bench_autotune", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("auto", "digits", "fashion_mnist"), default="auto")
    p.add_argument(
        "--limit", type=int, default=10_000, help="Fashion-MNIST examples per split (default 10000)"
    )
    p.add_argument("--steps", type=int, default=200, help="training steps per optimizer (default 200)")
    p.add_argument(
        "--seeds", type=int, default=2, help="seeds (initialisation and batches) per optimizer (default 2)"
    )
    p.add_argument("--batch-size", type=int, default=128, help="minibatch size (default 128)")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate of every optimizer (default 3e-3)")
    p.add_argument("--ranks", type=_parse_ints, default=[4, 16, 32], help="fixed ranks (default 4,16,32)")
    p.add_argument("--tune-steps", type=int, default=50, help="calibration steps of the tuning (default 50)")
    p.add_argument("--tuning", type=Path, default=None, help="use this tuning file instead of tuning")
    p.add_argument("--tuning-out", type=Path, default=None, help="where to write the tuning file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: tuned cpu_threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", type=Path, default=Path("perf/results/autotune.csv"),
                   help="write the table as CSV here (default perf/results/autotune.csv)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the report as Markdown here")
    add_device_argument(p)
    return p


def _tune(args: argparse.Namespace, data: Dataset) -> tuple[TuningTable, Path]:
    if args.tuning is not None:
        return load_tuning(args.tuning), args.tuning
    model, loss_fn = demo_factory(data, args.seed, args.batch_size)
    result = tune_model(model, loss_fn, SearchOptions(steps=args.tune_steps, seed=args.seed), ProgressBar())
    out = args.tuning_out or Path(tempfile.mkdtemp(prefix="tk_bench_")) / "tuning.json"
    return result.table, result.table.save(out)


def report(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Seed means per optimizer, with step time and memory also relative to ``full``.

    Args:
        rows: one dict per (optimizer, seed) with ``optimizer``, ``ranks`` and :func:`train`'s keys.
    """
    runs = pd.DataFrame(list(rows))
    grouped = runs.groupby("optimizer", sort=False)
    frame = grouped.agg(
        ranks=("ranks", "first"),
        step_ms=("step_ms", "mean"),
        precond_mb=("precond_mb", "mean"),
        state_mb=("state_mb", "mean"),
        train_loss=("train_loss", "mean"),
        loss_std=("train_loss", lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0),
        test_acc=("test_acc", "mean"),
    ).reset_index()
    full = frame.loc[frame["optimizer"] == "full"].iloc[0]
    frame.insert(3, "× full (time)", frame["step_ms"] / full["step_ms"])
    frame.insert(
        5, "÷ full (precond)", full["precond_mb"] / frame["precond_mb"].where(frame["precond_mb"] > 0)
    )
    frame.insert(7, "× full (state)", frame["state_mb"] / full["state_mb"])
    return frame.rename(
        columns={
            "step_ms": "step ms (median)",
            "precond_mb": "precond MB",
            "state_mb": "state MB",
            "train_loss": "final train loss",
            "loss_std": "± (seeds)",
            "test_acc": "test acc %",
        }  # fmt: skip
    )


def goal_verdict(frame: pd.DataFrame, label: str = "rank=auto sketch") -> tuple[bool, str]:
    """Whether ``label`` needs ≥ :data:`GOAL_MEMORY`× less preconditioner memory than ``full`` at ≤ its mean loss."""
    full = frame.loc[frame["optimizer"] == "full"].iloc[0]
    row = frame.loc[frame["optimizer"] == label].iloc[0]
    saving = float(row["÷ full (precond)"])
    loss, base = float(row["final train loss"]), float(full["final train loss"])
    met = saving >= GOAL_MEMORY and loss <= base
    text = (
        f"goal ({label}: ≥ {GOAL_MEMORY:g}× less preconditioner memory than full at equal or better "
        f"mean final loss): {'MET' if met else 'NOT MET'} — {saving:.1f}× less "
        f"({row['precond MB']:.3g} vs {full['precond MB']:.3g} MB; whole state {row['state MB']:.3g} vs "
        f"{full['state MB']:.3g} MB), loss {loss:.4f} vs {base:.4f} "
        f"(seed std {row['± (seeds)']:.4f} / {full['± (seeds)']:.4f})"
    )
    return met, text


def write_csv(frame: pd.DataFrame, path: Path, meta: dict[str, Any]) -> Path:
    """Write ``frame`` with the run's metadata (``meta``) repeated on every row."""
    out = frame.copy()
    for key, value in meta.items():
        out[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return path


def _tuned_summary(table: TuningTable) -> str:
    """Per tuned shape: block size, ranks and (when tuned) the sketched choice, on one line."""
    return "; ".join(
        f"{m}x{n}: block {e.block_size}, rank A {e.rank_a}, rank B {e.rank_b}"
        + (
            f", sketch block {e.sketch.block_size} k {e.sketch.rank_a}/{e.sketch.rank_b} ℓ {e.sketch.sketch_rank}"
            if e.sketch
            else ""
        )
        for e in table.entries
        for m, n in [e.shape]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Tune, train every optimizer for every seed, print the table and verdict, write CSV (and ``--out``)."""
    args = build_parser().parse_args(argv)
    if args.seeds < 1 or args.steps < 2:
        raise ValueError(f"--seeds must be ≥ 1 and --steps ≥ 2; got {args.seeds} and {args.steps}")
    started = time.perf_counter()
    data = _load(args.dataset, args.limit).to(args.device)
    table, tuning_path = _tune(args, data)
    knob = next((e.knobs.get("cpu_threads") for e in table.entries if "cpu_threads" in e.knobs), None)
    threads = args.threads or (knob if isinstance(knob, int) else torch.get_num_threads())
    torch.set_num_threads(threads)
    rows = []
    specs = optimizers(args.ranks, table)
    for seed in range(args.seed, args.seed + args.seeds):
        init = {k: v.clone() for k, v in demo_model(data, seed).state_dict().items()}
        batches = batch_schedule(data.x_train.shape[0], args.steps, args.batch_size, seed).to(args.device)
        for label, build in specs.items():
            metrics = train(data, build, init, batches, args.lr, seed)
            ranks = _layer_ranks(label, demo_model(data, seed), table)
            rows.append({"optimizer": label, "seed": seed, "ranks": ranks, **metrics})
            print(f"seed {seed} {label:<18} {metrics}", file=sys.stderr, flush=True)
    frame = report(rows)
    met, verdict = goal_verdict(frame)
    device = describe_device(args.device)
    now = dt.datetime.now(dt.timezone.utc)
    lines = [
        "# tritonkron: rank=auto (dense and sketched) vs full and fixed ranks on the demo model",
        "",
        f"- data: {data.note}",
        f"- model: MLP {_architecture(demo_model(data, args.seed))} (ReLU), cross-entropy",
        f"- {args.steps} steps of batch {args.batch_size}, lr {args.lr:g}, betas {BETAS}, "
        f"seeds {args.seed}..{args.seed + args.seeds - 1} (means)",
        f"- device: {device}",
        f"- tuning file {tuning_path} ({table.device}): {_tuned_summary(table)}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {threads} CPU thread(s); "
        f"{now:%Y-%m-%d %H:%M} UTC; total {time.perf_counter() - started:.0f} s",
        "",
        frame.to_markdown(index=False, floatfmt=".4g"),
        "",
        f"- {verdict}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    meta = {
        "dataset": data.name,
        "steps": args.steps,
        "seeds": args.seeds,
        "lr": args.lr,
        "threads": threads,
        "device": device,
        "torch": torch.__version__,
        "date_utc": f"{now:%Y-%m-%d %H:%M}",
        "goal_met": met,
    }
    print(f"wrote {write_csv(frame, args.csv, meta)}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
