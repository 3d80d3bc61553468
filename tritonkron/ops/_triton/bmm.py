"""The batched GEMM with fused epilogues that every non-symmetric product of the kernels runs on.

Computes, per batch element b (a torch reference is ``epilogue(A[b] @ B̃[b])`` in float64)::

    C[b] = epilogue(A[b] @ B̃[b])     A: [B, M, K],  B: [B, K, N],  C: [B, M, N]
    B̃ = B, or ½(B + Bᵀ) when ``sym_b`` (B square, K = N)

    epilogue, applied to the accumulator before the store (``Epilogue``):
        NONE        acc
        SIGMA       acc ⊙ σ/(1 + εσ),   σ_ij = row[i]·col[j]      (eigenbasis scaling)
        ROW_SHIFT   (row[i] − shift) · acc_ij                       (D_k − c I) rows, spike-and-flat
        AXPY        acc + shift · Y_ij                              (+ c·Y, spike-and-flat)

The blocked algorithm is the one of Triton's matrix-multiplication tutorial:

1. One program per (batch element, BLOCK_M × BLOCK_N tile of C); the tiles of one batch element
   are visited in groups of GROUP_M rows of tiles (GROUP_M = 1: row-major order), for L2 reuse.
2. Loop over K in chunks of BLOCK_K: masked loads of an A and a B tile (0 outside the matrix),
   ``acc += A_tile @ B_tile``.
3. Epilogue while ``acc`` is still in the accumulator dtype, then one masked store, cast to C's
   dtype.

Options (all ``tl.constexpr``, so unused branches are compiled out):

- accumulator: float64 when C is float64 (exact float64 GEMMs for float64 factors), else float32;
- NATIVE_DOT: equal fp16/bf16 operands with an fp32 accumulator use the tensor-core ``tl.dot``
  (exact products, fp32 sums) under every precision policy; every other case converts the
  operands to the accumulator dtype and multiplies them under the policy (PRECISION, below);
- PRECISION: the precision policy of :mod:`tritonkron.ops.precision` (``policy_dot``): IEEE
  products (``input_precision="ieee"``, the default and always for a float64 accumulator), TF32
  tensor cores, or bf16 operands with the fp32 accumulator;
- SYM_B: B is loaded together with its transpose and symmetrised per tile (never materialised);
  the operands then go through the policy's dot;
- EPILOGUE: one of the four above.

Transposed operands are passed as swapped strides (no copies); batch offsets are int64.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritonkron.ops._triton.common import SMEM_BUDGET, is_pow2_tile, resolve_config, tile_size
from tritonkron.ops.kernel_guard import kernel_failure
from tritonkron.ops.precision import kernel_precision, policy_dot

__all__ = ["BMM_KEYS", "Epilogue", "bmm_config", "bmm_configs", "keep_bmm_config", "launch_bmm", "widen_low"]

BMM_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
_LOW = (torch.float16, torch.bfloat16)


FP64_MAX_STAGES = 2
"""Pipeline depth of float64-accumulating launches. The largest fp64 tile (128 × 128 × 32) over 3
stages needs 131072 B of shared memory, more than the 101376 B of sm_86/sm_89 GPUs; over 2 stages
it needs 65536 B and fits every supported GPU (``tritonkron.ops.aot`` checks each target's limit)."""


def widen_low(t: Tensor) -> Tensor:
    """t as float64 when it is fp16/bf16 (exact), else t itself.

    A float64 accumulator takes float32/float64 operands only: Triton 3.6 lowers an fp16/bf16
    operand converted to float64 inside the kernel into an fp64 MMA operand it cannot build (an
    assertion in its NVIDIA backend, "fp64 don't support largeK MMA"), so such operands are
    widened before the launch. It costs one copy of the operand, on a path (float64 factors with
    low-precision gradients) that only a forced float64 state takes.
    """
    return t.to(torch.float64) if t.dtype in _LOW else t


class Epilogue(enum.IntEnum):
    """The fused epilogues of :func:`launch_bmm` (module docstring for the formulas)."""

    NONE = 0
    SIGMA = 1
    ROW_SHIFT = 2
    AXPY = 3


# The kernel compares EPILOGUE with these (a jit function reads module globals only as constexpr).
_EPI_SIGMA = tl.constexpr(Epilogue.SIGMA.value)
_EPI_ROW_SHIFT = tl.constexpr(Epilogue.ROW_SHIFT.value)
_EPI_AXPY = tl.constexpr(Epilogue.AXPY.value)


@triton.jit
def _bmm_kernel(
    # Pointers: C = epilogue(A @ B̃); row/col/y/shift are epilogue operands (dummies if unused).
    a_ptr, b_ptr, c_ptr, row_ptr, col_ptr, y_ptr, shift_ptr, eps,
    # Sizes: A is [M, K], B is [K, N], C is [M, N] per batch element.
    M, N, K,
    # Strides: stride_xy is how far a pointer moves when index y of tensor x grows by one.
    stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn, stride_cb, stride_cm, stride_cn,
    stride_rowb, stride_rowm, stride_colb, stride_coln, stride_yb, stride_ym, stride_yn, stride_shiftb,
    # Meta-parameters.
    ACC_FP64: tl.constexpr, NATIVE_DOT: tl.constexpr, SYM_B: tl.constexpr, EPILOGUE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Batched C[b] = epilogue(A[b] @ B̃[b]); one program per (batch, BLOCK_M × BLOCK_N tile).

    Tile mapping: pid = b·T + t with T = cdiv(M, BLOCK_M)·cdiv(N, BLOCK_N) and t in GROUP_M-grouped
    order. Masking: rows ≥ M, columns ≥ N and the K tail load as 0; stores outside C are skipped.
    """
    ACC: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    pid_b = (pid // num_tiles).to(tl.int64)
    pid_t = pid % num_tiles
    # Grouped ordering of the tiles of one batch element, for L2 reuse of B's columns.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid_t // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid_t % num_pid_in_group) % group_size_m)
    pid_n = (pid_t % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + pid_b * stride_ab + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_base = b_ptr + pid_b * stride_bb
    b_ptrs = b_base + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        mask_k = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if NATIVE_DOT:
            acc = tl.dot(a, b, acc, out_dtype=tl.float32)
        else:
            b = b.to(ACC)
            if SYM_B:
                # Bᵀ tile at the same (k, n) position: B[n, k], i.e. swapped strides.
                rows_t = k * BLOCK_K + offs_k
                bt_ptrs = b_base + rows_t[:, None] * stride_bn + offs_n[None, :] * stride_bk
                bt = tl.load(bt_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                b = 0.5 * (b + bt.to(ACC))
            # The policy's products (IEEE by default, as the reference computes), ACC sums.
            acc = policy_dot(a.to(ACC), b, acc, PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # Epilogue, while acc is still in the accumulator dtype.
    if EPILOGUE == _EPI_SIGMA:
        s_row = tl.load(row_ptr + pid_b * stride_rowb + offs_m * stride_rowm, mask=mask_m, other=0.0)
        s_col = tl.load(col_ptr + pid_b * stride_colb + offs_n * stride_coln, mask=mask_n, other=0.0)
        sigma = s_row.to(ACC)[:, None] * s_col.to(ACC)[None, :]
        acc = acc * (sigma / (1.0 + eps * sigma))
    elif EPILOGUE == _EPI_ROW_SHIFT:
        s_row = tl.load(row_ptr + pid_b * stride_rowb + offs_m * stride_rowm, mask=mask_m, other=0.0)
        shift = tl.load(shift_ptr + pid_b * stride_shiftb).to(ACC)
        acc = acc * (s_row.to(ACC) - shift)[:, None]
    elif EPILOGUE == _EPI_AXPY:
        shift = tl.load(shift_ptr + pid_b * stride_shiftb).to(ACC)
        y_ptrs = y_ptr + pid_b * stride_yb + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
        y = tl.load(y_ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        acc = acc + shift * y.to(ACC)

    c_ptrs = c_ptr + pid_b * stride_cb + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ---------------------------------------------------------------------------------------------
# Configs: the legal space (for autotune/) and the default heuristic.
# ---------------------------------------------------------------------------------------------


def keep_bmm_config(cfg: Mapping[str, int]) -> bool:
    """Whether a tile config is legal: power-of-two tiles ≥ 16 (``tl.dot``'s minimum), GROUP_M ≥ 1,
    warps in {1, 2, 4, 8, 16}, stages ≥ 1, and fp32 operand tiles × stages within the
    shared-memory budget: 4·stages·BLOCK_K·(BLOCK_M + BLOCK_N) ≤ ``SMEM_BUDGET`` bytes."""
    if not all(is_pow2_tile(cfg[key]) for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K")):
        return False
    if cfg["GROUP_M"] < 1 or cfg["num_warps"] not in (1, 2, 4, 8, 16) or cfg["num_stages"] < 1:
        return False
    smem = 4 * cfg["num_stages"] * cfg["BLOCK_K"] * (cfg["BLOCK_M"] + cfg["BLOCK_N"])
    return smem <= SMEM_BUDGET


def bmm_configs() -> list[triton.Config]:
    """Legal tile configs of the batched GEMM (keys :data:`BMM_KEYS`)."""
    space = itertools.product((32, 64, 128), (32, 64, 128), (32, 64), (8,), (4, 8), (2, 3, 4))
    cfgs = [dict(zip(BMM_KEYS, values, strict=True)) for values in space]
    return [
        triton.Config({k: c[k] for k in BMM_KEYS[:4]}, num_warps=c["num_warps"], num_stages=c["num_stages"])
        for c in cfgs
        if keep_bmm_config(c)
    ]


def _heuristic(M: int, N: int, K: int) -> dict[str, int]:
    """Default tiles: 64 × 64 × 32, or 128 × 128 for large outputs; untuned starting points (fp32
    ieee operands). The interpreter runs the same tiles as a GPU, so its tests check the variants
    a GPU launches (every one of them also compiles ahead of time: ``tritonkron.ops.aot``)."""
    cap = 128 if M >= 512 and N >= 512 else 64
    tiles = {
        "BLOCK_M": tile_size(M, cap),
        "BLOCK_N": tile_size(N, cap),
        "BLOCK_K": tile_size(K, 32),
        "GROUP_M": 8,
    }
    return {**tiles, "num_warps": 8 if cap == 128 else 4, "num_stages": 3}


def bmm_config(config: Mapping[str, int] | triton.Config | None, M: int, N: int, K: int) -> dict[str, int]:
    """An explicit config (keys :data:`BMM_KEYS`) merged over the heuristic for an M × N × K
    product, or the heuristic when ``config`` is None.

    Raises:
        ValueError: unknown keys or an illegal merged config.
    """
    return resolve_config(config, _heuristic(M, N, K), BMM_KEYS, keep_bmm_config)


# ---------------------------------------------------------------------------------------------
# Launcher.
# ---------------------------------------------------------------------------------------------


def launch_bmm(
    a: Tensor,
    b: Tensor,
    c: Tensor,
    cfg: Mapping[str, int],
    *,
    sym_b: bool = False,
    epilogue: Epilogue = Epilogue.NONE,
    row: Tensor | None = None,
    col: Tensor | None = None,
    y: Tensor | None = None,
    shift: Tensor | None = None,
    eps: float = 0.0,
    precision: str = "ieee",
) -> None:
    """c[b] = epilogue(a[b] @ b̃[b]) for 3-D operands of any strides (b̃ = ½(b + bᵀ) if ``sym_b``).

    The caller has checked shapes and devices: a ``[B, M, K]``, b ``[B, K, N]``, c ``[B, M, N]``;
    row ``[B, M]``, col ``[B, N]``, y ``[B, M, N]``, shift ``[B]`` as the epilogue needs them.
    The accumulator is float64 when c is float64, else float32 (module docstring); with a float64
    accumulator, fp16/bf16 operands are first widened to float64 in torch (:func:`widen_low`) and
    the pipeline is at most :data:`FP64_MAX_STAGES` deep.

    Args:
        cfg: a full config with every key of :data:`BMM_KEYS` (see :func:`bmm_config`).
        sym_b: symmetrise b per tile (b square).
        epilogue: which :class:`Epilogue` to apply; eps is ε of ``Epilogue.SIGMA``.
        precision: the precision policy ("ieee", "tf32", "bf16") of the fp32-accumulating dots
            (:mod:`tritonkron.ops.precision`); ignored with a float64 accumulator and for
            native fp16/bf16 operands.
    """
    Bsz, M, K = a.shape
    N = b.shape[-1]
    if Bsz == 0 or M == 0 or N == 0:
        return
    acc_fp64 = c.dtype == torch.float64
    if acc_fp64:
        a, b = widen_low(a), widen_low(b)
        cfg = {**cfg, "num_stages": min(cfg["num_stages"], FP64_MAX_STAGES)}
    native = a.dtype == b.dtype and a.dtype in _LOW and not acc_fp64 and not sym_b
    mode = kernel_precision(precision, acc_fp64)
    # Unused epilogue operands get c as a dummy pointer (never dereferenced) and zero strides.
    row_t, col_t, y_t, shift_t = (t if t is not None else c for t in (row, col, y, shift))
    grid = (Bsz * triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    try:
        _bmm_kernel[grid](
            a, b, c, row_t, col_t, y_t, shift_t, eps,
            M, N, K,
            *a.stride(), *b.stride(), *c.stride(),
            *(row.stride() if row is not None else (0, 0)),
            *(col.stride() if col is not None else (0, 0)),
            *(y.stride() if y is not None else (0, 0, 0)),
            shift.stride(0) if shift is not None else 0,
            ACC_FP64=acc_fp64, NATIVE_DOT=native, SYM_B=sym_b, EPILOGUE=int(epilogue), PRECISION=mode,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
    except Exception as exc:
        raise kernel_failure("_bmm_kernel", cfg, exc) from exc
