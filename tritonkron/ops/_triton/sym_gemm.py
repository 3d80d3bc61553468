"""The symmetric batched GEMM of the factor update and of the coupled Newton iteration.

Computes, per batch element b, a product that is known to be symmetric, with an affine epilogue::

    out[b] = α_b·(A[b] diag(w[b]) B[b]) + β·C[b] + γ·I      A: [B, D, K],  B: [B, K, D]
    res[b, t] = Σ over the output tile t of (out − I)²        (optional residual partials)

It is used as

- factor update (:mod:`tritonkron.ops.factor_update.triton`): out = β·X + s·𝒢 W 𝒢ᵀ with A = 𝒢 or
  P = 𝒢Q, B = Aᵀ or 𝒢ᵀ (swapped strides), w the eigen-form weights, C = X, γ = 0;
- coupled Newton (:mod:`tritonkron.ops.inverse_root.triton`): X T = ((p+1) X − X M)/p,
  T² = (M² − 2(p+1) M + (p+1)² I)/p², T² M, with the residual ‖M − I‖²_F in the last GEMM.

The blocked algorithm, for T = ⌈D / BLOCK_M⌉ tiles per side:

1. One program per batch element and per *upper* tile pair (i ≤ j): T(T+1)/2 programs per block,
   enumerated column by column (j outer, i ≤ j inner), so consecutive programs share B's columns.
2. Program (b, i, j) loops over K in chunks of BLOCK_K: acc += A[i-rows, k] · w_k · B[k, j-cols].
3. Epilogue: acc ← α·acc + γ·I + β·C[i-rows, j-cols], reading C on or above the diagonal only.
   The tile is stored at (i, j) for its elements on or above the diagonal and, transposed, at
   (j, i) for those strictly above it. Every output element is written once, from the upper
   element of its pair, so the result is bitwise symmetric (also on diagonal tiles, where acc
   itself is not symmetric in floating point), and ``out`` may be C itself: each upper element
   of C is read only by the program that writes it and its mirror, and lower elements are never
   read.

Options (``tl.constexpr``): an fp64 accumulator when ``out`` is float64 (else fp32); the
tensor-core ``tl.dot`` for equal fp16/bf16 operands without w (exact products, fp32 sums), every
other dot in the accumulator dtype under the precision policy (PRECISION: IEEE products by
default and always in fp64, TF32, or bf16 operands; :mod:`tritonkron.ops.precision`, the coupled
Newton iteration always IEEE); per-block α from a tensor or
one α for all; w, C and the residual each optional. α and β arrive as fp32 (hi, lo) pairs
(``split_float``), so that a float64 product gets them to about 2⁻⁴⁸ relative.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritonkron.ops._triton.bmm import widen_low
from tritonkron.ops._triton.common import split_float
from tritonkron.ops.kernel_guard import kernel_failure
from tritonkron.ops.precision import kernel_precision, policy_dot

__all__ = ["launch_sym_gemm", "residual_columns"]

_LOW = (torch.float16, torch.bfloat16)


@triton.jit
def _upper_tile_pair(pid, num_pid):
    """(b, i, j) of program ``pid`` = b·T(T+1)/2 + j(j+1)/2 + i, 0 ≤ i ≤ j < T = ``num_pid``.

    Inverts t = j(j+1)/2 + i by j = ⌊(√(8t+1) − 1)/2⌋, then corrects a possible ±1 rounding error.
    """
    num_pairs = num_pid * (num_pid + 1) // 2
    pid_b = (pid // num_pairs).to(tl.int64)
    pid_t = pid % num_pairs
    pid_n = ((tl.sqrt(8.0 * pid_t.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    pid_n = tl.where(pid_n * (pid_n + 1) // 2 > pid_t, pid_n - 1, pid_n)
    pid_n = tl.where((pid_n + 1) * (pid_n + 2) // 2 <= pid_t, pid_n + 1, pid_n)
    return pid_b, pid_t - pid_n * (pid_n + 1) // 2, pid_n


@triton.jit
def _sym_gemm_kernel(
    # Pointers: operands A, B, weights w, C (upper triangle), per-block α, output, residual partials.
    a_ptr, b_ptr, w_ptr, c_ptr, alpha_ptr, out_ptr, res_ptr,
    # Scalars: α and β as fp32 (hi, lo) pairs, γ.
    alpha_hi, alpha_lo, beta_hi, beta_lo, gamma,
    # Sizes: out and C are [D, D], A is [D, K], B is [K, D] per batch element.
    D, K,
    # Strides: stride_xy is how far a pointer moves when index y of tensor x grows by one.
    stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn, stride_wb, stride_wk,
    stride_cb, stride_cm, stride_cn, stride_alphab, stride_ob, stride_om, stride_on, stride_rb,
    # Meta-parameters.
    HAS_W: tl.constexpr, HAS_C: tl.constexpr, PER_BLOCK_ALPHA: tl.constexpr, RESIDUAL: tl.constexpr,
    NATIVE_DOT: tl.constexpr, ACC_FP64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """out[b] = α_b·A[b] diag(w[b]) B[b] + β·C[b] + γ·I on one upper tile pair, stored mirrored.

    Tile mapping: pid = b·T(T+1)/2 + j(j+1)/2 + i with 0 ≤ i ≤ j < T = cdiv(D, BLOCK_M); the
    program owns output rows i·BLOCK_M… and columns j·BLOCK_M…. Masking: rows/cols ≥ D and the
    K tail load as 0; C is loaded on or above the diagonal only; the direct store covers row ≤ col
    and the transposed store row < col, so no element is written twice. The residual partial of
    the tile goes to res[b, i·T + j] (entries of lower tile pairs are never written)."""
    ACC: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    num_pid = tl.cdiv(D, BLOCK_M)
    pid_b, pid_m, pid_n = _upper_tile_pair(tl.program_id(0), num_pid)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < D
    mask_n = offs_n < D
    a_ptrs = a_ptr + pid_b * stride_ab + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + pid_b * stride_bb + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    w_ptrs = w_ptr + pid_b * stride_wb + offs_k * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=ACC)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        mask_k = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if NATIVE_DOT:
            # fp16/bf16 operands: tensor cores, exact products, fp32 sums.
            acc = tl.dot(a, b, acc, out_dtype=tl.float32)
        else:
            a = a.to(ACC)
            if HAS_W:
                w = tl.load(w_ptrs, mask=mask_k, other=0.0)
                a = a * w.to(ACC)[None, :]
            # The policy's products (the Newton iteration passes IEEE: it amplifies product errors).
            acc = policy_dot(a, b.to(ACC), acc, PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue while acc is still in the accumulator dtype: α·acc + γ·I + β·C (upper triangle).
    if PER_BLOCK_ALPHA:
        alpha = tl.load(alpha_ptr + pid_b * stride_alphab).to(ACC)
    else:
        alpha = tl.cast(alpha_hi, ACC) + tl.cast(alpha_lo, ACC)
    valid = mask_m[:, None] & mask_n[None, :]
    upper = offs_m[:, None] <= offs_n[None, :]
    eye = (offs_m[:, None] == offs_n[None, :]).to(ACC)
    acc = alpha * acc + tl.cast(gamma, ACC) * eye
    if HAS_C:
        beta = tl.cast(beta_hi, ACC) + tl.cast(beta_lo, ACC)
        c_ptrs = c_ptr + pid_b * stride_cb + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        acc += beta * tl.load(c_ptrs, mask=valid & upper, other=0.0).to(ACC)

    out_base = out_ptr + pid_b * stride_ob
    tl.store(out_base + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on, acc, mask=valid & upper)
    # Mirror: element (r, c) with r < c also lands at (c, r).
    acc_t = tl.trans(acc)  # [BLOCK_M (rows offs_n), BLOCK_M (cols offs_m)]
    mask_t = mask_n[:, None] & mask_m[None, :] & (offs_m[None, :] < offs_n[:, None])
    tl.store(out_base + offs_n[:, None] * stride_om + offs_m[None, :] * stride_on, acc_t, mask=mask_t)

    if RESIDUAL:
        r = acc - eye
        weight = tl.where(offs_m[:, None] < offs_n[None, :], 2.0, 1.0)  # mirrored entries count twice
        part = tl.sum(tl.sum(tl.where(valid & upper, weight * r * r, 0.0), axis=1), axis=0)
        tl.store(res_ptr + pid_b * stride_rb + pid_m * num_pid + pid_n, part)


def residual_columns(D: int, cfg: Mapping[str, int]) -> int:
    """Columns of the ``[B, T²]`` residual buffer of :func:`launch_sym_gemm` (T = ⌈D / BLOCK_M⌉)."""
    return triton.cdiv(D, cfg["BLOCK_M"]) ** 2


def launch_sym_gemm(
    a: Tensor,
    b: Tensor,
    out: Tensor,
    cfg: Mapping[str, int],
    *,
    w: Tensor | None = None,
    c: Tensor | None = None,
    alpha: Tensor | float = 1.0,
    beta: float = 0.0,
    gamma: float = 0.0,
    res: Tensor | None = None,
    precision: str = "ieee",
) -> None:
    """out[b] = α_b·(a[b] diag(w[b]) b[b]) + β·c[b] + γ·I for a product known to be symmetric.

    The caller has checked shapes, dtypes and aliasing: a ``[B, D, K]``, b ``[B, K, D]``, out and
    c ``[B, D, D]`` (any strides; out may be c itself), w ``[B, K]``, a per-block α ``[B]``.
    Only the upper tile pairs are computed and they are mirrored (module docstring).

    Args:
        cfg: ``BLOCK_M``, ``BLOCK_K``, ``num_warps``, ``num_stages``.
        alpha: α, a Python float or a tensor with one value per block.
        beta, gamma: Python floats (β ignored without c; γ reaches the kernel as fp32, which is
            exact for the iteration's coefficients).
        res: optional float32 ``[B, residual_columns(D, cfg)]`` buffer (unit column stride, zeroed
            by the caller): entry i·T + j of the upper tile pair (i, j) receives that tile's share
            of ‖out − I‖²_F; entries of lower pairs are left as they are.
        precision: the precision policy of the fp32-accumulating dots ("ieee", "tf32", "bf16";
            :mod:`tritonkron.ops.precision`); ignored for float64 output and native operands.
    """
    Bsz, D, K = a.shape
    if out.numel() == 0:
        return
    if out.dtype == torch.float64:  # see bmm.widen_low
        a, b, w = widen_low(a), widen_low(b), None if w is None else widen_low(w)
    per_block = isinstance(alpha, Tensor)
    alpha_hi, alpha_lo = (0.0, 0.0) if per_block else split_float(alpha)
    beta_hi, beta_lo = split_float(beta)
    native = w is None and a.dtype == b.dtype and a.dtype in _LOW and out.dtype == torch.float32
    num_pid = triton.cdiv(D, cfg["BLOCK_M"])
    grid = (Bsz * num_pid * (num_pid + 1) // 2,)
    # Unused operands get out as a dummy pointer (never dereferenced) and zero strides.
    try:
        _sym_gemm_kernel[grid](
            a, b, w if w is not None else out, c if c is not None else out, alpha if per_block else out, out,
            res if res is not None else out,
            alpha_hi, alpha_lo, beta_hi, beta_lo, gamma,
            D, K,
            *a.stride(), *b.stride(), *(w.stride() if w is not None else (0, 0)),
            *(c.stride() if c is not None else (0, 0, 0)), alpha.stride(0) if per_block else 0,
            *out.stride(), res.stride(0) if res is not None else 0,
            HAS_W=w is not None, HAS_C=c is not None, PER_BLOCK_ALPHA=per_block, RESIDUAL=res is not None,
            NATIVE_DOT=native, ACC_FP64=out.dtype == torch.float64,
            PRECISION=kernel_precision(precision, out.dtype == torch.float64),
            BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
    except Exception as exc:
        raise kernel_failure("_sym_gemm_kernel", cfg, exc) from exc
