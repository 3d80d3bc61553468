"""Record the backend every op of the step resolves to, by wrapping each op package's resolver."""

from __future__ import annotations

import pytest

import tritonkron.ops.factor_update
import tritonkron.ops.inverse_root
import tritonkron.ops.precondition
import tritonkron.ops.rotated_statistics
import tritonkron.ops.rotation
import tritonkron.ops.sketch
import tritonkron.ops.track_eigenvalues
from tritonkron.ops.backend import resolve_backend

OP_PACKAGES = (
    tritonkron.ops.factor_update,
    tritonkron.ops.inverse_root,
    tritonkron.ops.precondition,
    tritonkron.ops.rotated_statistics,
    tritonkron.ops.rotation,
    tritonkron.ops.sketch,
    tritonkron.ops.track_eigenvalues,
)


def spy_backends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every op record its resolved backend ("triton" or "reference") in the returned list."""
    calls: list[str] = []

    def spy(backend, *tensors, **kwargs):  # noqa: ANN001, ANN202 - mirrors resolve_backend
        choice = resolve_backend(backend, *tensors, **kwargs)
        calls.append(choice)
        return choice

    for package in OP_PACKAGES:
        monkeypatch.setattr(package, "resolve_backend", spy)
    return calls
