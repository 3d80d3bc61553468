"""The precision policy of the step's GEMMs (docs/maths.md §11): operand rounding, both backends.

A policy fixes how the operands of one product C = A B enter the multiply-adds; accumulation is
always float32 (float64 for float64 statistics):

==========  =====================================  ============================================
policy      operands                               unit roundoff of an operand, u
==========  =====================================  ============================================
``ieee``    float32 as they are                    0 (exact); 2⁻²⁴ for each float32 addition
``tf32``    rounded to TF32: 10 explicit mantissa  2⁻¹¹ rounded to nearest (2⁻¹⁰ if truncated)
            bits, float32 exponent range
``bf16``    rounded to bfloat16: 7 mantissa bits   2⁻⁸ rounded to nearest
==========  =====================================  ============================================

A product of two TF32 or two bfloat16 numbers is exact in float32 (22 and 16 significant bits), so
rounding the operands and multiplying in IEEE float32 reproduces the tensor cores' arithmetic
up to the order of the float32 additions. Float64 operands ignore the policy (:func:`effective`).

**Reference side.** :func:`mm` is ``add + a @ b`` under the policy: ``ieee`` is the plain product
(which follows torch's global float32 matmul setting, IEEE unless the user enabled TF32);
``tf32`` on CUDA sets TF32 for cuBLAS for the call only (``torch.backends.cuda.matmul.fp32_precision
= "tf32"``, the API since torch 2.9; the previous value is restored, so a process that uses the
older ``allow_tf32`` flag is not left in a mixed state), elsewhere and inside ``torch.compile``
it rounds the operands with :func:`round_tf32` (round to nearest even); ``bf16`` on CUDA runs
``torch.bmm(..., out_dtype=torch.float32)`` on bfloat16 operands, elsewhere it rounds the
operands with :func:`round_bf16` and multiplies in float32.

**Triton side.** :func:`kernel_precision` turns a policy into the ``PRECISION`` constexpr of the
shared GEMM kernels (:mod:`tritonkron.ops._triton.bmm`, :mod:`tritonkron.ops._triton.sym_gemm`),
and :func:`policy_dot` is the ``tl.dot`` they call: ``input_precision="ieee"``, ``"tf32"``, or
operands converted to bfloat16 with a float32 accumulator. The interpreter (``TRITON_INTERPRET=1``)
ignores ``input_precision`` and has no bfloat16 dot, so under it the launchers choose the
``*_ROUNDED`` codes, which round the operands in float32 exactly as the reference does and
multiply in IEEE; the GPU branches are compiled ahead of time (:mod:`tritonkron.ops.aot`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from tritonkron.options import parse_precision, triton_interpret

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None

__all__ = [
    "KERNEL_BF16",
    "KERNEL_BF16_ROUNDED",
    "KERNEL_IEEE",
    "KERNEL_TF32",
    "KERNEL_TF32_ROUNDED",
    "check_precision",
    "cuda_tf32",
    "effective",
    "kernel_precision",
    "mm",
    "round_bf16",
    "round_operands",
    "round_tf32",
]

KERNEL_IEEE, KERNEL_TF32, KERNEL_BF16, KERNEL_TF32_ROUNDED, KERNEL_BF16_ROUNDED = range(5)

_TF32_DROPPED = 13  # float32 has 23 explicit mantissa bits, TF32 keeps 10


def check_precision(precision: object) -> str:
    """The policy's name ("ieee", "tf32" or "bf16") from a string or ``options.Precision``.

    Raises:
        ValueError: naming ``precision`` and the allowed values.
    """
    return parse_precision(precision).value


def effective(precision: object, *tensors: Tensor) -> str:
    """The policy that applies to a product of ``tensors``: "ieee" when any is float64."""
    name = check_precision(precision)
    return "ieee" if any(t.dtype == torch.float64 for t in tensors) else name


def round_tf32(x: Tensor) -> Tensor:
    """x (float32) rounded to TF32, round to nearest even; ±inf and NaN pass unchanged.

    Adding 2¹² − 1 plus the lowest kept bit to the bit pattern and clearing the 13 dropped bits
    rounds the magnitude to nearest, ties to even (a carry into the exponent is the correct
    rounding up to the next binade, or to inf past the largest finite TF32 number).
    """
    x = x.to(torch.float32)
    bits = x.view(torch.int32)
    half = (1 << (_TF32_DROPPED - 1)) - 1
    bits = (bits + (half + ((bits >> _TF32_DROPPED) & 1))) & -(1 << _TF32_DROPPED)
    return torch.where(torch.isfinite(x), bits.view(torch.float32), x)


def round_bf16(x: Tensor) -> Tensor:
    """x rounded to bfloat16 (round to nearest even) and returned as float32."""
    return x.to(torch.bfloat16).to(torch.float32)


def round_operands(precision: str, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The operands as the policy multiplies them, in float32 (unchanged for "ieee")."""
    if precision == "tf32":
        return tuple(round_tf32(t) for t in tensors)
    if precision == "bf16":
        return tuple(round_bf16(t) for t in tensors)
    return tensors


