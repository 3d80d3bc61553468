"""Eager against ``torch.compile``-d optimizer steps on the character-level GPT's parameters.

Usage (from the repository root)::

    python -m perf.bench_compile [--steps 40] [--warmup 12] [--device auto|cpu|cuda]
                                 [--out perf/results/compile.csv]

``tk.Kron``'s step has no host-side decisions, so ``torch.compile(opt.step)`` traces it into one
graph (plus one for the first call, which creates the state); inductor then fuses the many small
elementwise ops between the GEMMs (masks, eigenvalue EMAs, scales). This benchmark measures what
that buys on this machine, with AdamW — eager and compiled — measured in the same run as the
baseline, and heavyball's SOAP (eager, its compilation off) as the peer when it is installed.
Every optimizer steps the parameters of :class:`perf.models.CharGPT` (≈ 0.42 M scalars,
matrices 80 × 128 … 512 × 128) with fixed N(0, 1) gradients: ``warmup`` steps first (state, initial
eigendecompositions and, when compiled, compilation: its wall time is reported separately), then
``steps`` timed steps. With ``precondition_every=10`` the timed window holds ``steps / 10`` basis
refreshes, so the **mean** is the amortised cost per step and the median the refresh-free step.
Model, gradients and state live on ``--device`` (default ``auto``: CUDA when available); on CUDA
every timed step is bracketed by ``torch.cuda.synchronize()`` (:func:`perf.device.clock`).

Two columns count the refresh work: ``blocks`` (Kronecker blocks of the optimizer) and
``refreshed_per_step``, the blocks whose basis refresh (power step + QR or CholeskyQR3) is computed
per step on average (:func:`refreshed_per_step`): N/T eagerly, where only the due blocks are
gathered; compiled, ⌈B/T⌉ per group of B ≥ T blocks every step plus B/T for a group of B < T blocks
(:func:`tritonkron.step.traceable.refresh_slots`). The ``Kron logdet block_size=32`` row splits
every matrix into groups of 4 to 64 blocks, where that count matters; with the default
``block_size`` every CharGPT matrix is one block.

The table is printed (pandas + tabulate) and written as CSV to ``--out`` with machine, versions,
device, commit and date.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

import tritonkron as tk
from perf.bench_table import timing_main
from perf.device import clock
from perf.models import CharGPT, count_parameters
from perf.peers import available, heavyball_eager
from tritonkron.state import BLOCKS, READY

RESULTS = Path(__file__).resolve().parent / "results"

Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, Factory] = {
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3),
    "Kron logdet (full)": lambda ps: tk.Kron(ps, lr=1e-3, precondition_every=10),
    "Kron logdet rank=8": lambda ps: tk.Kron(ps, lr=1e-3, precondition_every=10, rank=8),
    "Kron logdet block_size=32": lambda ps: tk.Kron(ps, lr=1e-3, precondition_every=10, block_size=32),
}


def _soap(ps: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    heavyball = heavyball_eager()
    return heavyball.SOAP(ps, lr=1e-3, precondition_frequency=10)


PEERS: dict[str, Factory] = {"heavyball SOAP": _soap}  # eager only (heavyball's own compile is off)


def refreshed_per_step(counts: list[int], period: int, compiled: bool, slots: bool = True) -> float:
    """Mean blocks whose refresh is computed per step, for block groups of ``counts`` blocks.

    Eagerly Σ B/T (each block once per T steps, only the due ones computed). Compiled with
    ``slots`` (this code): Σ ⌈B/T⌉ over groups with B ≥ T plus Σ B/T over groups with B < T (one
    slot, computed on the B of T steps where it is due). Compiled without ``slots`` (the refresh
    before the slots: every block of a group whenever one is due): Σ B over groups with B ≥ T plus
    Σ B·B/T over the others.
    """
    if not compiled:
        return sum(counts) / period
    small = sum(b * (1 if slots else b) / period for b in counts if b < period)
    return small + sum(math.ceil(b / period) if slots else b for b in counts if b >= period)


def _block_counts(opt: torch.optim.Optimizer) -> tuple[list[int], int] | None:
    """The block count of every Kronecker block group of ``opt`` and its period (None: not Kron)."""
    if not isinstance(opt, tk.Kron):
        return None
    counts = [int(b[READY].numel()) for state in opt.state.values() for b in state.get(BLOCKS, [])]
    return counts, opt.param_groups[0]["precondition_every"]


def _time_steps(
    step: Callable[[], object], count: int, prepare: Callable[[], None], device: torch.device | str
) -> list[float]:
    times = []
    for _ in range(count):
        prepare()  # untimed: heavyball clears .grad after each step
        start = clock(device)
        step()
        times.append(clock(device) - start)
    return times


def measure(
    name: str, factory: Factory, compiled: bool, warmup: int, steps: int, device: torch.device | str = "cpu"
) -> dict[str, object]:
    """Warm-up wall time and step times (ms) of one optimizer on ``device``, eager or compiled."""
    torch.manual_seed(0)
    model = CharGPT(80).to(device)
    params = list(model.parameters())
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=generator).to(device) for p in params]

    def prepare() -> None:
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    opt = factory(params)
    step = torch.compile(opt.step) if compiled else opt.step
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        start = clock(device)
        _time_steps(step, warmup, prepare, device)
        warmup_s = clock(device) - start
        times = [1000 * t for t in _time_steps(step, steps, prepare, device)]
    blocks = _block_counts(opt)
    return {
        "optimizer": name,
        "mode": "compiled (inductor)" if compiled else "eager",
        "parameters": count_parameters(model),
        "blocks": None if blocks is None else sum(blocks[0]),
        "refreshed_per_step": None if blocks is None else refreshed_per_step(*blocks, compiled),
        "warmup_s": warmup_s,
        "median_ms": statistics.median(times),
        "mean_ms": statistics.fmean(times),
        "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
    }


def run(steps: int, warmup: int, device: torch.device | str = "cpu") -> pd.DataFrame:
    """All optimizers × {eager, compiled} on ``device``, installed peers eager; ratios against eager AdamW."""
    rows = []
    runs = [(name, factory, compiled) for name, factory in OPTIMIZERS.items() for compiled in (False, True)]
    if available("heavyball"):
        runs += [(name, factory, False) for name, factory in PEERS.items()]
    for name, factory, compiled in runs:
        rows.append(measure(name, factory, compiled, warmup, steps, device))
        print(
            f"  {rows[-1]['optimizer']:<20} {rows[-1]['mode']:<20} {rows[-1]['median_ms']:.2f} ms", flush=True
        )
    table = pd.DataFrame(rows)
    baseline = table.loc[(table.optimizer == "AdamW") & (table["mode"] == "eager"), "mean_ms"].item()
    table["mean_vs_adamw_eager"] = table["mean_ms"] / baseline
    eager = table[table["mode"] == "eager"].set_index("optimizer")["mean_ms"]
    table["speedup_vs_own_eager"] = eager.loc[table.optimizer].to_numpy() / table["mean_ms"]
    return table


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    timing_main(
        argv,
        __doc__,
        RESULTS / "compile.csv",
        "eager vs compiled optimizer steps",
        run,
        min_warmup=2,
        warmup_help="untimed first steps (compilation included; the compiled step has two graphs)",
    )


if __name__ == "__main__":
    main()
