"""One-command GPU check of tritonkron: environment, device peak, correctness, op timing, optimizer step.

Usage::

    python -m perf.gpu_check [--quick] [--out-dir perf/results] [--ops OP ...] [--budget-s S]
    python -m perf.gpu_check --quick --cpu-interpret    # CPU smoke run through the Triton interpreter

``--out-dir`` defaults to ``perf/results`` (``$TMPDIR/tritonkron_gpu_check`` with ``--cpu-interpret``).

Without CUDA and without ``--cpu-interpret`` it prints why and exits 2. ``--cpu-interpret`` sets
``TRITON_INTERPRET=1`` at the top of this module, before anything imports triton, and runs a tiny
version of the same pipeline on CPU tensors (shapes ≤ 32, 1–2 repetitions timed with
``time.perf_counter``), so that the script itself is tested without a GPU.

Sections (run in this order; each writes its rows as soon as it finishes):

1. Environment: Python, torch, triton, CUDA, GPU, ``nvidia-smi``, the git commit (read from
   ``.git`` without running git; ``TRITONKRON_GIT_COMMIT`` overrides it where ``.git`` is absent).
2. Device peak: a large fp32, bf16 and fp16 ``torch.matmul`` (TFLOP/s) and a device-to-device copy
   (GB/s). fp32 runs at the process's default matmul precision (PyTorch's default is IEEE fp32,
   no TF32), the same precision as the fp32 kernels (``input_precision="ieee"``).
3. Correctness: the Triton path (``ops.<op>(..., backend="triton")``) against the float64
   reference (``backend="reference"`` on float64 copies of the same rounded inputs), on fresh
   random inputs over a few block shapes. Metric: relative Frobenius error ‖out − ref‖_F/‖ref‖_F
   (the max over outputs; NaN counts as ∞), PASS when ≤ the tolerance of the input dtype: fp32
   1e-5, fp16 2e-3, bf16 1e-2. Newton–Schulz (p = 2, 4; SPD A = GGᵀ/d + 0.1·I, κ ≈ 40) is judged
   by its residual ‖XᵖA − I‖_F/√d in float64 (fp32 root) ≤ 5e-5 and convergence: the fp32
   reference iteration itself reaches 4e-6–8.5e-6 there (d = 257–768), the root's fp32 rounding.
4. Op timing: Triton path vs the torch reference (the same op on the same inputs; on CUDA the
   reference's matmuls are cuBLAS) with ``triton.testing.do_bench(fn, warmup=10, rep=50,
   quantiles=[0.5, 0.2, 0.8])``, for every stacked block shape of GPT-2-small and Llama-7B at
   block size 1024 (``perf.shapes``). Reported: p50 ms, TFLOP/s (GB/s for the memory-bound
   eigenvalue tracking) from the model below, the fraction of the measured peak, and the speed-up
   reference p50 / Triton p50. Throughput quantiles are FLOPs / time quantiles (p20 of the
   throughput comes from p80 of the time).
5. Optimizer step: ``tk.Kron`` (fp32) on one GPT-2-small transformer block (attn_qkv, attn_proj,
   mlp_fc, mlp_proj), reference backend vs triton backend (``TRITONKRON_BACKEND``), median step
   time over N steps after warm-up (``torch.cuda.synchronize`` around each step; the basis
   refresh every 10 steps is included, so p80 shows it), and a per-block loop baseline: the same
   Kron with every block a separate parameter (B = 1 launches), which shows the batching gain.
   The final parameters of the two backends are compared (informative: trajectories may drift).
6. Files under ``--out-dir``: rows appended to ``gpu_check_correctness.csv``,
   ``gpu_check_timing.csv`` and ``gpu_check_step.csv`` (columns :data:`CSV_COLUMNS`), and the
   Markdown summary ``gpu_check_<date>_<gpu>.md`` (rewritten after each section).

Modes (shapes from ``perf.shapes``):

- full: correctness on 4 block shapes × fp32/fp16/bf16 (112 rows); timing on the 11 GPT-2-small
  and Llama-7B stacks × fp32 (every variant) and bf16 (W = I factor updates and the other ops),
  plus NS on 2 factor stacks (158 cases, 2 providers each); step over 20 steps after 3 warm-up.
- ``--quick``: correctness on 2 shapes × fp32/bf16, timing on one attention stack per model, NS on
  one stack, step over 10 steps: about a minute.
- ``--budget-s`` (default 400 s, quick 120 s) bounds the run: correctness cases past half of it
  are not run (SKIP rows), timing cases past it minus a reserve for the step are skipped (listed
  in the summary), so that a slow compile cannot eat the whole device allocation.

Exit status: 0 when every row passed; 1 when a correctness row failed or a case raised (all files
are still written); 2 when there is no CUDA device and no ``--cpu-interpret``.

FLOP model, per call, of what a dense implementation executes. The symmetric kernels (factor
update, NS) compute only the upper tiles, about half, and are still credited with the full
product's FLOPs, so TFLOP/s compare like for like with the reference::

    factor_update, W = I            2·B·d²·k               d = m, k = n (left); d = n, k = m (right)
    factor_update, W = Q diag(w) Qᵀ  2·B·d·k² + 2·B·d²·k    P = 𝒢Q, then P diag(w) Pᵀ
    factor_update, dense W          2·B·d·k² + 2·B·d²·k    P = 𝒢W, then P 𝒢ᵀ
    precondition                    4·B·(m²n + mn²)        Q_AᵀM 2Bm²n, ·Q_B 2Bmn², Q_A· 2Bm²n, ·Q_Bᵀ 2Bmn²
    spike_and_flat (rank k = m/8)   4·B·m·k·n              U_kᵀY and U_k C
    inverse_root (NS, p)            2·B·d³·(3 + g_p·iters) g_2 = 3, g_4 = 4 GEMMs per iteration;
                                                           3 squarings for the λ_max bound
    track_eigenvalues (bytes)       e·B·(mn + 3(m + n) + 2) Ĝ once, a, b, weights, outputs, scales

Fraction of peak: against the peak of the precision the provider's GEMMs run in. The reference
runs in its input dtype. The Triton factor update with W = I and fp16/bf16 G uses the tensor-core
``tl.dot``; every other Triton path keeps fp32 operands or intermediates (three of the four
precondition GEMMs, the second spike-and-flat GEMM) and is compared with the fp32 peak.
Eigenvalue tracking is compared with the copy bandwidth (the kernel reads Ĝ twice, so 50% of it
is that kernel's ceiling when Ĝ does not stay in L2).
"""

