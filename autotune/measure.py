"""The single timing primitive of the tuner (and of the benchmarks that report tuned choices).

:func:`bench` times any callable; :func:`measure_kron_step` uses it to time a whole ``tk.Kron``
step of one parameter shape, and :func:`state_bytes` counts an optimizer state.

- CUDA: ``triton.testing.do_bench`` with quantiles (0.5, 0.2, 0.8), which flushes the L2 cache
  between runs and synchronises around them.
- CPU: ``time.perf_counter`` around each call after a few warm-up calls; the same quantiles of
  the per-call times.

**Fresh inputs per config.** :func:`bench` never sees caller buffers: it calls ``make_inputs()``
once per measurement and times ``fn(inputs)`` on what that returns. An in-place kernel (a factor
EMA ``X ← βX + s·GGᵀ`` with ``out=X``) therefore only ever updates the tuner's own copies, however
many times a config is repeated, and every config starts from identical inputs (Triton's own
autotuner re-runs every config on the live buffers, which needs ``restore_value``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

import tritonkron as tk

__all__ = ["QUANTILES", "Timing", "bench", "cpu_threads", "measure_kron_step", "state_bytes"]

QUANTILES = (0.5, 0.2, 0.8)
"""Reported quantiles of the per-call time: median, then a 20–80 % band."""

T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    """Per-call run time in milliseconds.

    Attributes:
        p50: median.
        p20: 20th percentile.
        p80: 80th percentile.
    """

    p50: float
    p20: float
    p80: float


def _quantiles(times_ms: list[float]) -> Timing:
    t = torch.tensor(times_ms, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor(QUANTILES, dtype=torch.float64))
    return Timing(float(q[0]), float(q[1]), float(q[2]))


def bench(
    fn: Callable[[T], Any],
    make_inputs: Callable[[], T],
    device: torch.device | str,
    *,
    warmup_ms: float = 10.0,
    rep_ms: float = 40.0,
    cpu_warmup: int = 1,
    cpu_reps: int = 5,
) -> Timing:
    """Time ``fn(make_inputs())``: the inputs are built once, outside the timed region.

    Args:
        fn: the work to time; it may modify its inputs (they are this call's own).
        make_inputs: builds fresh inputs (called exactly once per :func:`bench` call).
        device: where the work runs; "cuda" uses ``do_bench``, anything else ``perf_counter``.
        warmup_ms: ``do_bench`` warm-up time (CUDA).
        rep_ms: ``do_bench`` measurement time (CUDA).
        cpu_warmup: untimed calls first (CPU).
        cpu_reps: timed calls (CPU).

    Returns:
        The per-call :class:`Timing`.
    """
    inputs = make_inputs()
    if torch.device(device).type == "cuda":
        import triton.testing

        q = triton.testing.do_bench(
            lambda: fn(inputs), warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES)
        )
        return Timing(float(q[0]), float(q[1]), float(q[2]))
    for _ in range(cpu_warmup):
        fn(inputs)
    times = []
    for _ in range(max(1, cpu_reps)):
        start = time.perf_counter()
        fn(inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return _quantiles(times)


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def state_bytes(value: object) -> int:
    """Bytes of every tensor in ``value`` (an optimizer state, or nested dicts and lists of them)."""
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(v) for v in value)
    return 0


def measure_kron_step(
    shape: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device | str,
    *,
    block_size: int,
    rank: int | None = None,
    sketch: bool = False,
    sketch_rank: int | None = None,
    divergence: str = "logdet",
    precondition_every: int = 10,
    cpu_reps: int = 3,
    seed: int = 0,
) -> tuple[Timing, int]:
    """Time one ``tk.Kron`` step of a stand-alone ``shape`` parameter, amortised over a refresh cycle.

    The parameter, its (fixed, random) gradient and the optimizer are built for this call and
    initialised by one step (which moves nothing); each timed call then runs
    ``precondition_every`` steps, so the basis refresh is counted once per cycle.

    Args:
        shape: parameter shape.
        dtype: parameter dtype.
        device: where to run.
        block_size: ``tk.Kron``'s ``block_size``.
        rank: ``tk.Kron``'s ``rank``.
        sketch: ``tk.Kron``'s ``sketch`` (needs an int ``rank``).
        sketch_rank: ``tk.Kron``'s ``sketch_rank`` (None: 2·rank).
        divergence: ``tk.Kron``'s ``divergence``.
        precondition_every: ``tk.Kron``'s refresh period T (steps per timed call).
        cpu_reps: timed calls on the CPU.
        seed: seed of the gradient.

    Returns:
        (time per step, optimizer-state bytes of the parameter, momentum included).
    """

    def make() -> tuple[nn.Parameter, tk.Kron]:
        gen = torch.Generator().manual_seed(seed)
        p = nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
        p.grad = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
        opt = tk.Kron(
            [p],
            lr=1e-6,
            divergence=divergence,
            precondition_every=precondition_every,
            block_size=block_size,
            rank=rank,
            sketch=sketch,
            sketch_rank=sketch_rank,
        )
        opt.step()
        return p, opt

    def run(x: tuple[nn.Parameter, tk.Kron]) -> None:
        for _ in range(precondition_every):
            x[1].step()

    p, opt = make()
    nbytes = state_bytes(opt.state[p])
    t = bench(run, make, device, cpu_reps=cpu_reps)
    cycle = precondition_every
    return Timing(t.p50 / cycle, t.p20 / cycle, t.p80 / cycle), nbytes
