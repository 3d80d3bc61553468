"""``python -m autotune``: tune block sizes, kernel configs and subspace ranks for a model.

Usage::

    python -m autotune --model MODULE:FACTORY [--steps N] [--out tuning.json] [--no-sketch]
                       [--device auto|cpu|cuda]

``FACTORY()`` returns ``(model, loss_fn)``: the model on the device to tune for, and
``loss_fn(model)`` returning a scalar loss on a fresh batch of real data. ``--device`` (default
``auto``: CUDA when available, else the CPU; :mod:`autotune.device`) is that device: a factory with
a ``device`` parameter is called as ``FACTORY(device=...)`` and must build its model and batches
there; one without must build its model on that device itself (a mismatch is an error). The search
is described in :mod:`autotune.search`; the file format and how ``tk.Kron`` reads it in
:mod:`tritonkron.tuning.file`. A progress bar goes to stderr; the device line and a summary table go to
stdout.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
import torch
from torch import Tensor, nn

import autotune
from autotune._guard import ForeignAutotuneError, check_package

# A package named autotune that is not tritonkron's (PyPI has one) may have overwritten this
# package's __init__ and other modules: say so before importing them.
try:
    check_package(autotune)
except ForeignAutotuneError as _error:
    print(f"error: {_error}", file=sys.stderr)
    raise SystemExit(2) from None

from autotune.device import add_device_argument  # noqa: E402
from autotune.provenance import git_commit  # noqa: E402
from autotune.rank_rule import DEFAULT_FLATNESS, DEFAULT_MASS  # noqa: E402
from autotune.search import SearchOptions, ShapeResult, TuneResult, tune_model  # noqa: E402
from autotune.sketch_choice import DEFAULT_SKETCH_BUDGET  # noqa: E402
from tritonkron.tuning.entry import dtype_name  # noqa: E402


class ProgressBar:
    """A one-line progress bar on a terminal; one line per task otherwise (logs, pipes)."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 28) -> None:
        self.stream, self.width = stream, width
        self.total, self.done = 1, 0
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def start(self, total: int) -> None:
        """Begin a run of ``total`` tasks."""
        self.total, self.done = max(total, 1), 0

    def advance(self, label: str) -> None:
        """Mark one task done, labelled ``label``."""
        self.done = min(self.done + 1, self.total)
        filled = self.width * self.done // self.total
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            columns = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + line[: columns - 1].ljust(columns - 1))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


Factory = Callable[..., tuple[nn.Module, Callable[[nn.Module], Tensor]]]
"""``FACTORY()`` or ``FACTORY(device=...)`` → ``(model, loss_fn)``."""


def load_factory(spec: str) -> Factory:
    """The callable named by ``MODULE:FACTORY`` (FACTORY may be dotted: ``pkg.mod:Cls.make``).

    Raises:
        ValueError: a malformed spec, or a module or attribute that cannot be found.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model must look like MODULE:FACTORY; got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import module {module_name!r} for --model: {error}") from error
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{spec} is not callable")
    return target


def _takes_device(factory: Factory) -> bool:
    """Whether ``factory`` accepts a ``device`` keyword (a ``device`` parameter or ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == "device" and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


def build_model(spec: str, device: torch.device) -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    """``(model, loss_fn)`` from the ``--model`` factory, on ``device`` (rules in the module docstring).

    Raises:
        ValueError: a bad spec, a factory that returns something else, or a model not on ``device``.
    """
    factory = load_factory(spec)
    built = factory(device=device) if _takes_device(factory) else factory()
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module)):
        raise ValueError(f"{spec}() must return (model, loss_fn) with an nn.Module model")
    model, loss_fn = built
    param = next(model.parameters(), None)
    if param is not None and param.device.type != device.type:
        raise ValueError(
            f"--device {device.type}: {spec} built its model on {param.device.type}; give FACTORY a "
            f"`device` parameter (it is then called as FACTORY(device=...)) or choose --device "
            f"{param.device.type}"
        )
    return model, loss_fn


def _ranks(choice: Any) -> str:
    if choice is None:
        return "-"
    return f"{choice.rank}/{choice.dim}" + (" (capped)" if choice.capped else "")


def _sketch(r: ShapeResult) -> str:
    """``k k_A/m, k_B/n; ℓ ℓ ≤ L; block b`` of the sketched choice, ``-`` when not tuned."""
    if r.sketch is None:
        return "-"
    c = r.sketch
    capped = " (k capped)" if c.rank_a.capped or c.rank_b.capped else ""
    return (
        f"k {c.rank_a.rank}/{c.rank_a.dim}, {c.rank_b.rank}/{c.rank_b.dim}{capped}; "
        f"ℓ {c.sketch_rank} ≤ {c.cap}; block {r.sketch_block}"
    )


