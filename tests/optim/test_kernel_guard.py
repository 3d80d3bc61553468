"""Kernels never crash a run: unsupported dtypes take the reference, failed kernels fall back once.

Runs the whole optimizer on the Triton path under the interpreter (``TRITONKRON_BACKEND=triton``)
for float32, bfloat16 and float64 models, and forces kernel failures of each kind.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest
import torch
import triton

import tritonkron as tk
import tritonkron.ops.backend
from tests._backend_spy import spy_backends
from tritonkron.ops import kernel_guard
from tritonkron.ops.backend import resolve_backend
from tritonkron.ops.kernel_guard import KernelFallbackWarning

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton path needs CUDA or TRITON_INTERPRET=1",
)

# Relative parameter error of the Triton path against the reference after a few steps: float32
# and float64 accumulate the kernels' rounding (fp32 accumulation for every non-float64 op);
# bfloat16 parameters round both paths to the same values almost everywhere.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float64: 1e-5}


@pytest.fixture(autouse=True)
def _fresh_guard() -> Iterator[None]:
    kernel_guard.reset()
    yield
    kernel_guard.reset()


def _train(
    backend: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch, **options: object
) -> torch.Tensor:
    monkeypatch.setenv("TRITONKRON_BACKEND", backend)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5)).to(dtype)
    opt = tk.Kron(model.parameters(), lr=1e-2, precondition_every=2, **options)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 7, generator=g).to(dtype), torch.randn(16, 5, generator=g).to(dtype)
        opt.zero_grad()
        (model(x) - y).float().square().mean().backward()
        opt.step()
    params = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    assert torch.isfinite(params).all()
    return params


def _spy_backends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every backend the ops resolve to."""
    return spy_backends(monkeypatch)


CONFIGS = {
    "logdet": {},
    "von_neumann": {"divergence": "von_neumann"},
    "frobenius rank 3": {"divergence": "frobenius", "rank": 3},
    "rank 3 sketch": {"rank": 3, "sketch": True},
    "block 4": {"block_size": 4},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_forced_triton_runs_every_dtype(
    name: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "block 4" and dtype != torch.float32:
        pytest.skip("block splitting is dtype-independent; float32 covers it (interpreter time)")
    reference = _train("reference", dtype, monkeypatch, **CONFIGS[name])
    calls = _spy_backends(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", KernelFallbackWarning)
        result = _train("triton", dtype, monkeypatch, **CONFIGS[name])
    # The sketch's ops have float32/16 kernels only: a float64 sketch runs wholly on the reference.
    if not (dtype == torch.float64 and CONFIGS[name].get("sketch")):
        assert "triton" in calls, "no op ran on the Triton path"
    assert not kernel_guard.disabled_ops(), kernel_guard.disabled_ops()
    for w in caught:  # only dtype routing (float64 operands of float32-only kernels) may warn
        assert "has no Triton kernel for float64" in str(w.message), str(w.message)
    error = (result - reference).norm() / reference.norm()
    assert error < TOLERANCE[dtype], f"relative parameter error {float(error):.2e}"


class _FailingKernel:
    """Stands in for a jit kernel: every launch raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getitem__(self, grid: object):  # noqa: ANN204
        def launch(*args: object, **kwargs: object) -> None:
            raise self.error

        return launch


FAILURES = {
    "compile error in track_eigenvalues": (
        "tritonkron.ops.track_eigenvalues.triton._track_eigenvalues_kernel",
        RuntimeError("Mismatched type for acc between then block and else block"),
        "track_eigenvalues",
    ),
    "out of shared memory in bmm": (
        "tritonkron.ops._triton.bmm._bmm_kernel",
        triton.runtime.errors.OutOfResources(262144, 232448, "shared memory"),
        "rotate",
    ),
    "launch failure in sym_gemm": (
        "tritonkron.ops._triton.sym_gemm._sym_gemm_kernel",
        RuntimeError("Triton Error [CUDA]: invalid argument"),
        "rotated_statistics",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_kernel_falls_back_once_and_training_goes_on(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, error, op = FAILURES[case]
    reference = _train("reference", torch.float32, monkeypatch)
    monkeypatch.setattr(target, _FailingKernel(error))
    with pytest.warns(KernelFallbackWarning) as caught:
        result = _train("triton", torch.float32, monkeypatch)
    failures = [w for w in caught if "failed on the Triton path" in str(w.message)]
    kernel = target.rsplit(".", 1)[1]
    assert any(f"'{op}'" in str(w.message) and kernel in str(w.message) for w in failures), [
        str(w.message) for w in caught
    ]
    assert all("BLOCK_" in str(w.message) and triton.__version__ in str(w.message) for w in failures)
    assert len({str(w.message) for w in failures}) == len(failures), "an op warned more than once"
    assert op in kernel_guard.disabled_ops()
    error = (result - reference).norm() / reference.norm()
    assert error < TOLERANCE[torch.float32], f"relative parameter error {float(error):.2e}"


def test_auto_routes_unsupported_dtypes_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        tritonkron.ops.backend, "on_cuda_device", lambda tensors: True
    )  # as if the tensors were on CUDA
    f32, f64 = torch.zeros(1, 3, 3), torch.zeros(1, 3, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" routes silently
        assert resolve_backend("auto", f32, f32, op="precondition") == "triton"
        assert resolve_backend("auto", f64, f64, op="precondition") == "reference"
        assert resolve_backend("auto", f64, f64, op="rotated_statistics") == "triton"
        assert resolve_backend("auto", f32, f32.bfloat16(), op="track_eigenvalues") == "triton"
    with pytest.warns(KernelFallbackWarning, match="'precondition' has no Triton kernel for float64"):
        assert resolve_backend("triton", f64, f64, op="precondition") == "reference"


def test_disabled_op_resolves_to_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tritonkron.ops.backend, "on_cuda_device", lambda tensors: True)
    x = torch.zeros(1, 3, 3)
    assert resolve_backend("auto", x, op="rotate") == "triton"
    with pytest.warns(KernelFallbackWarning, match="'rotate' failed"):
        out = kernel_guard.guarded("rotate", lambda: 1 / 0, lambda: "reference", x)
    assert out == "reference"
    assert resolve_backend("auto", x, op="rotate") == "reference"
    assert resolve_backend("auto", x, op="precondition") == "triton"
