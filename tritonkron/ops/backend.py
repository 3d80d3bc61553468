"""Backend choice for every heavy op: the one rule each op's dispatching function applies.

Each op takes ``backend="auto" | "triton" | "reference"`` (default: the environment variable
``TRITONKRON_BACKEND``, else "auto"). "auto" runs the Triton kernel for CUDA tensors when Triton is
importable and the kernel takes the operands' dtypes (:data:`tritonkron.ops.kernel_guard.TRITON_DTYPES`),
and the pure-PyTorch reference otherwise; "triton" forces the kernel (on CPU tensors this needs
``TRITON_INTERPRET=1``), except for dtypes it has no kernel for, which take the reference with one
warning; "reference" forces the reference. A kernel that fails at run time (compile error, out of
resources) disables its op for the process with one warning, and the reference takes over
(:func:`tritonkron.ops.kernel_guard.guarded`). The Triton paths are registered as ``torch.library``
custom ops (``tritonkron::<op>``) so that ``torch.compile`` treats each launch as one opaque node.

Each op's package (``tritonkron.ops.<op>``) holds its dispatching function(s), its pure-PyTorch
``reference`` and its Triton launcher ``triton``; the functions call :func:`resolve_backend`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tritonkron import options
from tritonkron.ops import kernel_guard
from tritonkron.ops._triton import HAS_TRITON

Backend = Literal["auto", "triton", "reference"]

__all__ = ["Backend", "on_cuda_device", "resolve_backend", "scale_tensor"]


def on_cuda_device(tensors: tuple[Tensor, ...]) -> bool:
    """Whether every tensor is on a CUDA device (the condition for "auto" to consider Triton)."""
    return all(t.is_cuda for t in tensors)


def resolve_backend(
    backend: str | None, *tensors: Tensor, op: str | None = None
) -> Literal["triton", "reference"]:
    """Return "triton" or "reference" for ``backend`` (None: the library default) and the inputs.

    With ``op`` (a key of :data:`tritonkron.ops.kernel_guard.TRITON_DTYPES`), inputs that op's kernels
    do not take, and an op disabled by a failure, resolve to "reference" (module docstring).

    Raises:
        ValueError: for an unknown backend name, or "triton" when Triton cannot run the inputs.
    """
    choice = options.default_backend() if backend is None else backend
    if choice not in options.BACKENDS:
        allowed = ", ".join(repr(b) for b in options.BACKENDS)
        raise ValueError(f"backend must be one of {allowed}; got {backend!r}")
    on_cuda = on_cuda_device(tensors)
    if choice == "reference":
        return "reference"
    if choice == "auto":
        if not (HAS_TRITON and on_cuda):
            return "reference"
        return "triton" if op is None or kernel_guard.supports(op, tensors) else "reference"
    if not HAS_TRITON:
        raise ValueError("backend='triton' needs the triton package, which is not importable")
    if not on_cuda and not options.triton_interpret():
        raise ValueError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (set before importing triton)"
        )
    return "triton" if op is None or kernel_guard.supports(op, tensors, warn=True) else "reference"


def scale_tensor(scale: Tensor | float, like: Tensor) -> Tensor:
    """A per-block scale ``[B]`` for ``like [B, ...]`` from a number or a broadcastable tensor."""
    batch = like.shape[0]
    if isinstance(scale, Tensor):
        return scale.reshape(-1).expand(batch).to(like.device)
    return torch.full((batch,), float(scale), dtype=like.dtype, device=like.device)
