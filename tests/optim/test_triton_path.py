"""The whole optimizer step on the Triton path (interpreter on CPU) equals the reference step."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk
from tests._backend_spy import spy_backends
from tritonkron.ops.backend import resolve_backend
from tritonkron.ops.factor_update import factor_update

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET") == "1"),
    reason="the Triton path needs CUDA or TRITON_INTERPRET=1",
)


def _train(backend: str, divergence: str, rank: int | None, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    monkeypatch.setenv("TRITONKRON_BACKEND", backend)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5))
    opt = tk.Kron(model.parameters(), lr=1e-2, divergence=divergence, rank=rank, precondition_every=3)
    g = torch.Generator().manual_seed(1)
    for _ in range(7):
        x, y = torch.randn(16, 7, generator=g), torch.randn(16, 5, generator=g)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("divergence", ["logdet", "von_neumann", "frobenius"])
@pytest.mark.parametrize("rank", [None, 3])
def test_triton_step_equals_reference_step(
    divergence: str, rank: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_backends(monkeypatch)
    reference = _train("reference", divergence, rank, monkeypatch)
    assert set(calls) == {"reference"}
    calls.clear()
    triton = _train("triton", divergence, rank, monkeypatch)
    assert set(calls) == {"triton"}, "the optimizer did not run on the Triton path"
    error = (triton - reference).norm() / reference.norm()
    assert error < 1e-5, f"relative parameter error {float(error):.2e}"


def test_backend_argument_is_validated() -> None:
    x = torch.zeros(1, 2, 2)
    with pytest.raises(ValueError, match="backend"):
        factor_update(x, torch.zeros(1, 2, 3), 0.9, 1.0, "left", backend="cuda")


def test_env_backend_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITONKRON_BACKEND", "fast")
    with pytest.raises(ValueError, match="TRITONKRON_BACKEND"):
        resolve_backend(None, torch.zeros(1))


def test_auto_uses_reference_on_cpu() -> None:
    assert resolve_backend("auto", torch.zeros(1)) == "reference"