@contextlib.contextmanager
def cuda_tf32() -> Iterator[None]:
    """cuBLAS float32 GEMMs on TF32 tensor cores inside the block; the previous setting after it.

    Uses ``torch.backends.cuda.matmul.fp32_precision`` (torch ≥ 2.9), else the older ``allow_tf32``.
    """
    matmul = torch.backends.cuda.matmul
    try:
        saved = matmul.fp32_precision
    except AttributeError:  # torch < 2.9
        saved_flag = matmul.allow_tf32
        matmul.allow_tf32 = True
        try:
            yield
        finally:
            matmul.allow_tf32 = saved_flag
        return
    matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision = saved


_bmm_out_dtype = [True]  # torch.bmm(..., out_dtype=) usable on this build (cleared on first failure)


def _product(a: Tensor, b: Tensor, add: Tensor | None) -> Tensor:
    return a @ b if add is None else torch.baddbmm(add, a, b)


def _cuda_bf16(a: Tensor, b: Tensor, add: Tensor | None) -> Tensor | None:
    """bfloat16 tensor-core product with a float32 result via ``torch.bmm(out_dtype=)``, or None."""
    if not (_bmm_out_dtype[0] and a.dim() == 3 and b.dim() == 3 and a.shape[0] == b.shape[0]):
        return None
    try:
        out = torch.bmm(a.to(torch.bfloat16), b.to(torch.bfloat16), out_dtype=torch.float32)
    except (RuntimeError, TypeError):  # an older build without the overload
        _bmm_out_dtype[0] = False
        return None
    return out if add is None else add + out


def mm(a: Tensor, b: Tensor, precision: str = "ieee", *, add: Tensor | None = None) -> Tensor:
    """``add + a @ b`` (``a @ b`` without ``add``) with the policy's operands (module docstring).

    Operands are ``[..., p, k]`` and ``[..., k, q]`` (3-D with ``add``); float64 operands and
    "ieee" give the plain product. Otherwise the result is float32, or the operands' common
    dtype when that is float16 or bfloat16.
    """
    precision = effective(precision, a, b)
    if precision == "ieee":
        return _product(a, b, add)
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    cuda = a.is_cuda and not torch.compiler.is_compiling()
    out = None
    if cuda and precision == "tf32":
        with cuda_tf32():
            out = _product(a.to(torch.float32), b.to(torch.float32), add)
    elif cuda:
        out = _cuda_bf16(a, b, add)
    if out is None:
        out = _product(*round_operands(precision, a, b), add)
    return out.to(out_dtype)


def kernel_precision(precision: str, acc_fp64: bool = False) -> int:
    """The ``PRECISION`` constexpr of a GEMM kernel for a policy (``KERNEL_*``).

    ``KERNEL_IEEE`` for a float64 accumulator; under the interpreter the ``*_ROUNDED`` codes
    (module docstring).
    """
    name = check_precision(precision)
    if acc_fp64 or name == "ieee":
        return KERNEL_IEEE
    if triton_interpret():
        return KERNEL_TF32_ROUNDED if name == "tf32" else KERNEL_BF16_ROUNDED
    return KERNEL_TF32 if name == "tf32" else KERNEL_BF16


if triton is not None:
    _K_TF32 = tl.constexpr(KERNEL_TF32)
    _K_BF16 = tl.constexpr(KERNEL_BF16)
    _K_TF32_ROUNDED = tl.constexpr(KERNEL_TF32_ROUNDED)
    _K_BF16_ROUNDED = tl.constexpr(KERNEL_BF16_ROUNDED)

    @triton.jit
    def _rounded(x, DROP: tl.constexpr):
        """x (float32) with its DROP low mantissa bits rounded off, to nearest even, in float32
        (DROP = 13: TF32, 16: bfloat16; see :func:`round_tf32`). The interpreter's own
        float32 → bfloat16 conversion truncates, so the emulation rounds on the bits."""
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + (((1 << (DROP - 1)) - 1) + ((bits >> DROP) & 1))) & -(1 << DROP)
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def policy_dot(a, b, acc, PRECISION: tl.constexpr):
        """acc + a @ b with the policy's operands; a, b and acc in the accumulator dtype.

        KERNEL_IEEE: exact float32 (float64) products; KERNEL_TF32: TF32 tensor cores;
        KERNEL_BF16: bfloat16 operands, float32 accumulator; *_ROUNDED: the operands rounded in
        float32 and multiplied exactly (the interpreter's emulation of the two above).
        """
        if PRECISION == _K_BF16:
            out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc, out_dtype=tl.float32)
        elif PRECISION == _K_TF32:
            out = tl.dot(a, b, acc, input_precision="tf32", out_dtype=tl.float32)
        elif PRECISION == _K_BF16_ROUNDED:
            out = tl.dot(_rounded(a, 16), _rounded(b, 16), acc, input_precision="ieee", out_dtype=tl.float32)
        elif PRECISION == _K_TF32_ROUNDED:
            out = tl.dot(_rounded(a, 13), _rounded(b, 13), acc, input_precision="ieee", out_dtype=tl.float32)
        else:
            out = tl.dot(a, b, acc, input_precision="ieee", out_dtype=acc.dtype)
        return out