from __future__ import annotations

import os
import sys

if "--cpu-interpret" in sys.argv:  # before anything imports triton: the interpreter is chosen at import
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402
from torch import Tensor  # noqa: E402

import tritonkron as tk  # noqa: E402
from perf import shapes  # noqa: E402
from perf.shapes import BlockShape, ModelShapes  # noqa: E402
from tritonkron import ops  # noqa: E402
from tritonkron.reference.inverse_root import RootStatus, inverse_root_eigh  # noqa: E402

OPS = ("factor_update", "precondition", "spike_and_flat", "track_eigenvalues", "inverse_root", "kron_step")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
NS_RESIDUAL_TOL = 5e-5
NS_POWERS = (2, 4)
NS_GEMMS_PER_ITER = {2: 3, 4: 4}
NS_BOUND_SQUARINGS = 3
QUANTILES = (0.5, 0.2, 0.8)
BETA, EPS = 0.95, 1e-8
FACTOR_VARIANTS = tuple(f"{side}/{w}" for w in ("I", "eigen", "dense") for side in ("left", "right"))
LOWP_FACTOR_TIMING = ("left/I", "right/I")  # the tensor-core path; weighted forms run in fp32 anyway
STEP_LAYOUTS = ("batched", "per_block")
BACKENDS = ("reference", "triton")
GRAD_POOL = 4  # distinct gradients cycled through in the step benchmark
CORRECTNESS_BUDGET_SHARE = 0.5  # correctness cases past this share of --budget-s are skipped (SKIP rows)
# fmt: off
CSV_COLUMNS = [
    "op", "provider", "shape_name", "B", "m", "n", "dtype", "metric", "unit", "p50", "p20", "p80",
    "gpu_name", "torch", "triton", "git_commit", "timestamp", "variant", "tolerance", "status", "note",
]
# fmt: on
CSV_FILES = {
    "correctness": "gpu_check_correctness.csv",
    "timing": "gpu_check_timing.csv",
    "step": "gpu_check_step.csv",
}
_LOW = (torch.float16, torch.bfloat16)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_REPO = Path(__file__).resolve().parents[1]
_RESULTS = _REPO / "perf" / "results"


# ---------------------------------------------------------------------------------------------
# Plan: what each mode runs.
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Environment and timing.
# ---------------------------------------------------------------------------------------------


def git_commit(root: Path = _REPO) -> str:
    """The checked-out commit, read from ``.git`` files (no git process); "unknown" if unavailable."""
    override = os.environ.get("TRITONKRON_GIT_COMMIT")
    if override:
        return override
    git = root / ".git"
    try:
        if git.is_file():  # worktree or submodule: "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head  # detached HEAD
        ref = head.split(":", 1)[1].strip()
        common = (
            (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").exists() else git
        )
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
            packed = base / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except (OSError, IndexError):
        pass
    return "unknown"


def collect_env(plan: Plan) -> dict[str, str]:
    """Versions, device and commit of this run (the provenance written next to every number)."""
    cuda = plan.device == "cuda"
    env = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": str(torch.version.cuda),
        "gpu_name": torch.cuda.get_device_name() if cuda else "cpu-interpret",
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else "-",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""),
        "git_commit": git_commit(),
    }
    return env


