"""Which inputs each Triton op accepts, and the fallback that keeps a run alive when a kernel fails.

Two rules, applied by :mod:`tritonkron.ops` and by the ``tritonkron::<op>`` custom ops:

- **Unsupported inputs go to the reference.** :data:`TRITON_DTYPES` lists, per op, the operand
  dtypes its kernels compile for (:func:`supports`). Under ``backend="auto"`` other inputs (for
  example float64 momentum, which only the factor update and the rotated statistics take) run on
  the pure-PyTorch reference, silently; under ``backend="triton"`` they do too, with one warning.
- **A kernel that fails at run time is disabled.** :func:`guarded` runs the Triton path; if it
  raises (a compile error, ``OutOfResources``, a launch failure), the op is disabled for the rest
  of the process, one :class:`KernelFallbackWarning` names the op, dtypes, shapes, Triton version
  and the error (the launch config included, see :func:`kernel_failure`), and the reference
  computes the result. The Triton ops are out of place, so a failed launch leaves no input
  modified. :func:`reset` re-enables every op.

The test suite turns :class:`KernelFallbackWarning` into an error, so a kernel bug cannot hide
behind the fallback there.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import Tensor

from tritonkron.math.checks import dtype_name

__all__ = [
    "TRITON_DTYPES",
    "KernelFallbackWarning",
    "KernelLaunchError",
    "disabled_ops",
    "guarded",
    "kernel_failure",
    "reset",
    "supports",
]

T = TypeVar("T")

_LOW = (torch.float32, torch.float16, torch.bfloat16)
_FACTOR = (torch.float32, torch.float64)

TRITON_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "factor_update": _FACTOR + _LOW,  # X float32/float64; G any (float64 G only with float64 X)
    "precondition": _LOW,
    "spike_and_flat": _LOW,
    "track_eigenvalues": _LOW,
    "rotate": _LOW,
    "rotated_statistics": _FACTOR,
    "inverse_root": _LOW,
    "sketch_update": _LOW,
    "sketch_track": _LOW,
    "sketch_precondition": _LOW,
}
"""Operand dtypes each op's Triton kernels compile for (every variant is compiled ahead of time
in the test suite: ``tritonkron.ops.aot``)."""


class KernelFallbackWarning(RuntimeWarning):
    """A Triton op fell back to the pure-PyTorch reference (unsupported inputs or a failed kernel)."""


class KernelLaunchError(RuntimeError):
    """A kernel launch failed; the message names the kernel and its launch config."""


_disabled: dict[str, str] = {}
_warned: set[tuple[str, ...]] = set()


def disabled_ops() -> Mapping[str, str]:
    """Ops disabled by a failure in this process, with the reason."""
    return dict(_disabled)


def reset() -> None:
    """Re-enable every op and forget which warnings were given."""
    _disabled.clear()
    _warned.clear()


def _warn_once(key: tuple[str, ...], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, KernelFallbackWarning, stacklevel=4)


def _describe(tensors: tuple[Tensor, ...]) -> str:
    return ", ".join(f"{dtype_name(t.dtype)}{list(t.shape)}" for t in tensors)


def supports(op: str, tensors: tuple[Tensor, ...], *, warn: bool = False) -> bool:
    """Whether ``op``'s Triton path takes these operands and is not disabled.

    Args:
        op: a key of :data:`TRITON_DTYPES`.
        tensors: the op's tensor operands.
        warn: warn once (per op and dtypes) when the answer is no because of a dtype.
    """
    if op in _disabled:
        return False
    allowed = TRITON_DTYPES[op]
    bad = sorted({dtype_name(t.dtype) for t in tensors if t.dtype not in allowed})
    if bad and warn:
        names = ", ".join(dtype_name(d) for d in allowed)
        _warn_once(("dtype", op, *bad), f"tritonkron op {op!r} has no Triton kernel for {', '.join(bad)} "
                   f"(its kernels take {names}); it uses the PyTorch reference for these inputs")  # fmt: skip
    return not bad


def kernel_failure(kernel: str, config: Mapping[str, object], error: BaseException) -> KernelLaunchError:
    """A :class:`KernelLaunchError` naming the kernel, its launch config and the original error."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    detail = lines[-1] if lines else ""
    return KernelLaunchError(f"{kernel} with {dict(config)} failed: {type(error).__name__}: {detail}")


def guarded(op: str, triton_path: Callable[[], T], reference_path: Callable[[], T], *tensors: Tensor) -> T:
    """``triton_path()``, or ``reference_path()`` once the op is disabled or when it raises.

    A failure disables ``op`` for the rest of the process and warns once (module docstring).
    """
    if op not in _disabled:
        try:
            return triton_path()
        except Exception as exc:
            import triton

            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
            _disabled[op] = reason
            _warn_once(("failure", op), f"tritonkron op {op!r} failed on the Triton path (triton "
                       f"{triton.__version__}; inputs {_describe(tensors)}): {reason}. It uses the "
                       "PyTorch reference for the rest of this process.")  # fmt: skip
    return reference_path()
