"""Shared Triton building blocks of the ops: batched GEMMs, symmetric GEMMs, tiles and configs.

Importing this package never fails: ``HAS_TRITON`` tells whether Triton is importable.
"""

from __future__ import annotations

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False

__all__ = ["HAS_TRITON"]
