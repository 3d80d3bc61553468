"""Test-wide set-up: Triton's interpreter on machines without CUDA (before triton is imported)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    """A kernel falling back to the reference would hide a kernel bug: in the tests it is an error,
    except where a test expects it (``pytest.warns``, ``warnings.catch_warnings``). Registered here,
    after TRITON_INTERPRET is set: naming the class in pyproject.toml would import the kernels first."""
    config.addinivalue_line("filterwarnings", "error::tritonkron.ops.kernel_guard.KernelFallbackWarning")
