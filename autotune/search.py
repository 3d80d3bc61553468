"""Per-shape search: block size, calibrated ranks, kernel configs and CPU knobs → tuning entries.

For each distinct (matrix shape, dtype) of a model's matrix parameters, in this order (each step's
rule is written once, in the module that runs it):

1. **Block size**: the largest candidate within the memory and time budgets
   (:mod:`autotune.step_timing`).
2. **Ranks**: one calibration run, then the rank rule per factor (:mod:`autotune.rank_search`).
3. **Newton–Schulz steps** to the residual target ``ns_tol`` (:mod:`autotune.rank_search`).
4. **Sketched ranks** for ``tk.Kron(rank="auto", sketch=True)`` (:mod:`autotune.rank_search`).
5. **Kernel configs** (CUDA, or forced), each checked against the default launch
   (:mod:`autotune.kernel_search`).
6. **Predictions** of step time and state bytes (:mod:`autotune.step_timing`).
7. **CPU knobs**: threads and inverse-root method (:mod:`autotune.step_timing`).

This module runs the steps in that order (:func:`tune_model`). The steps themselves live in
:mod:`autotune.step_timing` (1, 6, 7), :mod:`autotune.rank_search` (2–4) and
:mod:`autotune.kernel_search` (5); the options and result records in :mod:`autotune.search_types`.
All public names are importable from here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from autotune.device import describe_device
from autotune.kernel_search import tune_kernel, tune_shape_kernels
from autotune.measure import cpu_threads
from autotune.rank_search import _tune_ranks
from autotune.search_types import KernelResult, Reporter, SearchOptions, ShapeResult, TuneResult
from autotune.step_timing import _cpu_knobs, _predict, choose_block_size
from tritonkron.math.blocking import matrix_shape
from tritonkron.ops._triton import HAS_TRITON
from tritonkron.options import triton_interpret
from tritonkron.tuning.entry import dtype_name
from tritonkron.tuning.file import TuningTable, device_name

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


class _Silent:
    def start(self, total: int) -> None:
        del total

    def advance(self, label: str) -> None:
        del label


def _shapes(model: nn.Module) -> dict[Key, ShapeResult]:
    shapes: dict[Key, ShapeResult] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or p.dim() < 2 or p.numel() == 0:
            continue
        shape = matrix_shape(p.shape)
        key = (shape, dtype_name(p.dtype))
        shapes.setdefault(key, ShapeResult(shape=shape, dtype=p.dtype, names=[])).names.append(name)
    return shapes


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
        described = describe_device(device)  # inside: on the CPU, the tuned thread count
    table = TuningTable(device=device_name(device), entries=[r.entry() for r in results])
    return TuneResult(table, tuple(results), losses, described)
