"""Options, progress protocol and result records of the per-shape search (:mod:`autotune.search`).

:class:`SearchOptions` holds the options of :func:`autotune.search.tune_model`, :class:`Reporter` is
its progress sink, and :class:`ShapeResult` collects everything chosen and measured for one
(shape, dtype) and turns it into its tuning-file entry; :class:`KernelResult` is one op's kernel
search and :class:`TuneResult` the whole search's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from autotune.measure import Timing
from autotune.rank_rule import DEFAULT_FLATNESS, DEFAULT_MASS, RankChoice
from autotune.sketch_choice import DEFAULT_SKETCH_BUDGET, SketchChoice
from tritonkron.tuning.entry import SketchTuning, TuningEntry, dtype_name
from tritonkron.tuning.file import TuningTable

__all__ = ["KernelResult", "Reporter", "SearchOptions", "ShapeResult", "TuneResult"]


class Reporter(Protocol):
    """Progress sink: ``start(total)`` once, then ``advance(label)`` after each task."""

    def start(self, total: int) -> None: ...

    def advance(self, label: str) -> None: ...


@dataclass(frozen=True)
class SearchOptions:
    """Options of :func:`tune_model` (CLI flags of the same names).

    Attributes:
        steps: calibration steps (Default: 50).
        lr: calibration learning rate (Default: 3e-4).
        divergence: factor rule calibrated and timed (Default: "logdet").
        precondition_every: basis refresh period T (Default: 10).
        mass: rank rule's eigen-mass share (Default: 0.9).
        flatness: rank rule's tail max/mean bound (Default: 4.0).
        rank_budget: rank cap as a fraction of each factor's dimension (Default: 0.5).
        sketch: also tune the ``sketch=True`` mode (Default: True).
        sketch_budget: cap on the sketch rank ℓ as a fraction of the largest block dim (Default: 0.125).
        time_budget: block-size step-time bound relative to the fastest candidate (Default: 2.0).
        memory_budget: block-size state bound in floats per parameter element (Default: 8.0).
        tune_kernels: search kernel configs; None → only on CUDA (Default: None).
        max_configs: at most this many configs per op, evenly spaced (Default: None, all).
        ns_tol: Newton–Schulz residual target (Default: 1e-6).
        cpu_reps: timed calls per CPU measurement (Default: 3).
        seed: seed of the synthetic timing inputs (Default: 0).
    """

    steps: int = 50
    lr: float = 3e-4
    divergence: str = "logdet"
    precondition_every: int = 10
    mass: float = DEFAULT_MASS
    flatness: float = DEFAULT_FLATNESS
    rank_budget: float = 0.5
    sketch: bool = True
    sketch_budget: float = DEFAULT_SKETCH_BUDGET
    time_budget: float = 2.0
    memory_budget: float = 8.0
    tune_kernels: bool | None = None
    max_configs: int | None = None
    ns_tol: float = 1e-6
    cpu_reps: int = 3
    seed: int = 0


@dataclass(frozen=True)
class KernelResult:
    """Outcome of tuning one op on one block stack.

    Attributes:
        op: op name.
        best: the fastest config that matched the default launch, or None (keep the heuristic).
        default: time of the default (heuristic) launch.
        timings: every config tried with its time (failed configs are absent).
    """

    op: str
    best: dict[str, int] | None
    default: Timing
    timings: tuple[tuple[dict[str, int], Timing], ...]


@dataclass
class ShapeResult:
    """Everything chosen and measured for one (shape, dtype); :meth:`entry` is its table row."""

    shape: tuple[int, int]
    dtype: torch.dtype
    names: list[str]
    block_size: int = 1024
    block_candidates: dict[int, tuple[float, int]] = field(
        default_factory=dict
    )  # size → (step ms, state bytes)
    rank_a: RankChoice | None = None
    rank_b: RankChoice | None = None
    kernels: dict[str, KernelResult] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    predicted: dict[str, float | None] = field(default_factory=dict)
    sketch_block: int | None = None
    sketch: SketchChoice | None = None

    def entry(self) -> TuningEntry:
        """The tuning-file entry of this shape."""
        return TuningEntry(
            shape=self.shape,
            dtype=dtype_name(self.dtype),
            block_size=self.block_size,
            rank_a=self.rank_a.rank if self.rank_a else None,
            rank_b=self.rank_b.rank if self.rank_b else None,
            kernels={op: r.best for op, r in self.kernels.items() if r.best is not None},
            knobs=dict(self.knobs),
            predicted=dict(self.predicted),
            sketch=None
            if self.sketch is None or self.sketch_block is None
            else SketchTuning(
                block_size=self.sketch_block,
                rank_a=self.sketch.rank_a.rank,
                rank_b=self.sketch.rank_b.rank,
                sketch_rank=self.sketch.sketch_rank,
            ),
        )


@dataclass(frozen=True)
class TuneResult:
    """Result of :func:`tune_model`: the table to save, per-shape details and the calibration losses.

    ``device`` is the device the tuning ran on, as reports state it (``"cuda (NVIDIA H200)"``,
    ``"cpu (2 threads)"``: :func:`autotune.device.describe_device`).
    """

    table: TuningTable
    shapes: tuple[ShapeResult, ...]
    losses: tuple[float, ...]
    device: str = "cpu"
