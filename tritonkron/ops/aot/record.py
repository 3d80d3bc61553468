"""Launches recorded as compile variants: the JIT's specialisation of one ``kernel[grid](...)`` call.

:func:`recording` swaps every ``@triton.jit`` kernel of :data:`KERNEL_MODULES` for a recorder while
the block runs, so the real launchers choose tiles, flags and dtypes as they would on a GPU, and
each launch is logged as a :class:`Variant` instead of running. Recorded outputs are zero-filled,
so launchers with host logic between launches (the sketch's eigh, the Newton iteration's stopping
test) see finite values.

The specialisation mirrors Triton's JIT (``triton.runtime.jit``): a tensor becomes ``*<dtype>``
with a 16-byte-alignment hint, an int equal to 1 becomes the constexpr 1, other ints ``i32`` or
``i64`` with a divisibility hint when divisible by 16, floats ``fp32``, bools ``u1``, None a
constexpr; parameters annotated ``tl.constexpr`` are constexprs.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["KERNEL_MODULES", "Variant", "jit_kernels", "recording", "specialise"]

KERNEL_MODULES = (
    "tritonkron.ops._triton.bmm",
    "tritonkron.ops._triton.sym_gemm",
    "tritonkron.ops.track_eigenvalues.triton",
)
"""Modules that define launched ``@triton.jit`` kernels (names ending in ``_kernel``)."""

_TL_NAMES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.bool: "i1",
}

# Larger outputs are left as they are: only small shapes feed host-side linear algebra.
_ZERO_FILL_MAX = 1 << 22

# Output pointers, zero-filled when a launch is recorded (see the module docstring).
_OUTPUTS = ("c_ptr", "out_ptr", "res_ptr", "a_out_ptr", "b_out_ptr")


@dataclass(frozen=True)
class Variant:
    """One compile unit: a kernel and everything the JIT would specialise it on.

    Identity (equality, hashing) is the compile key: the kernel, its pointer dtypes, its
    ``tl.constexpr`` parameters, warps and stages. The runtime specialisation of sizes and strides
    (which ints are 1 or divisible by 16) is kept from the first launch recorded with that key: it
    tunes vectorisation, not the kernel's types, so one realistic instance is compiled per key.

    Attributes:
        kernel: ``"<module>:<name>"`` of the ``@triton.jit`` function.
        signature: ``(arg name, type)`` for every parameter, ``"constexpr"`` for constexprs.
        constexprs: ``(arg name, value)`` for every constexpr parameter.
        divisible: names of arguments with a 16-divisibility/alignment hint.
        num_warps, num_stages: launch options.
        key: the compile key's pointer types and constexpr parameter values.
        origin: the launcher call that first produced it (for messages; not part of identity).
    """

    kernel: str
    signature: tuple[tuple[str, str], ...] = field(compare=False)
    constexprs: tuple[tuple[str, object], ...] = field(compare=False)
    divisible: tuple[str, ...] = field(compare=False)
    num_warps: int
    num_stages: int
    key: tuple = ()
    origin: str = field(default="", compare=False, hash=False)

    @property
    def short_name(self) -> str:
        """The kernel's function name."""
        return self.kernel.split(":")[1]

    def describe(self) -> str:
        """A one-line description: kernel, constexprs, pointer dtypes, warps and stages."""
        consts = ", ".join(f"{k}={v}" for k, v in self.constexprs if k.isupper())
        ptrs = ",".join(t.lstrip("*") for _, t in self.signature if t.startswith("*"))
        return f"{self.short_name}[{consts}; ptrs {ptrs}; warps={self.num_warps}, stages={self.num_stages}]"


def specialise(value: object) -> tuple[str, object | None, bool]:
    """(type, constexpr value or None, divisibility hint) of one runtime argument, as the JIT does."""
    if isinstance(value, Tensor):
        return "*" + _TL_NAMES[value.dtype], None, value.data_ptr() % 16 == 0
    if value is None:
        return "constexpr", None, False
    if isinstance(value, bool):
        return "u1", None, False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1, False
        kind = "i32" if -(2**31) <= value < 2**31 else ("i64" if -(2**63) <= value < 2**63 else "u64")
        return kind, None, value % 16 == 0
    if isinstance(value, float):
        return "fp32", None, False
    raise TypeError(f"cannot specialise a kernel argument of type {type(value).__name__}")


def _variant(fn: object, args: tuple, kwargs: dict, origin: str) -> Variant:
    """The :class:`Variant` of ``fn[grid](*args, **kwargs)``."""
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    bound = dict(zip(fn.arg_names, args, strict=False)) | kwargs  # type: ignore[attr-defined]
    signature, constexprs, divisible, key = [], [], [], []
    for param in fn.params:  # type: ignore[attr-defined]
        value = bound[param.name]
        if param.is_constexpr:
            const = int(value) if isinstance(value, int) and not isinstance(value, bool) else value
            signature.append((param.name, "constexpr"))
            constexprs.append((param.name, const))
            key.append((param.name, const))
            continue
        kind, const, div = specialise(value)
        signature.append((param.name, kind))
        if kind.startswith("*"):
            key.append((param.name, kind))
        if kind == "constexpr":
            constexprs.append((param.name, const))
        if div:
            divisible.append(param.name)
    return Variant(
        kernel=f"{fn.__module__}:{fn.__name__}",  # type: ignore[attr-defined]
        signature=tuple(signature),
        constexprs=tuple(constexprs),
        divisible=tuple(divisible),
        num_warps=int(options.get("num_warps", 4)),
        num_stages=int(options.get("num_stages", 3)),
        key=tuple(key),
        origin=origin,
    )


class _Recorder:
    """Stands in for one jit kernel: ``recorder[grid](*args, **kwargs)`` logs a :class:`Variant`."""

    def __init__(self, fn: object, log: list[Variant], origin: list[str]) -> None:
        self.fn, self.log, self.origin = fn, log, origin

    def __getitem__(self, grid: object):  # noqa: ANN204 - mirrors JITFunction.__getitem__
        def launch(*args: object, **kwargs: object) -> None:
            self.log.append(_variant(self.fn, args, dict(kwargs), self.origin[0]))
            bound = dict(zip(self.fn.arg_names, args, strict=False)) | kwargs  # type: ignore[attr-defined]
            for name in _OUTPUTS:
                out = bound.get(name)
                if isinstance(out, Tensor) and out.numel() <= _ZERO_FILL_MAX:
                    out.zero_()

        return launch


def jit_kernels() -> dict[str, object]:
    """Every launched ``@triton.jit`` kernel of :data:`KERNEL_MODULES`, by ``"<module>:<name>"``."""
    from triton.runtime.jit import JITFunction

    found = {}
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                found[f"{module_name}:{name}"] = obj
    return found


@contextlib.contextmanager
def recording(origin: list[str]) -> Iterator[list[Variant]]:
    """Within the block, launches are logged (not run); yields the log.

    ``origin`` is a one-element list whose current value labels each recorded variant.

    Raises:
        RuntimeError: under ``TRITON_INTERPRET=1``, where kernels are not compilable JIT functions.
    """
    kernels = jit_kernels()
    if not kernels:
        raise RuntimeError("no @triton.jit kernels found: unset TRITON_INTERPRET to record launches")
    log: list[Variant] = []
    saved = []
    for key, fn in kernels.items():
        module = importlib.import_module(key.split(":")[0])
        name = key.split(":")[1]
        saved.append((module, name, fn))
        setattr(module, name, _Recorder(fn, log, origin))
    try:
        yield log
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)