def _configs(r: ShapeResult) -> str:
    tuned = [f"{op}: {'x'.join(str(v) for k, v in cfg.best.items() if k.startswith('BLOCK'))}"
             f" w{cfg.best['num_warps']} s{cfg.best['num_stages']}"
             for op, cfg in r.kernels.items() if cfg.best is not None]  # fmt: skip
    knobs = [f"{k}={v}" for k, v in sorted(r.knobs.items())]
    return "; ".join(tuned + knobs) if tuned or knobs else "defaults"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def summary_frame(result: TuneResult) -> pd.DataFrame:
    """One row per tuned shape: block, ranks, configs, predicted step time and state memory."""
    rows = []
    for r in result.shapes:
        p = r.predicted
        rows.append(
            {
                "shape": f"{r.shape[0]}x{r.shape[1]}",
                "dtype": dtype_name(r.dtype),
                "params": len(r.names),
                "block": r.block_size,
                "rank A": _ranks(r.rank_a),
                "rank B": _ranks(r.rank_b),
                "sketch": _sketch(r),
                "configs": _configs(r),
                "step ms full": _fmt(p.get("step_ms_full")),
                "step ms rank": _fmt(p.get("step_ms_rank")),
                "step ms sketch": _fmt(p.get("step_ms_sketch")),
                "state MB full": _fmt(p.get("state_mb_full")),
                "state MB sketch": _fmt(p.get("state_mb_sketch")),
            }
        )
    return pd.DataFrame(rows)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m autotune",
        description="Tune tritonkron for a model: block size, subspace rank per factor and kernel "
        "configurations per parameter shape, written as a versioned JSON tuning file that "
        "tk.Kron(rank='auto', tuning=PATH) reads (or TRITONKRON_TUNING=PATH).",
    )
    parser.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                        help="FACTORY() returns (model, loss_fn); loss_fn(model) is a scalar loss on a fresh real batch")  # fmt: skip
    parser.add_argument("--steps", type=int, default=50, help="calibration steps (default 50)")
    parser.add_argument("--out", default="tuning.json", help="tuning file to write (default tuning.json)")
    parser.add_argument("--lr", type=float, default=3e-4, help="calibration learning rate (default 3e-4)")
    parser.add_argument("--divergence", default="logdet", choices=("logdet", "von_neumann", "frobenius"))
    parser.add_argument("--precondition-every", type=int, default=10, help="refresh period T (default 10)")
    parser.add_argument("--mass", type=float, default=DEFAULT_MASS,
                        help=f"eigen-mass share the rank-k spike-and-flat factor must reproduce (default {DEFAULT_MASS})")  # fmt: skip
    parser.add_argument("--flatness", type=float, default=DEFAULT_FLATNESS,
                        help=f"bound on the tail's max/mean eigenvalue ratio (default {DEFAULT_FLATNESS})")  # fmt: skip
    parser.add_argument("--rank-budget", type=float, default=0.5,
                        help="rank cap as a fraction of each factor's dimension (default 0.5)")  # fmt: skip
    parser.add_argument("--sketch", action=argparse.BooleanOptionalAction, default=True,
                        help="also tune sketch=True: ranks k_A, k_B and sketch rank ℓ per shape (default on)")  # fmt: skip
    parser.add_argument("--sketch-budget", type=float, default=DEFAULT_SKETCH_BUDGET,
                        help=f"sketch rank cap ℓ ≤ max(this × the block's largest dim, 32) (default {DEFAULT_SKETCH_BUDGET})")  # fmt: skip
    parser.add_argument("--time-budget", type=float, default=2.0,
                        help="block size: step time at most this × the fastest candidate's (default 2)")  # fmt: skip
    parser.add_argument("--memory-budget", type=float, default=8.0,
                        help="block size: optimizer state at most this many floats per parameter element (default 8)")  # fmt: skip
    parser.add_argument("--kernels", choices=("auto", "on", "off"), default="auto",
                        help="search Triton kernel configs: auto = on CUDA only (default)")  # fmt: skip
    parser.add_argument("--max-configs", type=int, default=None, help="at most this many configs per op")
    parser.add_argument(
        "--ns-tol", type=float, default=1e-6, help="Newton–Schulz residual target (default 1e-6)"
    )
    parser.add_argument("--cpu-reps", type=int, default=3, help="timed calls per CPU measurement (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic timing inputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(parser)
    return parser


def _options(args: argparse.Namespace) -> SearchOptions:
    if args.steps < 2:
        raise ValueError(f"--steps must be at least 2; got {args.steps}")
    if args.cpu_reps < 1:
        raise ValueError(f"--cpu-reps must be at least 1; got {args.cpu_reps}")
    if not 0.0 < args.sketch_budget <= 1.0:
        raise ValueError(f"--sketch-budget must be in (0, 1]; got {args.sketch_budget}")
    return SearchOptions(
        steps=args.steps,
        lr=args.lr,
        divergence=args.divergence,
        precondition_every=args.precondition_every,
        mass=args.mass,
        flatness=args.flatness,
        rank_budget=args.rank_budget,
        sketch=args.sketch,
        sketch_budget=args.sketch_budget,
        time_budget=args.time_budget,
        memory_budget=args.memory_budget,
        tune_kernels={"auto": None, "on": True, "off": False}[args.kernels],
        max_configs=args.max_configs,
        ns_tol=args.ns_tol,
        cpu_reps=args.cpu_reps,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 on success, 2 on a usage or input error)."""
    args = build_parser().parse_args(argv)
    try:
        opts = _options(args)
        model, loss_fn = build_model(args.model, args.device)
        result = tune_model(model, loss_fn, opts, None if args.quiet else ProgressBar())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result.table.commit = git_commit(Path(__file__).resolve().parent)
    path = result.table.save(args.out)
    losses = result.losses
    print(f"device: {result.device}")
    print(summary_frame(result).to_markdown(index=False))
    print(f"\ncalibration: {len(losses)} steps, loss {losses[0]:.4g} → {losses[-1]:.4g}")
    print(
        f"wrote {path} (device {result.table.device!r}); use tk.Kron(..., rank='auto', tuning={str(path)!r})"
        + (" (add sketch=True for the sketched choice)" if args.sketch else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
