"""Kernel-config search: time every Triton launch config of an op and keep the fastest that matches.

Step 5 of :mod:`autotune.search`:

5. **Kernel configs** (CUDA, or forced): every op of :data:`autotune.space.KERNEL_OPS` on the
   largest block stack, each config timed on its own fresh inputs; the winner is kept only when
   its output matches the default launch's on identical inputs.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from autotune import space
from autotune.measure import Timing, bench
from autotune.search_types import KernelResult, SearchOptions, ShapeResult
from tritonkron.math.blocking import BlockLayout

logger = logging.getLogger(__name__)

__all__ = ["tune_kernel", "tune_shape_kernels"]


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


def tune_shape_kernels(r: ShapeResult, device: torch.device, opts: SearchOptions) -> None:
    """Tune every op on the largest block stack of the chosen layout."""
    groups = BlockLayout.build(r.shape, r.block_size).groups
    group = max(groups, key=lambda g: g.shape[0] * g.shape[1])
    block = (len(group.offsets), *group.shape)
    for op in space.KERNEL_OPS.values():
        r.kernels[op.name] = tune_kernel(
            op, block, r.dtype, device, max_configs=opts.max_configs, seed=opts.seed, cpu_reps=opts.cpu_reps
        )
