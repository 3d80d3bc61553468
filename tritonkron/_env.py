"""The only module that reads environment variables.

- ``TRITONKRON_BACKEND``: default backend of :mod:`tritonkron.ops.dispatch` ("auto", "triton" or "reference").
- ``TRITON_INTERPRET``: when "1", Triton kernels run on CPU tensors through the interpreter.
- ``TRITONKRON_TUNING``: path of the tuning file (from ``python -m autotune``) used when none is passed.
"""

from __future__ import annotations

import os

BACKENDS = ("auto", "triton", "reference")


def default_backend() -> str:
    """The library-wide default backend from ``TRITONKRON_BACKEND`` (default "auto")."""
    value = os.environ.get("TRITONKRON_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        allowed = ", ".join(repr(b) for b in BACKENDS)
        raise ValueError(f"TRITONKRON_BACKEND must be one of {allowed}; got {value!r}")
    return value


def triton_interpret() -> bool:
    """Whether Triton runs in interpreter mode (kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tuning_path() -> str | None:
    """The tuning file named by ``TRITONKRON_TUNING``, or None when it is unset or empty."""
    value = os.environ.get("TRITONKRON_TUNING", "").strip()
    return value or None
