"""Environment, device peaks and timing for ``python -m perf.gpu_check``.

Provenance (versions, device, the git commit read from ``.git`` files without running git),
``nvidia-smi``, measured device peaks (matmul TFLOP/s per precision, copy GB/s), and the timer:
``triton.testing.do_bench`` quantiles on CUDA, ``time.perf_counter`` on CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton
import triton.testing

from autotune.provenance import git_commit
from perf.check_plan import QUANTILES, Plan

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REPO_ROOT = Path(__file__).resolve().parents[1]


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
        "git_commit": git_commit(REPO_ROOT) or "unknown",
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


def quantiles(times_ms: Sequence[float]) -> tuple[float, float, float]:
    """(p50, p20, p80) of ``times_ms``."""
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
    return quantiles(times)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA only)."""
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
    """Set ``TRITONKRON_BACKEND`` (read by ``tritonkron.options`` at every op call) for a block."""
    old = os.environ.get("TRITONKRON_BACKEND")
    os.environ["TRITONKRON_BACKEND"] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITONKRON_BACKEND", None)
        else:
            os.environ["TRITONKRON_BACKEND"] = old