def nvidia_smi() -> str:
    """``nvidia-smi`` output, or why there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "(nvidia-smi not found)"
    try:
        done = subprocess.run([exe], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"(nvidia-smi failed: {error})"
    return done.stdout.strip() or done.stderr.strip()


def _quantiles(times_ms: Sequence[float]) -> tuple[float, float, float]:
    t = torch.tensor(list(times_ms), dtype=torch.float64)
    q = torch.quantile(t, torch.tensor(QUANTILES, dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def measure(fn: Callable[[], object], plan: Plan) -> tuple[float, float, float]:
    """(p50, p20, p80) of ``fn``'s run time in ms: ``do_bench`` on CUDA, ``perf_counter`` on CPU."""
    if plan.device == "cuda":
        q = triton.testing.do_bench(
            fn, warmup=plan.bench_warmup_ms, rep=plan.bench_rep_ms, quantiles=list(QUANTILES)
        )
        return float(q[0]), float(q[1]), float(q[2])
    times = []
    for _ in range(plan.cpu_reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return _quantiles(times)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_peaks(plan: Plan) -> dict[str, float]:
    """Device peaks: ``fp32``/``bf16``/``fp16`` matmul TFLOP/s and ``bandwidth`` (copy) GB/s (NaN on error)."""
    n, dev = plan.peak_matmul_size, plan.device
    peaks = {}
    for name, dtype in _DTYPES.items():
        try:
            a = torch.randn(n, n, device=dev).to(dtype)
            b = torch.randn(n, n, device=dev).to(dtype)
            peaks[name] = 2.0 * n**3 / (measure(lambda a=a, b=b: torch.matmul(a, b), plan)[0] * 1e-3) / 1e12
            del a, b
        except Exception as error:  # a missing peak only blanks the %peak columns
            print(f"warning: {name} peak not measured: {error}", file=sys.stderr)
            peaks[name] = math.nan
    src = torch.empty(plan.peak_copy_bytes // 4, device=dev)
    dst = torch.empty_like(src)
    peaks["bandwidth"] = 2.0 * plan.peak_copy_bytes / (measure(lambda: dst.copy_(src), plan)[0] * 1e-3) / 1e9
    return peaks


@contextlib.contextmanager
def backend_env(backend: str) -> Iterator[None]:
    """Set ``TRITONKRON_BACKEND`` (read by ``tritonkron._env`` at every op call) for a block."""
    old = os.environ.get("TRITONKRON_BACKEND")
    os.environ["TRITONKRON_BACKEND"] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITONKRON_BACKEND", None)
        else:
            os.environ["TRITONKRON_BACKEND"] = old


# ---------------------------------------------------------------------------------------------
# Inputs: one ``_setup_<op>`` per op, shared by the correctness and timing runs.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One (op, variant, stacked block shape, input dtype) combination."""

    op: str
    variant: str
    block: BlockShape
    dtype: torch.dtype


class Prepared(NamedTuple):
    """Inputs of a case and how to call the op on them.

    Attributes:
        fn: ``fn(backend, *tensors)`` runs the op through :mod:`tritonkron.ops`.
        tensors: the inputs (already in their dtypes).
        flops: the FLOP model of one call (module docstring).
        bytes: the byte model of one call (memory-bound ops; 0 otherwise).
    """

    fn: Callable[..., Any]
    tensors: tuple[Tensor, ...]
    flops: float
    bytes: float = 0.0

    def run(self, backend: str) -> Any:
        """The op on the inputs through ``backend``."""
        return self.fn(backend, *self.tensors)

    def oracle(self) -> Any:
        """The reference on float64 copies of the (already rounded) inputs."""
        return self.fn("reference", *(t.double() for t in self.tensors))


def _generator(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=g, device=g.device) * scale


def _positive(g: torch.Generator, *shape: int) -> Tensor:
    return 0.5 + torch.rand(*shape, generator=g, device=g.device)


def _symmetric(g: torch.Generator, B: int, d: int) -> Tensor:
    Z = _randn(g, B, d, d, scale=d**-0.5)
    return 0.5 * (Z + Z.transpose(-1, -2))


def _basis(g: torch.Generator, B: int, d: int, k: int, orthonormal: bool) -> Tensor:
    """``[B, d, k]`` orthonormal columns (QR; correctness) or a scaled Gaussian (timing: no QR cost)."""
    Z = _randn(g, B, d, k, scale=d**-0.5)
    return torch.linalg.qr(Z).Q if orthonormal else Z


def _setup_factor_update(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    side, form = case.variant.split("/")
    B, m, n = case.block.shape
    d, k = (m, n) if side == "left" else (n, m)
    X, G = _symmetric(g, B, d), _randn(g, B, m, n).to(case.dtype)
    scale = 0.05 * _positive(g, B)
    flops = 2.0 * B * d * d * k
    weights: tuple[Tensor, ...] = ()
    if form == "eigen":
        weights = (_basis(g, B, k, k, exact), _positive(g, B, k))
    elif form == "dense":
        weights = (_symmetric(g, B, k),)
    if weights:
        flops += 2.0 * B * d * k * k

    def fn(backend: str, X: Tensor, G: Tensor, scale: Tensor, *w: Tensor) -> Tensor:
        weight = None if not w else (w[0] if len(w) == 1 else (w[0], w[1]))
        return ops.factor_update(X, G, BETA, scale, side, weight, backend=backend)

    return Prepared(fn, (X, G, scale, *weights), flops)


def _setup_precondition(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    B, m, n = case.block.shape
    dt = case.dtype
    tensors = (
        _randn(g, B, m, n),
        _basis(g, B, m, m, exact),
        _basis(g, B, n, n, exact),
        _positive(g, B, m),
        _positive(g, B, n),
    )

    def fn(backend: str, *t: Tensor) -> Tensor:
        return ops.precondition(*t, EPS, backend=backend)

    return Prepared(fn, tuple(t.to(dt) for t in tensors), 4.0 * B * (m * m * n + m * n * n))


def _setup_spike_and_flat(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    B, m, n = case.block.shape
    k = shapes.spike_rank(m)
    tensors = (_basis(g, B, m, k, exact), _positive(g, B, k), 0.5 * _positive(g, B, 1), _randn(g, B, m, n))

    def fn(backend: str, *t: Tensor) -> Tensor:
        return ops.spike_and_flat(*t, backend=backend)

    return Prepared(fn, tuple(t.to(case.dtype) for t in tensors), 4.0 * B * m * k * n)


def _setup_track_eigenvalues(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    B, m, n = case.block.shape
    tensors = (
        _positive(g, B, m),
        _positive(g, B, n),
        _randn(g, B, m, n),
        _positive(g, B, n),
        _positive(g, B) / n,
        _positive(g, B, m),
        _positive(g, B) / m,
    )

    def fn(backend: str, *t: Tensor) -> tuple[Tensor, Tensor]:
        return ops.track_eigenvalues(*t, BETA, backend=backend)

    itemsize = torch.empty((), dtype=case.dtype).element_size()
    nbytes = float(itemsize * B * (m * n + 3 * (m + n) + 2))
    return Prepared(fn, tuple(t.to(case.dtype) for t in tensors), 6.0 * B * m * n, nbytes)


def _spd(g: torch.Generator, B: int, d: int) -> Tensor:
    """fp32 SPD ``[B, d, d]``: GGᵀ/d + 0.1·I formed in float64 (κ ≈ 40 for large d)."""
    G = torch.randn(B, d, d, generator=g, device=g.device, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64, device=g.device)
    return (G @ G.transpose(-1, -2) / d + 0.1 * eye).float()


def _setup_inverse_root(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    p = int(case.variant.removeprefix("p="))

    def fn(backend: str, A: Tensor) -> Any:
        return ops.inverse_root(A, p, backend=backend)

    B, d, _ = case.block.shape
    return Prepared(fn, (_spd(g, B, d),), 0.0)


SETUPS: dict[str, Callable[[Case, torch.Generator, bool], Prepared]] = {
    "factor_update": _setup_factor_update,
    "precondition": _setup_precondition,
    "spike_and_flat": _setup_spike_and_flat,
    "track_eigenvalues": _setup_track_eigenvalues,
    "inverse_root": _setup_inverse_root,
}


def _variants(op: str) -> tuple[str, ...]:
    return {
        "factor_update": FACTOR_VARIANTS,
        "precondition": ("full",),
        "spike_and_flat": ("rank=m/8",),
        "track_eigenvalues": ("logdet",),
        "inverse_root": tuple(f"p={p}" for p in NS_POWERS),
    }[op]


def _ns_flops(block: BlockShape, p: int, iterations: int) -> float:
    B, d, _ = block.shape
    return 2.0 * B * d**3 * (NS_BOUND_SQUARINGS + NS_GEMMS_PER_ITER[p] * iterations)


# ---------------------------------------------------------------------------------------------
# Rows and files.
# ---------------------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def make_row(
    env: dict[str, str],
    case: Case,
    provider: str,
    metric: str,
    unit: str,
    q: Sequence[float | None],
    *,
    tolerance: float | None = None,
    status: str = "",
    note: str = "",
) -> dict[str, Any]:
    """One CSV row (:data:`CSV_COLUMNS`); ``q`` is (p50, p20, p80), None for blanks."""
    b = case.block
    return {
        "op": case.op,
        "provider": provider,
        "shape_name": b.name,
        "B": b.B,
        "m": b.m,
        "n": b.n,
        "dtype": _dtype_name(case.dtype),
        "metric": metric,
        "unit": unit,
        "p50": q[0],
        "p20": q[1],
        "p80": q[2],
        "gpu_name": env["gpu_name"],
        "torch": env["torch"],
        "triton": env["triton"],
        "git_commit": env["git_commit"],
        "timestamp": env["timestamp"],
        "variant": case.variant,
        "tolerance": tolerance,
        "status": status,
        "note": note,
    }


def append_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Append ``rows`` to ``path`` (header written once); a file with other columns is left alone
    and the rows go to a timestamped sibling instead. Returns the file written."""
    if not rows:
        return path
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header != CSV_COLUMNS:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            path = path.with_name(f"{path.stem}_{stamp}{path.suffix}")
            print(f"warning: {path.name}: existing CSV has other columns; writing {path}", file=sys.stderr)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return path


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}"


def _table(records: list[dict[str, Any]]) -> str:
    return pd.DataFrame(records).to_markdown(index=False) if records else "(none)"


@dataclass
class Report:
    """Collects every section's display table and writes the CSVs and the Markdown summary."""

    out_dir: Path
    env: dict[str, str]
    smi: str
    plan: Plan
    started: float = field(default_factory=time.monotonic)
    peaks: dict[str, float] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def markdown_path(self) -> Path:
        """``gpu_check_<date>_<gpu>.md`` under the output folder."""
        date = self.env["timestamp"][:10]
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.env["gpu_name"]).strip("-") or "unknown"
        return self.out_dir / f"gpu_check_{date}_{gpu}.md"

    def section(self, name: str, rows: list[dict[str, Any]], kind: str | None, title: str) -> None:
        """Print a section's table, append its CSV rows, rewrite the Markdown file."""
        table = self.tables.get(name, [])
        print(f"\n## {title}\n\n{_table(table)}")
        for note in self.notes.get(name, []):
            print(f"- {note}")
        if kind is not None:
            append_csv(self.out_dir / CSV_FILES[kind], rows)
        self.write_markdown()

    def write_markdown(self) -> Path:
        """Write the Markdown summary (environment, peaks, one table per section)."""
        env_rows = [{"key": k, "value": v} for k, v in self.env.items()]
        parts = [
            f"# tritonkron GPU check: {self.env['gpu_name']}, {self.env['timestamp'][:10]}",
            f"Mode `{self.plan.mode}`; runtime {self.elapsed():.0f} s when this file was written; "
            f"command `python -m perf.gpu_check {' '.join(sys.argv[1:])}`.",
            "## Environment",
            _table(env_rows),
            "```text\n" + self.smi + "\n```",
        ]
        if self.peaks:
            peak_rows = [
                {"peak": k, "value": _fmt(v, 4), "unit": "GB/s" if k == "bandwidth" else "TFLOP/s"}
                for k, v in self.peaks.items()
            ]
            parts += ["## Device peak (measured)", _table(peak_rows)]
        titles = {
            "correctness": "Correctness (Triton vs float64 reference)",
            "timing": "Op timing",
            "step": "Optimizer step (tk.Kron, one GPT-2-small block, fp32)",
        }
        for name, title in titles.items():
            if name in self.tables:
                parts += [f"## {title}", _table(self.tables[name])]
                parts += [f"- {note}" for note in self.notes.get(name, [])]
        parts += [
            "## Models",
            "FLOP / byte models and the fraction-of-peak rule: see the docstring of "
            "`perf/gpu_check.py`; shapes: `perf/shapes.py`.",
        ]
        path = self.markdown_path()
        path.write_text("\n\n".join(parts) + "\n")
        return path


# ---------------------------------------------------------------------------------------------
# Sections.
# ---------------------------------------------------------------------------------------------


def _rel_err(actual: Any, expected: Any) -> float:
    """Relative Frobenius error in float64 (max over tuple outputs); NaN/Inf in ``actual`` → inf."""
    if isinstance(actual, (tuple, list)):
        return max(_rel_err(a, e) for a, e in zip(actual, expected, strict=True))
    a, e = actual.double(), expected.double()
    if not bool(torch.isfinite(a).all()):
        return math.inf
    return float((a - e).norm() / e.norm().clamp_min(torch.finfo(torch.float64).tiny))


def _correctness_cases(plan: Plan) -> list[Case]:
    cases = []
    for op in ("factor_update", "precondition", "spike_and_flat", "track_eigenvalues"):
        if op in plan.ops:
            cases += [
                Case(op, v, b, dt)
                for b in plan.correctness_blocks
                for dt in plan.correctness_dtypes
                for v in _variants(op)
            ]
    if "inverse_root" in plan.ops:
        cases += [
            Case("inverse_root", v, b, torch.float32)
            for b in plan.ns_correctness_blocks
            for v in _variants("inverse_root")
        ]
    return cases


def _check_inverse_root(prep: Prepared, case: Case) -> tuple[float, bool, str]:
    """(residual ‖XᵖA − I‖_F/√d in float64, converged, note) of the Triton root."""
    p = int(case.variant.removeprefix("p="))
    (A,) = prep.tensors
    result = prep.run("triton")
    X, A64 = result.root.double(), A.double()
    d = A.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=A.device)
    resid = float(((torch.linalg.matrix_power(X, p) @ A64 - eye).norm(dim=(-2, -1)) / math.sqrt(d)).max())
    err = _rel_err(result.root, inverse_root_eigh(A64, p))
    converged = result.status is RootStatus.CONVERGED
    note = (
        f"status={result.status.value}, iterations={result.iterations}, "
        f"kernel ‖M−I‖/√d={float(result.residual.max()):.2e}, rel err vs float64 eigh root={err:.2e}"
    )
    return resid, converged, note


def _check_case(case: Case, g: torch.Generator) -> tuple[float, str, str]:
    """(value, PASS/FAIL, note) of one correctness case; an exception is a FAIL with its message."""
    try:
        prep = SETUPS[case.op](case, g, True)
        if case.op == "inverse_root":
            value, converged, note = _check_inverse_root(prep, case)
            return value, "PASS" if converged and value <= NS_RESIDUAL_TOL else "FAIL", note
        value = _rel_err(prep.run("triton"), prep.oracle())
        return value, "PASS" if value <= TOLERANCE[case.dtype] else "FAIL", ""
    except Exception as error:  # a crashing case is a failed row, and the run goes on
        return math.nan, "FAIL", f"{type(error).__name__}: {error}"[:300]


def run_correctness(plan: Plan, report: Report, seed: int) -> None:
    """Section 3: every op's Triton path vs its float64 reference; PASS/FAIL per row."""
    rows, table, skipped = [], [], 0
    for i, case in enumerate(_correctness_cases(plan)):
        metric = "residual" if case.op == "inverse_root" else "rel_err"
        tol = NS_RESIDUAL_TOL if case.op == "inverse_root" else TOLERANCE[case.dtype]
        if report.elapsed() > plan.budget_s * CORRECTNESS_BUDGET_SHARE:
            value, status, note = math.nan, "SKIP", "time budget"
            skipped += 1
        else:
            value, status, note = _check_case(case, _generator(plan.device, seed + i))
        if status == "FAIL":
            report.failures.append(
                f"correctness {case.op} {case.variant} {case.block} {_dtype_name(case.dtype)}"
            )
        q = (None if math.isnan(value) else value, None, None)
        rows.append(
            make_row(report.env, case, "triton", metric, "ratio", q, tolerance=tol, status=status, note=note)
        )
        table.append(
            {
                "op": case.op,
                "variant": case.variant,
                "shape": str(case.block),
                "dtype": _dtype_name(case.dtype),
            }
            | {"metric": metric, "value": _fmt(value), "tol": _fmt(tol), "status": status, "note": note}
        )
    report.tables["correctness"] = table
    passed = sum(r["status"] == "PASS" for r in rows)
    report.notes["correctness"] = [f"{passed}/{len(rows)} rows PASS"]
    if skipped:
        report.notes["correctness"].append(
            f"{skipped} rows not run (SKIP): past {CORRECTNESS_BUDGET_SHARE:.0%} of the {plan.budget_s:.0f} s budget"
        )
    report.section("correctness", rows, "correctness", "Correctness (Triton vs float64 reference)")


def _timing_cases(plan: Plan) -> list[Case]:
    cases = []
    for b in plan.timing_blocks:
        for dt in plan.timing_dtypes:
            for op in ("factor_update", "precondition", "spike_and_flat", "track_eigenvalues"):
                variants = LOWP_FACTOR_TIMING if op == "factor_update" and dt in _LOW else _variants(op)
                if op in plan.ops:
                    cases += [Case(op, v, b, dt) for v in variants]
    if "inverse_root" in plan.ops:
        cases += [
            Case("inverse_root", v, b, torch.float32)
            for b in plan.ns_timing_blocks
            for v in _variants("inverse_root")
        ]
    return cases


def _peak_key(case: Case, provider: str) -> str:
    """Which measured peak a row is a fraction of (module docstring, "Fraction of peak")."""
    if case.op == "track_eigenvalues":
        return "bandwidth"
    if case.dtype not in _LOW:
        return "fp32"
    low = {torch.float16: "fp16", torch.bfloat16: "bf16"}[case.dtype]
    if provider == "reference" or (case.op == "factor_update" and case.variant.endswith("/I")):
        return low
    return "fp32"


def _time_case(
    case: Case, plan: Plan, report: Report, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """CSV rows (time, throughput, fraction of peak per provider; speed-up) and a display row."""
    prep = SETUPS[case.op](case, _generator(plan.device, seed), False)
    memory_bound = case.op == "track_eigenvalues"
    unit, per_unit = ("GB/s", 1e9) if memory_bound else ("TFLOP/s", 1e12)
    rows, times, thr, frac = [], {}, {}, {}
    for provider in ("triton", "reference"):
        note = ""
        if case.op == "inverse_root":  # the FLOPs follow the provider's own iteration count
            iters = prep.run(provider).iterations
            work, note = (
                _ns_flops(case.block, int(case.variant.removeprefix("p=")), iters),
                f"iterations={iters}",
            )
        else:
            work = prep.bytes if memory_bound else prep.flops
        q = times[provider] = measure(lambda provider=provider: prep.run(provider), plan)
        thr[provider] = tuple(work / (t * 1e-3) / per_unit for t in (q[0], q[2], q[1]))  # p20 thr ↔ p80 time
        peak_key = _peak_key(case, provider)
        frac[provider] = tuple(x / report.peaks.get(peak_key, math.nan) for x in thr[provider])
        rows += [
            make_row(report.env, case, provider, "time", "ms", q, note=note),
            make_row(report.env, case, provider, "throughput", unit, thr[provider], note=note),
            make_row(
                report.env, case, provider, "frac_peak", "fraction", frac[provider], note=f"peak={peak_key}"
            ),
        ]
    speedup = times["reference"][0] / times["triton"][0]
    rows.append(make_row(report.env, case, "triton", "speedup_vs_reference", "x", (speedup, None, None)))
    tri = times["triton"]
    display = {
        "op": case.op,
        "variant": case.variant,
        "shape": str(case.block),
        "dtype": _dtype_name(case.dtype),
    }
    display |= {
        "triton ms p50 [p20, p80]": f"{_fmt(tri[0])} [{_fmt(tri[1])}, {_fmt(tri[2])}]",
        "ref ms p50": _fmt(times["reference"][0]),
        "speed-up": _fmt(speedup),
        "unit": unit,
        "triton thr": _fmt(thr["triton"][0]),
        "triton %peak": _fmt(100 * frac["triton"][0]),
        "ref thr": _fmt(thr["reference"][0]),
        "ref %peak": _fmt(100 * frac["reference"][0]),
    }
    return rows, display


def run_timing(plan: Plan, report: Report, seed: int) -> None:
    """Section 4: Triton path vs torch reference per op and stacked block shape."""
    rows, table, skipped = [], [], []
    for i, case in enumerate(_timing_cases(plan)):
        if report.elapsed() > plan.budget_s - plan.step_reserve_s:
            skipped.append(f"{case.op} {case.variant} {case.block} {_dtype_name(case.dtype)}")
            continue
        try:
            case_rows, display = _time_case(case, plan, report, seed + i)
        except Exception as error:  # record and go on: the remaining cases are still worth having
            note = f"{type(error).__name__}: {error}"[:300]
            report.failures.append(f"timing {case.op} {case.variant} {case.block}: {note}")
            case_rows = [
                make_row(report.env, case, "triton", "time", "ms", (None,) * 3, status="ERROR", note=note)
            ]
            display = {"op": case.op, "variant": case.variant, "shape": str(case.block)}
            display |= {"dtype": _dtype_name(case.dtype), "triton ms p50 [p20, p80]": "ERROR: " + note[:80]}
        rows += case_rows
        table.append(display)
        _free(plan)
    report.tables["timing"] = table
    report.notes["timing"] = [
        "speed-up = reference p50 / Triton p50; throughput from the FLOP/byte model in the docstring; "
        "%peak against the measured peak of the precision each provider's GEMMs run in"
    ]
    if skipped:
        report.notes["timing"].append(
            f"{len(skipped)} cases skipped (time budget {plan.budget_s:.0f} s): "
            + "; ".join(skipped[:10])
            + (" …" if len(skipped) > 10 else "")
        )
    report.section("timing", rows, "timing", "Op timing")


def _free(plan: Plan) -> None:
    if plan.device == "cuda":
        torch.cuda.empty_cache()


def _step_params(plan: Plan, layout: str, seed: int) -> tuple[list[torch.nn.Parameter], list[list[Tensor]]]:
    """Parameters (whole layers, or one per block) and a pool of gradients for each."""
    layers = plan.step_model.transformer_block()
    if layout == "batched":
        mats = [layer.shape for layer in layers]
    else:
        mats = [s for layer in layers for s in shapes.per_block_matrices(layer, plan.step_block_size)]
    g = _generator(plan.device, seed)
    params = [torch.nn.Parameter(_randn(g, *s, scale=0.02)) for s in mats]
    grads = [[_randn(g, *s, scale=1e-2) for _ in range(GRAD_POOL)] for s in mats]
    return params, grads


def _time_steps(
    plan: Plan, layout: str, backend: str, seed: int
) -> tuple[tuple[float, float, float], Tensor]:
    """(p50, p20, p80) ms of ``tk.Kron.step`` after warm-up, and the final parameters (flattened)."""
    params, grads = _step_params(plan, layout, seed)
    opt = tk.Kron(params, lr=1e-3, block_size=plan.step_block_size)
    times = []
    with backend_env(backend):
        for i in range(plan.step_warmup + plan.step_steps):
            for p, pool in zip(params, grads, strict=True):
                p.grad = pool[i % GRAD_POOL]
            _sync(plan.device)
            start = time.perf_counter()
            opt.step()
            _sync(plan.device)
            if i >= plan.step_warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return _quantiles(times), torch.cat([p.detach().flatten() for p in params])


def run_step(plan: Plan, report: Report, seed: int) -> None:
    """Section 5: the whole ``tk.Kron`` step, reference vs triton backend, batched vs per-block."""
    layers = plan.step_model.transformer_block()
    nblocks = sum(len(shapes.per_block_matrices(layer, plan.step_block_size)) for layer in layers)
    block = BlockShape(f"{plan.step_model.name}/transformer_block", nblocks, 0, 0)
    desc = ", ".join(f"{layer.name} {layer.rows}x{layer.cols}" for layer in layers)
    note = (
        f"layers: {desc}; block_size={plan.step_block_size}; {plan.step_steps} steps after "
        f"{plan.step_warmup} warm-up; precondition_every=10"
    )
    rows, results, finals = [], {}, {}

    def row(layout: str, backend: str, metric: str, unit: str, q: Sequence[float | None], **kw: str) -> None:
        r = make_row(
            report.env, Case("kron_step", layout, block, torch.float32), backend, metric, unit, q, **kw
        )
        rows.append(r | {"m": None, "n": None})  # a layer set, not one [B, m, n] stack: B = number of blocks

    for layout in STEP_LAYOUTS:
        for backend in BACKENDS:
            try:
                results[layout, backend], finals[layout, backend] = _time_steps(plan, layout, backend, seed)
                row(layout, backend, "step_time", "ms", results[layout, backend], note=note)
            except Exception as error:
                msg = f"{type(error).__name__}: {error}"[:300]
                report.failures.append(f"step {layout} {backend}: {msg}")
                row(layout, backend, "step_time", "ms", (None, None, None), status="ERROR", note=msg)
            _free(plan)
    table = []
    for layout, backend in results:
        q = results[layout, backend]
        ref, batched = results.get((layout, "reference")), results.get(("batched", backend))
        gain = _fmt(q[0] / batched[0]) if batched and layout == "per_block" else "-"
        table.append(
            {"layout": layout, "backend": backend, "blocks": nblocks}
            | {"p50 ms": _fmt(q[0]), "p20 ms": _fmt(q[1]), "p80 ms": _fmt(q[2])}
            | {
                "speed-up vs reference": _fmt(ref[0] / q[0]) if ref else "-",
                "batching gain (per_block / batched)": gain,
            }
        )
    report.notes["step"] = [note]
    for layout in STEP_LAYOUTS:
        if (layout, "reference") in finals and (layout, "triton") in finals:
            diff = _rel_err(finals[layout, "triton"], finals[layout, "reference"])
            drift = "informative: trajectories may drift"
            row(layout, "triton", "param_rel_diff_vs_reference", "ratio", (diff, None, None), note=drift)
            report.notes["step"].append(
                f"{layout}: ‖W_triton − W_reference‖/‖W_reference‖ after "
                f"{plan.step_warmup + plan.step_steps} steps = {diff:.2e}"
            )
    report.tables["step"] = table
    report.section("step", rows, "step", "Optimizer step")


# ---------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m perf.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~1-minute subset")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where files go (default perf/results; with --cpu-interpret a folder under the temp dir)",
    )
    parser.add_argument(
        "--ops", nargs="+", choices=OPS, default=list(OPS), help="ops to check (default: all)"
    )
    parser.add_argument(
        "--cpu-interpret",
        action="store_true",
        help="tiny smoke run on CPU tensors through the Triton interpreter",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget in s; cases past it are skipped and reported (default 400, quick 120)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; returns the exit status (module docstring)."""
    args = parse_args(argv)
    if args.cpu_interpret and os.environ.get("TRITON_INTERPRET") != "1":
        print(
            "--cpu-interpret needs TRITON_INTERPRET=1 before triton is imported: run "
            "`python -m perf.gpu_check --quick --cpu-interpret`",
            file=sys.stderr,
        )
        return 2
    if not args.cpu_interpret and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device is available. Run it on a GPU machine, or run the CPU smoke "
            "version: python -m perf.gpu_check --quick --cpu-interpret",
            file=sys.stderr,
        )
        return 2
    plan = make_plan(args.quick, args.cpu_interpret, args.ops, args.budget_s)
    if args.out_dir is None:  # CPU smoke figures do not belong next to committed GPU results
        args.out_dir = (
            Path(tempfile.gettempdir()) / "tritonkron_gpu_check" if args.cpu_interpret else _RESULTS
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = collect_env(plan)
    report = Report(args.out_dir, env, nvidia_smi(), plan)
    print("# tritonkron gpu_check\n\n" + _table([{"key": k, "value": v} for k, v in env.items()]))
    print("\n" + report.smi)

    torch.manual_seed(args.seed)
    report.peaks = measure_peaks(plan)
    print(
        "\n## Device peak\n\n" + _table([{"peak": k, "value": _fmt(v, 4)} for k, v in report.peaks.items()])
    )
    if any(op in plan.ops for op in OPS[:-1]):
        run_correctness(plan, report, args.seed)
        run_timing(plan, report, args.seed + 10_000)
    if "kron_step" in plan.ops:
        run_step(plan, report, args.seed + 20_000)
    path = report.write_markdown()
    written = [name for name in CSV_FILES.values() if (args.out_dir / name).exists()]
    print(f"\nwrote {path.name} and {', '.join(written)} in {args.out_dir} ({report.elapsed():.1f} s)")
    if report.failures:
        print(f"{len(report.failures)} failures:\n  " + "\n  ".join(report.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
