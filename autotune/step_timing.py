"""Whole ``tk.Kron`` step timings of one shape: block size, CPU knobs and predictions.

Each measurement runs a real ``tk.Kron`` step on a stand-alone parameter of the shape
(:func:`autotune.measure.measure_kron_step`). Steps 1, 6 and 7 of :mod:`autotune.search`:

1. **Block size** (:func:`choose_block_size`): every candidate of
   :func:`autotune.space.block_size_candidates` is run as a real ``tk.Kron`` step on a
   stand-alone parameter of that shape (fresh per candidate), timed over whole refresh cycles,
   and its optimizer state counted. Larger blocks precondition more cross-correlations (a
   block ignores those between blocks), so the choice is the *largest* candidate whose state
   stays within ``memory_budget`` floats per parameter element and whose step time stays within
   ``time_budget`` × the fastest candidate's; the least-memory candidate if none fits.
6. **Predictions**: step time and optimizer-state bytes at full rank, at the tuned rank (dense
   factors) and with ``sketch=True`` at the sketched choice (without it: the dense ranks, ℓ = 2k).
7. **CPU knobs** (CPU only): thread count and inverse-root method (eigh vs Newton–Schulz).
"""

from __future__ import annotations

from typing import Any

import torch

import tritonkron as tk
from autotune import space
from autotune.measure import Timing, bench, cpu_threads, measure_kron_step
from autotune.search_types import SearchOptions, ShapeResult
from tritonkron.tuning.entry import DEFAULT_BLOCK_SIZE
from tritonkron.tuning.lookup import single_rank

__all__ = ["choose_block_size"]


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
