"""Argument checks and small matrix helpers shared by the maths and the ops.

Used by the inverse roots (:mod:`tritonkron.math.eigh_root`, :mod:`tritonkron.ops.inverse_root`,
reference and Triton), the dense projections (:mod:`tritonkron.math.projection`) and the step;
every check raises ``ValueError`` naming the parameter and what it may be.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = [
    "check_count",
    "check_nonnegative",
    "check_p",
    "check_square",
    "dtype_list",
    "dtype_name",
    "eye_like",
    "frobenius",
    "one_of",
    "symmetrize",
    "work_dtype",
]

_LAYOUTS = {None: "[..., d, d]", 2: "[d, d]", 3: "[B, d, d]"}


def one_of(values: Iterable[object]) -> str:
    """``"a, b or c"``: the allowed values of a parameter, for an error message."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.float32`` → ``"float32"`` (strings are returned without a ``torch.`` prefix)."""
    return str(dtype).removeprefix("torch.")


def dtype_list(dtypes: Iterable[torch.dtype]) -> str:
    """``"float32, float16 or bfloat16"``: :func:`dtype_name` of each, for a message."""
    return one_of(dtype_name(d) for d in dtypes)


def check_square(
    A: object,
    name: str = "A",
    *,
    ndim: int | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    finite: bool = False,
    size: int | None = None,
    note: str = "",
) -> Tensor:
    """Return ``A`` if it is a tensor of square matrices; ``ValueError`` naming ``name`` otherwise.

    Args:
        A: the argument to check.
        name: the parameter's name, for the messages.
        ndim: 2 (``[d, d]``), 3 (``[B, d, d]``) or None (``[..., d, d]``, any batch).
        dtypes: the allowed dtypes; None: any floating-point dtype.
        finite: also reject NaN and Inf entries.
        size: the required d; None: any.
        note: appended to the dtype message (e.g. where another dtype is handled).
    """
    if not isinstance(A, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(A).__name__}")
    bad_ndim = A.dim() < 2 if ndim is None else A.dim() != ndim
    if bad_ndim or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be square with shape {_LAYOUTS[ndim]}; got {list(A.shape)}")
    if dtypes is None and not A.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating-point dtype; got {A.dtype}")
    if dtypes is not None and A.dtype not in dtypes:
        raise ValueError(f"{name} must be {dtype_list(dtypes)}{note}; got {A.dtype}")
    if size is not None and A.shape[-1] != size:
        raise ValueError(f"{name} must be {size} x {size}; got {list(A.shape)}")
    if finite and not bool(torch.isfinite(A).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    return A


def check_p(p: object, allowed: tuple[int, ...] | None = None) -> int:
    """The root p as an int if it is an integer (not a bool) that is positive, or in ``allowed``."""
    integral = not isinstance(p, bool) and isinstance(p, numbers.Integral)
    if allowed is None and not (integral and p >= 1):
        raise ValueError(f"p must be a positive integer; got {p!r}")
    if allowed is not None and not (integral and p in allowed):
        raise ValueError(f"p must be {one_of(allowed)}; got {p!r}")
    return int(p)  # type: ignore[arg-type]


def check_count(value: object, name: str) -> int:
    """``value`` as an int if it is an integer ≥ 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer ≥ 0; got {value!r}")
    return int(value)


def check_nonnegative(value: object, name: str) -> float:
    """``value`` as a float if it is a finite real number ≥ 0 (not a bool)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number ≥ 0; got {value!r}")
    return float(value)


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def symmetrize(A: Tensor) -> Tensor:
    """(A + Aᵀ)/2 over the last two dimensions."""
    return 0.5 * (A + A.transpose(-1, -2))


def eye_like(A: Tensor) -> Tensor:
    """I of size d × d with A's dtype and device (A: ``[..., d, d]``)."""
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def frobenius(A: Tensor) -> Tensor:
    """‖A‖_F = (Σ_ij A_ij²)^{1/2} per matrix ``[...]``."""
    return torch.linalg.matrix_norm(A, ord="fro")
