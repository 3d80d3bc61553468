"""Per-shape search: block size, calibrated ranks, kernel configs and CPU knobs → tuning entries.

For each distinct (matrix shape, dtype) of a model's matrix parameters, in this order:

1. **Block size** (:func:`choose_block_size`): every candidate of
   :func:`autotune.space.block_size_candidates` is run as a real ``tk.Kron`` step on a
   stand-alone parameter of that shape (fresh per candidate), timed over whole refresh cycles,
   and its optimizer state counted. Larger blocks precondition more cross-correlations (a
   block ignores those between blocks), so the choice is the *largest* candidate whose state
   stays within ``memory_budget`` floats per parameter element and whose step time stays within
   ``time_budget`` × the fastest candidate's; the least-memory candidate if none fits.
2. **Ranks** (:mod:`autotune.rank`): one calibration run of the user's model and data with
   ``tk.Kron(rank=None)`` at the chosen block sizes, then the rank rule per factor.
3. **Newton–Schulz steps**: iterations of the coupled Newton inverse square root to reach the
   residual target ``ns_tol`` on the calibrated factors (``knobs["ns_steps_a"/"ns_steps_b"]``).
4. **Sketched ranks** (``sketch``, on by default): the choice for ``tk.Kron(rank="auto",
   sketch=True)``. Its block size is :func:`autotune.space.sketch_block_size` (the unsplit
   largest dim up to 4096); when that differs from the dense block of some shape, a second
   calibration from the same initial weights gives the spectra at the sketched layout. Then
   :func:`autotune.rank.sketch_ranks` picks k_A, k_B and the sketch rank ℓ under the cost cap
   ℓ ≤ max(``sketch_budget`` · max(m, n), 32).
5. **Kernel configs** (CUDA, or forced): every op of :data:`autotune.space.KERNEL_OPS` on the
   largest block stack, each config timed on its own fresh inputs; the winner is kept only when
   its output matches the default launch's on identical inputs.
6. **Predictions**: step time and optimizer-state bytes at full rank, at the tuned rank (dense
   factors) and with ``sketch=True`` at the sketched choice (without it: the dense ranks, ℓ = 2k).
7. **CPU knobs** (CPU only): thread count and inverse-root method (eigh vs Newton–Schulz).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

import tritonkron as tk
from autotune import space
from autotune.measure import Timing, bench, cpu_threads, measure_kron_step
from autotune.rank import (
    DEFAULT_FLATNESS,
    DEFAULT_MASS,
    DEFAULT_SKETCH_BUDGET,
    ParamSpectra,
    RankChoice,
    SketchChoice,
    calibrate,
    layer_ranks,
    sketch_ranks,
)
from tritonkron._env import triton_interpret
from tritonkron.kernels import HAS_TRITON
from tritonkron.reference.blocking import BlockLayout, matrix_shape
from tritonkron.reference.inverse_root import RootStatus, newton_schulz_inverse_root
from tritonkron.tuning import (
    DEFAULT_BLOCK_SIZE,
    SketchTuning,
    TuningEntry,
    TuningTable,
    device_name,
    dtype_name,
)
from tritonkron.tuning_lookup import single_rank

logger = logging.getLogger(__name__)

__all__ = [
    "KernelResult",
    "Reporter",
    "SearchOptions",
    "ShapeResult",
    "TuneResult",
    "choose_block_size",
    "tune_kernel",
    "tune_model",
    "tune_shape_kernels",
]

Key = tuple[tuple[int, int], str]  # (matrix shape, dtype name)


class Reporter(Protocol):
    """Progress sink: ``start(total)`` once, then ``advance(label)`` after each task."""

    def start(self, total: int) -> None: ...

    def advance(self, label: str) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        del total

    def advance(self, label: str) -> None:
        del label


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
    """Result of :func:`tune_model`: the table to save, per-shape details and the calibration losses."""

    table: TuningTable
    shapes: tuple[ShapeResult, ...]
    losses: tuple[float, ...]


# ---------------------------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------------------------


def _kron_step(
    shape: tuple[int, int], dtype: torch.dtype, device: torch.device, opts: SearchOptions, **kw: Any
) -> tuple[Timing, int]:
    return measure_kron_step(
        shape,
        dtype,
        device,
        divergence=opts.divergence,
        precondition_every=opts.precondition_every,
        cpu_reps=opts.cpu_reps,
        seed=opts.seed,
        **kw,
    )


def choose_block_size(result: ShapeResult, device: torch.device, opts: SearchOptions) -> int:
    """Fill ``result.block_candidates`` and pick the block size (rule in the module docstring)."""
    m, n = result.shape
    itemsize = 8 if result.dtype == torch.float64 else 4  # statistics dtype
    for size in space.block_size_candidates(result.shape):
        timing, nbytes = _kron_step(result.shape, result.dtype, device, opts, block_size=size)
        result.block_candidates[size] = (timing.p50, nbytes)
    fastest = min(ms for ms, _ in result.block_candidates.values())
    fits = [
        size
        for size, (ms, nbytes) in result.block_candidates.items()
        if nbytes / itemsize / (m * n) <= opts.memory_budget and ms <= opts.time_budget * fastest
    ]
    if fits:
        result.block_size = max(fits)
    else:
        result.block_size = min(result.block_candidates, key=lambda s: result.block_candidates[s][1])
    return result.block_size


def _same(a: object, b: object) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        scale = float(b.abs().max()) if b.numel() else 0.0
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return False


def tune_kernel(
    op: space.KernelOp,
    block: tuple[int, int, int],
    dtype: torch.dtype,
    device: torch.device,
    *,
    configs: list[dict[str, int]] | None = None,
    max_configs: int | None = None,
    seed: int = 0,
    cpu_reps: int = 3,
    example: space.Inputs | None = None,
) -> KernelResult:
    """Time ``op``'s configs on fresh inputs for ``block`` and keep the fastest that matches the default.

    Every launch, timed or checked, gets fresh inputs (``op.make_inputs`` with the same seed, or
    clones of ``example``), so an in-place op never updates anything but its own copy, every
    config starts from identical inputs, and the check compares the winner and the default launch
    on identical inputs.

    Args:
        op: the op (:data:`autotune.space.KERNEL_OPS`).
        block: ``(B, m, n)`` block stack.
        dtype: parameter (gradient) dtype.
        device: where to run ("cuda", or "cpu" under ``TRITON_INTERPRET=1``).
        configs: configs to try (default :func:`autotune.space.kernel_configs`).
        max_configs: cap on the default configs.
        seed: seed of the inputs.
        cpu_reps: timed calls per config off CUDA.
        example: real inputs to tune on instead of synthetic ones (e.g. a live factor); every
            launch gets its own clone, so they are never modified.
    """

    def make() -> space.Inputs:
        if example is not None:
            return {key: t.clone() if isinstance(t, Tensor) else t for key, t in example.items()}
        return op.make_inputs(block, dtype, device, seed)

    def timed(cfg: dict[str, int] | None) -> Timing:
        return bench(lambda x: op.launch(x, cfg), make, device, cpu_warmup=1, cpu_reps=cpu_reps)

    default = timed(None)
    timings = []
    for cfg in configs if configs is not None else space.kernel_configs(op, block, max_configs):
        try:
            timings.append((cfg, timed(cfg)))
        except Exception as error:  # a config that fails to compile or launch is skipped
            logger.debug("%s %s: config %s failed: %s", op.name, block, cfg, error)
    best = None
    for cfg, _ in sorted(timings, key=lambda item: item[1].p50):
        if _same(op.launch(make(), cfg), op.launch(make(), None)):
            best = cfg
            break
        logger.warning("%s %s: config %s disagrees with the default launch; skipped", op.name, block, cfg)
    return KernelResult(op.name, best, default, tuple(timings))


def _ns_steps(factors: list[Tensor], tol: float) -> int | None:
    """Newton–Schulz iterations to reach residual ``tol`` on every factor (None: not within 100)."""
    steps = 0
    for X in factors:
        result = newton_schulz_inverse_root(X.float(), 2, max_iters=100, tol=tol)
        if result.status is not RootStatus.CONVERGED:
            return None
        steps = max(steps, result.iterations)
    return steps


def _cpu_knobs(results: list[ShapeResult], device: torch.device, opts: SearchOptions) -> dict[str, Any]:
    """Thread count (fastest Kron step of the largest shape) and inverse-root method (fastest root).

    Measured first, at ``tk.Kron``'s default block size, so that every later CPU measurement runs
    with the chosen thread count: on a busy or small machine, surplus threads make small matrix
    products orders of magnitude slower.
    """
    big = max(results, key=lambda r: r.shape[0] * r.shape[1])
    block = min(max(big.shape), DEFAULT_BLOCK_SIZE)
    times = {}
    for count in space.cpu_thread_candidates():
        with cpu_threads(count):
            times[count] = _kron_step(big.shape, big.dtype, device, opts, block_size=block)[0].p50
    threads = min(times, key=times.get)
    gen = torch.Generator().manual_seed(opts.seed)
    R = torch.randn(4, block, block, generator=gen)
    roots = {}
    with cpu_threads(threads):
        for method in space.ROOT_METHODS:
            roots[method] = bench(
                lambda A, method=method: tk.inverse_root(A, 2, method=method),
                lambda: R @ R.transpose(-1, -2) / block + 1e-3 * torch.eye(block),
                device,
                cpu_reps=opts.cpu_reps,
            ).p50
    return {"cpu_threads": threads, "root_method": min(roots, key=roots.get)}


# ---------------------------------------------------------------------------------------------
# The whole search.
# ---------------------------------------------------------------------------------------------


def _shapes(model: nn.Module) -> dict[Key, ShapeResult]:
    shapes: dict[Key, ShapeResult] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or p.dim() < 2 or p.numel() == 0:
            continue
        shape = matrix_shape(p.shape)
        key = (shape, dtype_name(p.dtype))
        shapes.setdefault(key, ShapeResult(shape=shape, dtype=p.dtype, names=[])).names.append(name)
    return shapes


def _predict(result: ShapeResult, device: torch.device, opts: SearchOptions) -> None:
    ms_full, full_bytes = result.block_candidates[result.block_size]
    rank = single_rank(
        result.rank_a.rank if result.rank_a else None, result.rank_b.rank if result.rank_b else None
    )
    pred: dict[str, float | None] = {"step_ms_full": ms_full, "state_mb_full": full_bytes / 2**20}
    if rank is not None:
        kw = {"block_size": result.block_size, "rank": rank}
        pred["step_ms_rank"] = _kron_step(result.shape, result.dtype, device, opts, **kw)[0].p50
    sketch = result.sketch
    if sketch is not None and result.sketch_block is not None:
        kw = {"block_size": result.sketch_block, "rank": max(sketch.rank_a.rank, sketch.rank_b.rank)}
        kw["sketch_rank"] = sketch.sketch_rank
    elif rank is not None:
        kw = {"block_size": result.block_size, "rank": rank}
    else:
        kw = {}
    if kw:
        timing, nbytes = _kron_step(result.shape, result.dtype, device, opts, sketch=True, **kw)
        pred["step_ms_sketch"], pred["state_mb_sketch"] = timing.p50, nbytes / 2**20
    result.predicted = pred


def tune_model(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    opts: SearchOptions | None = None,
    reporter: Reporter | None = None,
) -> TuneResult:
    """Tune every matrix-parameter shape of ``model`` (steps in the module docstring).

    Args:
        model: the user's model, on the device to tune for (it is trained by the calibration).
        loss_fn: ``loss_fn(model)`` → scalar loss on a fresh batch of real data.
        opts: search options.
        reporter: progress sink.

    Returns:
        The tuning table (not yet saved) and the per-shape details.

    Raises:
        ValueError: the model has no matrix parameters, calibration failed, or a kernel search was
            requested where Triton cannot run.
    """
    opts = opts or SearchOptions()
    reporter = reporter or _Silent()
    shapes = _shapes(model)
    if not shapes:
        raise ValueError("the model has no trainable parameters with ≥ 2 dims: nothing to tune")
    device = next(model.parameters()).device
    kernels = opts.tune_kernels if opts.tune_kernels is not None else device.type == "cuda" and HAS_TRITON
    if kernels and not (HAS_TRITON and (device.type == "cuda" or triton_interpret())):
        raise ValueError("kernel search needs Triton and a CUDA model (or TRITON_INTERPRET=1 on the CPU)")
    results = list(shapes.values())
    reporter.start(len(results) * (4 + opts.sketch) + opts.steps + opts.sketch + (device.type == "cpu"))
    threads = torch.get_num_threads()
    if device.type == "cpu":
        cpu = _cpu_knobs(results, device, opts)
        for r in results:
            r.knobs.update(cpu)
        threads = cpu["cpu_threads"]
        reporter.advance(f"cpu: {threads} threads, inverse root by {cpu['root_method']}")
    with cpu_threads(threads):
        for r in results:
            choose_block_size(r, device, opts)
            reporter.advance(f"{r.shape[0]}x{r.shape[1]}: block size {r.block_size}")
        losses = _tune_ranks(results, model, loss_fn, opts, reporter)
        for r in results:
            if kernels and r.dtype != torch.float64:
                tune_shape_kernels(r, device, opts)
            reporter.advance(f"{r.shape[0]}x{r.shape[1]}: kernels {'tuned' if r.kernels else 'skipped'}")
        for r in results:
            _predict(r, device, opts)
            reporter.advance(f"{r.shape[0]}x{r.shape[1]}: predicted step time and memory")
    table = TuningTable(device=device_name(device), entries=[r.entry() for r in results])
    return TuneResult(table, tuple(results), losses)


def _tune_ranks(
    results: list[ShapeResult],
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    opts: SearchOptions,
    reporter: Reporter,
) -> tuple[float, ...]:
    """Calibrate at the chosen block sizes, then set ranks and Newton–Schulz steps per shape.

    With ``opts.sketch`` also the sketched choice of every shape, from a second calibration (from
    the same initial weights) when some shape's sketched block size differs from its dense one.
    """
    initial = {key: value.detach().clone() for key, value in model.state_dict().items()}
    calibration = calibrate(
        model,
        loss_fn,
        opts.steps,
        {name: r.block_size for r in results for name in r.names},
        lr=opts.lr,
        divergence=opts.divergence,
        precondition_every=opts.precondition_every,
        on_step=lambda step, loss: reporter.advance(f"calibration step {step} loss {loss:.4g}"),
    )
    by_name = {ps.name: ps for ps in calibration.spectra}
    for r in results:
        spectra = [by_name[name] for name in r.names if name in by_name]
        if spectra:
            r.rank_a, r.rank_b = layer_ranks(spectra, opts.mass, opts.flatness, opts.rank_budget)
            for side in ("a", "b"):
                factors = [f for ps in spectra for f in getattr(ps, f"factors_{side}") if f is not None]
                r.knobs[f"ns_steps_{side}"] = _ns_steps(factors, opts.ns_tol) if factors else None
        ranks = f"{r.rank_a.rank if r.rank_a else '-'}/{r.rank_b.rank if r.rank_b else '-'}"
        reporter.advance(f"{r.shape[0]}x{r.shape[1]}: ranks {ranks}")
    if opts.sketch:
        _tune_sketch(results, model, loss_fn, opts, reporter, initial, by_name)
    return calibration.losses


def _tune_sketch(
    results: list[ShapeResult],
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    opts: SearchOptions,
    reporter: Reporter,
    initial: dict[str, Tensor],
    dense: dict[str, ParamSpectra],
) -> None:
    """Set each shape's sketched block size, ranks and ℓ (step 4 of the module docstring)."""
    for r in results:
        r.sketch_block = space.sketch_block_size(r.shape, r.block_size)
    by_name = dense
    if any(r.sketch_block != r.block_size for r in results):
        current = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(initial)
        calibration = calibrate(
            model,
            loss_fn,
            opts.steps,
            {name: r.sketch_block for r in results for name in r.names},
            lr=opts.lr,
            divergence=opts.divergence,
            precondition_every=opts.precondition_every,
        )
        model.load_state_dict(current)  # the model ends as after the dense calibration
        by_name = {ps.name: ps for ps in calibration.spectra}
    reporter.advance("sketch calibration " + ("done" if by_name is not dense else "reused"))
    for r in results:
        spectra = [by_name[name] for name in r.names if name in by_name]
        if spectra:
            r.sketch = sketch_ranks(spectra, opts.mass, opts.flatness, opts.sketch_budget)
            label = f"k {r.sketch.rank_a.rank}/{r.sketch.rank_b.rank}, ℓ {r.sketch.sketch_rank}"
        else:
            label = "no spectra"
        reporter.advance(f"{r.shape[0]}x{r.shape[1]}: sketch {label}")


def tune_shape_kernels(r: ShapeResult, device: torch.device, opts: SearchOptions) -> None:
    """Tune every op on the largest block stack of the chosen layout."""
    groups = BlockLayout.build(r.shape, r.block_size).groups
    group = max(groups, key=lambda g: g.shape[0] * g.shape[1])
    block = (len(group.offsets), *group.shape)
    for op in space.KERNEL_OPS.values():
        r.kernels[op.name] = tune_kernel(
            op, block, r.dtype, device, max_configs=opts.max_configs, seed=opts.seed, cpu_reps=opts.cpu_reps
        )
