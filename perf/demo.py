"""Autotune, then train a small MLP on real images with AdamW and with ``tritonkron.Kron``, and compare them.

Usage (from the repository root)::

    python -m perf.demo [--steps N] [--seeds S] [--lrs 1e-3,3e-3] [--tune-steps 30]
                        [--out perf/results/demo.md]

First the tuner (:func:`autotune.tune_model`, what ``python -m autotune`` runs) calibrates the
demo MLP for ``--tune-steps`` steps on the training split and writes its tuning file next to the
report (``tuning.json`` in ``--out``'s folder); ``Kron(rank="auto", tuning=...)`` and
``Kron(rank="auto", sketch=True, tuning=...)`` are then trained with the other configurations,
and the report includes the tuner's per-shape summary. Training runs with the tuned
``cpu_threads`` knob. Every optimizer configuration is trained from the same initial weights on the same minibatch
sequence for each seed, over a small learning-rate grid; the learning rate with the lowest mean
final training loss (full training split, after the last step) is reported. Only ``opt.step()`` is
timed. The table is printed and written as Markdown to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import tritonkron as tk
from autotune.__main__ import summary_frame
from autotune.measure import cpu_threads
from autotune.search import SearchOptions, TuneResult, tune_model
from perf.cli import positive_int
from perf.workloads import (
    FASHION_MNIST_ROOT,
    Dataset,
    load_digits_dataset,
    load_fashion_mnist,
    load_image_classification,
)

OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]

BETAS = (0.9, 0.98)
EPS = 1e-8


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer configuration of the comparison.

    Attributes:
        label: row label in the tables.
        factory: builds the optimizer from ``(params, lr)``.
    """

    label: str
    factory: OptimizerFactory


@dataclass
class RunResult:
    """Outcome of training one configuration at one learning rate with one seed."""

    label: str
    lr: float
    seed: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    steps_done: int
    step_times: list[float] = field(repr=False)
    wall_s: float


