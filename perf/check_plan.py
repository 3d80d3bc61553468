"""Run plans of ``python -m perf.gpu_check``: constants, and which shapes, dtypes and repetitions
each mode (full, ``--quick``, ``--cpu-interpret``) runs. Shapes come from :mod:`perf.shapes`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from perf import shapes
from perf.shapes import BlockShape, ModelShapes

OPS = (
    "factor_update",
    "precondition",
    "rotate",
    "rotated_statistics",
    "spike_and_flat",
    "track_eigenvalues",
    "inverse_root",
    "kron_step",
    "e2e",
)
SECTION_OPS = ("kron_step", "e2e")  # whole-step sections; the ops before them are kernel ops
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
NS_RESIDUAL_TOL = 5e-5
NS_POWERS = (2, 4)
NS_GEMMS_PER_ITER = {2: 3, 4: 4}
QUANTILES = (0.5, 0.2, 0.8)
BETA, EPS = 0.95, 1e-8
FACTOR_VARIANTS = tuple(f"{side}/{w}" for w in ("I", "eigen", "dense") for side in ("left", "right"))
LOWP_FACTOR_TIMING = ("left/I", "right/I")  # the tensor-core path; weighted forms run in fp32 anyway
# whole layers; one parameter per block (stacked across parameters, the default); the same, each
# parameter stepped on its own (``stack=False``)
STEP_LAYOUTS = ("batched", "per_block", "per_block_unstacked")
BACKENDS = ("reference", "triton")
GRAD_POOL = 4  # distinct gradients cycled through in the step benchmark
CORRECTNESS_BUDGET_SHARE = 0.5  # correctness cases past this share of --budget-s are skipped (SKIP rows)
LOW_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Plan:
    """Shapes, dtypes and repetitions of one run (see :func:`make_plan`)."""

    mode: str
    device: str
    ops: tuple[str, ...]
    correctness_blocks: tuple[BlockShape, ...]
    correctness_dtypes: tuple[torch.dtype, ...]
    ns_correctness_blocks: tuple[BlockShape, ...]
    timing_blocks: tuple[BlockShape, ...]
    timing_dtypes: tuple[torch.dtype, ...]
    ns_timing_blocks: tuple[BlockShape, ...]
    step_model: ModelShapes
    step_block_size: int
    step_warmup: int
    step_steps: int
    peak_matmul_size: int
    peak_copy_bytes: int
    budget_s: float
    step_reserve_s: float
    cpu_reps: int = 2
    bench_warmup_ms: int = 10
    bench_rep_ms: int = 50


def make_plan(quick: bool, cpu_interpret: bool, selected: Sequence[str], budget_s: float | None) -> Plan:
    """The run plan for GPU full, GPU ``--quick`` or the CPU smoke run (``--cpu-interpret``)."""
    if cpu_interpret:
        return Plan(
            mode="cpu-interpret",
            device="cpu",
            ops=tuple(selected),
            correctness_blocks=shapes.CORRECTNESS_BLOCKS_CPU,
            correctness_dtypes=(torch.float32, torch.float16),
            ns_correctness_blocks=shapes.NS_BLOCKS_CPU,
            timing_blocks=shapes.TIMING_BLOCKS_CPU[: 1 if quick else 2],
            timing_dtypes=(torch.float32,),
            ns_timing_blocks=shapes.NS_BLOCKS_CPU,
            step_model=shapes.TINY,
            step_block_size=shapes.TINY_BLOCK_SIZE,
            step_warmup=1,
            step_steps=2,
            peak_matmul_size=256,
            peak_copy_bytes=1 << 24,
            budget_s=budget_s or 600.0,
            step_reserve_s=0.0,
            cpu_reps=1 if quick else 2,
        )
    blocks = shapes.CORRECTNESS_BLOCKS_GPU
    return Plan(
        mode="quick" if quick else "full",
        device="cuda",
        ops=tuple(selected),
        correctness_blocks=(blocks[0], blocks[2]) if quick else blocks,
        correctness_dtypes=(torch.float32, torch.bfloat16)
        if quick
        else (torch.float32, torch.float16, torch.bfloat16),
        ns_correctness_blocks=shapes.NS_CORRECTNESS_GPU[1:] if quick else shapes.NS_CORRECTNESS_GPU,
        timing_blocks=shapes.TIMING_BLOCKS_GPU_QUICK if quick else shapes.TIMING_BLOCKS_GPU,
        timing_dtypes=(torch.float32, torch.bfloat16),
        ns_timing_blocks=shapes.NS_TIMING_GPU_QUICK if quick else shapes.NS_TIMING_GPU,
        step_model=shapes.GPT2_SMALL,
        step_block_size=shapes.DEFAULT_BLOCK_SIZE,
        step_warmup=2 if quick else 3,
        step_steps=10 if quick else 20,
        peak_matmul_size=8192,
        peak_copy_bytes=1 << 30,
        budget_s=budget_s or (120.0 if quick else 400.0),
        step_reserve_s=20.0 if quick else 40.0,
    )