def optimizer_specs(
    rank: int, precondition_every: int, tuning: str | os.PathLike[str] | None = None
) -> list[OptimizerSpec]:
    """The configurations compared: AdamW, Kron under each divergence, Kron in subspace mode and tuned.

    AdamW and Kron share betas, eps and (zero) weight decay so that only the preconditioner differs.

    Args:
        rank: the ``rank`` of the subspace-aware Kron configuration.
        precondition_every: Kron's basis refresh period.
        tuning: a tuning file; when given, ``Kron(rank="auto")`` and ``Kron(rank="auto",
            sketch=True)`` on it are added.

    Returns:
        The specifications, AdamW first.
    """

    def kron(**options: object) -> OptimizerFactory:
        def build(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
            return tk.Kron(
                params,
                lr=lr,
                betas=BETAS,
                eps=EPS,
                weight_decay=0.0,
                precondition_every=precondition_every,
                **options,  # type: ignore[arg-type]
            )

        return build

    def adamw(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0)

    specs = [
        OptimizerSpec("AdamW", adamw),
        OptimizerSpec("Kron logdet", kron(divergence="logdet")),
        OptimizerSpec("Kron von_neumann", kron(divergence="von_neumann")),
        OptimizerSpec("Kron frobenius", kron(divergence="frobenius")),
        OptimizerSpec(f"Kron logdet rank={rank}", kron(divergence="logdet", rank=rank, tail="mean")),
    ]
    if tuning is not None:
        specs += [
            OptimizerSpec("Kron logdet rank=auto", kron(divergence="logdet", rank="auto", tuning=tuning)),
            OptimizerSpec(
                "Kron logdet rank=auto sketch",
                kron(divergence="logdet", rank="auto", sketch=True, tuning=tuning),
            ),
        ]
    return specs


def make_mlp(num_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """A ReLU multilayer perceptron ``num_features → hidden… → num_classes``."""
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def batch_schedule(num_examples: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Minibatch indices for ``steps`` steps: shuffled epochs, identical for every optimizer.

    Args:
        num_examples: size of the training split.
        steps: number of minibatches.
        batch_size: examples per minibatch (capped at ``num_examples``).
        seed: seed of the shuffles.

    Returns:
        An int64 tensor of shape ``(steps, min(batch_size, num_examples))``.
    """
    batch_size = min(batch_size, num_examples)
    generator = torch.Generator().manual_seed(10_000 + seed)
    per_epoch = num_examples // batch_size
    epochs = -(-steps // per_epoch)
    orders = [
        torch.randperm(num_examples, generator=generator)[: per_epoch * batch_size] for _ in range(epochs)
    ]
    return torch.cat(orders).view(-1, batch_size)[:steps]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    logits = model(x)
    loss = float(F.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy


def train_run(
    data: Dataset,
    spec: OptimizerSpec,
    lr: float,
    seed: int,
    batches: torch.Tensor,
    hidden: Sequence[int],
) -> RunResult:
    """Train a fresh MLP with one configuration and report its final losses and step times.

    A run whose minibatch loss becomes non-finite stops there and reports NaN losses.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = make_mlp(data.num_features, hidden, data.num_classes)
    opt = spec.factory(model.parameters(), lr)
    step_times: list[float] = []
    steps_done = 0
    diverged = False
    for idx in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        if not math.isfinite(float(loss.detach())):
            diverged = True
            break
        loss.backward()
        t0 = time.perf_counter()
        opt.step()
        step_times.append(time.perf_counter() - t0)
        steps_done += 1
    model.eval()
    train_loss, _ = evaluate(model, data.x_train, data.y_train)
    test_loss, test_accuracy = evaluate(model, data.x_test, data.y_test)
    if diverged or not math.isfinite(train_loss):
        train_loss = test_loss = test_accuracy = math.nan
    return RunResult(
        label=spec.label,
        lr=lr,
        seed=seed,
        train_loss=train_loss,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        steps_done=steps_done,
        step_times=step_times,
        wall_s=time.perf_counter() - start,
    )


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


def autotune_demo(
    data: Dataset,
    hidden: Sequence[int],
    out: Path,
    *,
    steps: int,
    batch_size: int,
    precondition_every: int,
    seed: int = 0,
) -> tuple[TuneResult, Path, float]:
    """Tune the demo MLP (as ``python -m autotune`` would) and write the tuning file to ``out``.

    The calibration trains a fresh MLP (seed ``seed``) for ``steps`` steps on random training
    batches; kernel configs are searched on CUDA only, and every CPU timing is a single call.

    Args:
        data: the demo data set.
        hidden: the MLP's hidden widths.
        out: the tuning file to write.
        steps: calibration steps (≥ 2).
        batch_size: calibration batch size.
        precondition_every: the refresh period T tuned for.
        seed: seed of the model and the calibration batches.

    Returns:
        (the tuner's result, the written path, seconds taken).
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = make_mlp(data.num_features, hidden, data.num_classes)
    generator = torch.Generator().manual_seed(20_000 + seed)
    size = min(batch_size, data.x_train.shape[0])

    def loss_fn(m: nn.Module) -> torch.Tensor:
        idx = torch.randint(0, data.x_train.shape[0], (size,), generator=generator)
        return F.cross_entropy(m(data.x_train[idx]), data.y_train[idx])

    threads = torch.get_num_threads()
    try:
        opts = SearchOptions(steps=steps, precondition_every=precondition_every, cpu_reps=1, seed=seed)
        result = tune_model(model, loss_fn, opts)
    finally:
        torch.set_num_threads(threads)
    path = result.table.save(out)
    return result, path, time.perf_counter() - start


def tuned_threads(result: TuneResult) -> int:
    """The tuned ``cpu_threads`` knob of ``result`` (the current torch thread count when absent)."""
    knobs = [e.knobs.get("cpu_threads") for e in result.table.entries]
    counts = [k for k in knobs if isinstance(k, int) and not isinstance(k, bool) and k >= 1]
    return counts[0] if counts else torch.get_num_threads()


def autotune_section(result: TuneResult, path: Path, seconds: float) -> list[str]:
    """Markdown lines of the report's autotune section (the tuner's per-shape summary)."""
    losses = result.losses
    return [
        "## Autotune",
        "",
        f"`tune_model` (what `python -m autotune` runs) calibrated the MLP for {len(losses)} steps "
        f"(loss {losses[0]:.4g} → {losses[-1]:.4g}) and wrote `{path}` in {seconds:.0f} s. "
        'Per shape: block size and rank per factor for `rank="auto"`, and for `rank="auto", '
        "sketch=True` the ranks k, the sketch rank ℓ (capped) and the block size; predicted step "
        "times and state are measured on a stand-alone parameter of that shape.",
        "",
        to_markdown(summary_frame(result)),
        "",
    ]


def to_markdown(frame: pd.DataFrame) -> str:
    """The table as GitHub Markdown (pandas + tabulate), numbers with 4 significant digits."""
    return frame.to_markdown(index=False, floatfmt=".4g")


def _parse_lrs(text: str) -> list[float]:
    try:
        lrs = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lrs must be comma-separated numbers; got {text!r}") from None
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise argparse.ArgumentTypeError(f"--lrs must be positive numbers; got {text!r}")
    return lrs


def _parse_hidden(text: str) -> list[int]:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print the summary table and write it as Markdown to ``--out``.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The process exit status (0).
    """
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    data = load_data(args)
    hidden = args.hidden if args.hidden is not None else ([128, 64] if data.name == "fashion_mnist" else [64])
    lrs = args.lrs if args.lrs is not None else list(DEFAULT_LRS)
    if args.tune_steps < 2:
        raise ValueError(f"--tune-steps must be at least 2; got {args.tune_steps}")
    seeds = list(range(args.seeds))
    architecture = " → ".join(str(w) for w in [data.num_features, *hidden, data.num_classes])
    print(f"data: {data.note}")
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
    print(f"autotune: wrote {tuning_path} in {tune_s:.0f} s", flush=True)
    specs = optimizer_specs(args.rank, args.precondition_every, tuning_path)
    print(
        f"model: MLP {architecture}; {args.steps} steps of batch {args.batch_size}; seeds {seeds}; lrs {lrs}"
    )
    schedules = {
        seed: batch_schedule(data.x_train.shape[0], args.steps, args.batch_size, seed) for seed in seeds
    }
    results: list[RunResult] = []
    total = len(specs) * len(lrs) * len(seeds)
    threads = tuned_threads(tuned)
    with cpu_threads(threads):  # surplus threads on a shared CPU slow small matrix products badly
        for spec in specs:
            for lr in lrs:
                for seed in seeds:
                    result = train_run(data, spec, lr, seed, schedules[seed], hidden)
                    results.append(result)
                    print(
                        f"[{len(results):>3}/{total}] {spec.label:<24} lr={lr:<8g} seed={seed}  "
                        f"train loss {result.train_loss:.4f}  test acc {100 * result.test_accuracy:5.1f}%  "
                        f"({result.wall_s:.1f} s)",
                        flush=True,
                    )
    summary = summary_table(results)
    grid = grid_table(results)
    elapsed = time.perf_counter() - started
    table = to_markdown(summary)
    print()
    print(table)
    print(f"\n{total} runs in {elapsed:.0f} s")

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# tritonkron demo: autotune, then AdamW vs Kron on a small MLP",
        "",
        f"- dataset: `{data.name}` — {data.note}",
        f"- model: MLP {architecture} (ReLU), cross-entropy, batch {args.batch_size}",
        f"- steps: {args.steps} per run; seeds: {args.seeds} ({', '.join(map(str, seeds))}); "
        f"learning-rate grid: {', '.join(f'{lr:g}' for lr in lrs)}",
        f"- all optimizers: betas {BETAS}, eps {EPS:g}, weight decay 0; Kron precondition_every "
        f"{args.precondition_every}, block_size 1024 (rank=auto: the tuned block sizes and ranks, "
        f"`{tuning_path}`)",
        f"- torch {torch.__version__}, tritonkron {getattr(tk, '__version__', '?')}, Python {platform.python_version()}",
        f"- date: {now}; CPU threads: {threads} (torch, the tuned `cpu_threads`) of {os.cpu_count()} (os); "
        f"total time {elapsed:.0f} s",
        "",
        "Best learning rate per optimizer = lowest mean final loss on the whole training split. "
        "Losses and accuracy are seed means at that learning rate (± is the seed std of the train loss). "
        "Step time is the median of `opt.step()` over all runs of that optimizer; × AdamW is its ratio "
        "to AdamW's median measured in the same process. NaN means a run diverged.",
        "",
        table,
        "",
        *autotune_section(tuned, tuning_path, tune_s),
        "## All grid points",
        "",
        to_markdown(grid),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
