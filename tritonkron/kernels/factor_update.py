"""Blocked symmetric factor update, the Triton twin of :mod:`tritonkron.reference.factor_update`.

Computes ``reference.factor_update.factor_update_ref``::

    left:   X_out = β·X + s·G W Gᵀ      X: [B, m, m]
    right:  X_out = β·X + s·Gᵀ W G      X: [B, n, n]

Write 𝒢 = G (left) or Gᵀ (right), a ``[B, d, k]`` view (no copy: transposition is swapped
strides), so that the increment is always 𝒢 W 𝒢ᵀ of size d × d. The blocked algorithm:

1. Split the d × d output into BLOCK_M × BLOCK_M tiles; launch one program per batch element and
   per *upper* tile pair (i ≤ j): T(T+1)/2 programs per block, T = ⌈d / BLOCK_M⌉.
2. Program (b, i, j) runs over the inner dimension k in chunks of BLOCK_K and accumulates
   acc = Σ_k A[i-rows, k] · w_k · C[j-rows, k] (a ``tl.dot`` per chunk), where, by weight form,

   ========================  ============================  =====================
   weight                    A (rows of the left operand)  C, w
   ========================  ============================  =====================
   None (W = I)              𝒢                             𝒢, none
   (Q, w): Q diag(w) Qᵀ      P = 𝒢 Q  (first GEMM)         P, w
   dense W                   P = 𝒢 ½(W + Wᵀ) (first GEMM)  𝒢, none
   ========================  ============================  =====================

3. Epilogue: acc ← β·X[i-rows, j-cols] + s·acc, reading only the upper triangle of X. The tile is
   stored at (i, j) for its elements on or above the diagonal and, transposed, at (j, i) for
   those strictly above it. Every output element is written once, from the upper element of
   its pair, so the result is bitwise symmetric (also on diagonal tiles, where acc itself is
   not symmetric in floating point).

Weighted forms: the thin product P is formed by a separate batched GEMM (``_bmm_kernel``) into
an fp32 (fp64 for fp64 X) ``[B, d, k]`` buffer, and the symmetric kernel then reads it. The
eigen-form keeps w as an explicit per-column scaling of A inside the symmetric kernel rather than
scaling P by √w: that is valid for every sign of w (the Frobenius coupling has w = b ≥ 0 and
LogDet w = 1/b > 0, but nothing else enforces it), costs one multiply per loaded element, and
reproduces the reference's (𝒢Q) diag(w) (𝒢Q)ᵀ without a square-root rounding. Dense W is not
assumed definite (no square root): the symmetric kernel computes the upper tiles of P 𝒢ᵀ, and
the GEMM symmetrises W on the fly (it loads W and Wᵀ), which is what the reference's final
½(out + outᵀ) computes for a non-symmetric W.

Differences from the reference (only these):

- fp32 accumulation (fp64 when X is float64) whatever G's dtype; fp16/bf16 G with W = I uses the
  tensor-core ``tl.dot`` (exact products, fp32 sums), every other dot converts its operands to
  the accumulator dtype and uses ``input_precision="ieee"`` (no TF32 on the GPU).
- Only the upper triangle is computed and it is mirrored, instead of averaging with the
  transpose; the β·X term uses X's upper triangle only (identical for a symmetric X).
- The eigen-form and dense weights are converted to the accumulator dtype.
- ``out`` may be X itself (in-place update): each upper element of X is read by exactly one
  program, the one that writes it and its mirror, before it writes; lower elements are never
  read. Any other overlap between ``out`` and an input is rejected.

Dtypes: X and ``out`` float32 with G in {float32, float16, bfloat16} (bfloat16 needs a GPU: the
interpreter has no bf16 arithmetic), or X and ``out`` float64 with G of any of these four
(converted exactly). Weights may be any of the four float dtypes.

No GROUP_M swizzle: the upper-tile enumeration is column by column (j outer, i ≤ j inner), so
consecutive programs share the C operand's j rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Literal

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritonkron.kernels._common import (
    SMEM_BUDGET,
    check_float,
    check_shape,
    check_tensor,
    interpreting,
    is_pow2_tile,
    may_overlap,
    normalize_config,
    split_float,
    tile_size,
)

__all__ = ["factor_update_configs", "factor_update_triton"]

Side = Literal["left", "right"]
Weight = Tensor | tuple[Tensor, Tensor] | None

_G_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_X_DTYPES = (torch.float32, torch.float64)
_LOW = (torch.float16, torch.bfloat16)
_KEYS = ("BLOCK_M", "BLOCK_K", "num_warps", "num_stages")


@triton.jit
def _factor_update_kernel(
    # Pointers: X (read, upper triangle), operands A and C, weights w, per-block scales, output.
    x_ptr,
    a_ptr,
    c_ptr,
    w_ptr,
    scale_ptr,
    out_ptr,
    # Scalars: β and a float scale, each as an fp32 (hi, lo) pair (fp64 precision for fp64 X).
    beta_hi,
    beta_lo,
    scale_hi,
    scale_lo,
    # Sizes: the output is [D, D] and A, C are [D, K] per batch element.
    D,
    K,
    # Strides: stride_xy is how far a pointer moves when index y of tensor x grows by one.
    stride_xb,
    stride_xm,
    stride_xn,
    stride_ab,
    stride_am,
    stride_ak,
    stride_cb,
    stride_cm,
    stride_ck,
    stride_wb,
    stride_wk,
    stride_sb,
    stride_ob,
    stride_om,
    stride_on,
    # Meta-parameters.
    HAS_W: tl.constexpr,
    PER_BLOCK_SCALE: tl.constexpr,
    NATIVE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """out[b] = β·X[b] + s_b·A[b] diag(w[b]) C[b]ᵀ on one upper tile pair, stored mirrored.

    Tile mapping: pid = b·T(T+1)/2 + j(j+1)/2 + i with 0 ≤ i ≤ j < T = cdiv(D, BLOCK_M); the
    program owns output rows i·BLOCK_M… and columns j·BLOCK_M…. Masking: rows/cols ≥ D and the
    K tail load as 0; X is loaded on or above the diagonal only; the direct store covers row ≤ col
    and the transposed store row < col, so no element is written twice.
    """
    ACC: tl.constexpr = out_ptr.dtype.element_ty
    pid = tl.program_id(0)
    num_pid = tl.cdiv(D, BLOCK_M)
    num_pairs = num_pid * (num_pid + 1) // 2
    pid_b = (pid // num_pairs).to(tl.int64)
    pid_t = pid % num_pairs
    # Invert t = j(j+1)/2 + i: j = ⌊(√(8t+1) − 1)/2⌋, then correct a possible ±1 rounding error.
    pid_n = ((tl.sqrt(8.0 * pid_t.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    pid_n = tl.where(pid_n * (pid_n + 1) // 2 > pid_t, pid_n - 1, pid_n)
    pid_n = tl.where((pid_n + 1) * (pid_n + 2) // 2 <= pid_t, pid_n + 1, pid_n)
    pid_m = pid_t - pid_n * (pid_n + 1) // 2

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < D
    mask_n = offs_n < D
    a_ptrs = a_ptr + pid_b * stride_ab + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    c_ptrs = c_ptr + pid_b * stride_cb + offs_k[:, None] * stride_ck + offs_n[None, :] * stride_cm  # Cᵀ
    w_ptrs = w_ptr + pid_b * stride_wb + offs_k * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_M), dtype=ACC)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        mask_k = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        c = tl.load(c_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if NATIVE_DOT:
            # fp16/bf16 operands: tensor cores, exact products, fp32 sums.
            acc = tl.dot(a, c, acc)
        else:
            a = a.to(ACC)
            if HAS_W:
                w = tl.load(w_ptrs, mask=mask_k, other=0.0)
                a = a * w.to(ACC)[None, :]
            acc = tl.dot(a, c.to(ACC), acc, input_precision="ieee")
        a_ptrs += BLOCK_K * stride_ak
        c_ptrs += BLOCK_K * stride_ck
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue while acc is still in the accumulator dtype: β·X (upper triangle) + s·acc.
    if PER_BLOCK_SCALE:
        scale = tl.load(scale_ptr + pid_b * stride_sb).to(ACC)
    else:
        scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    beta = tl.cast(beta_hi, ACC) + tl.cast(beta_lo, ACC)
    upper = offs_m[:, None] <= offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :] & upper
    x_ptrs = x_ptr + pid_b * stride_xb + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(ACC)
    acc = beta * x + scale * acc

    out_base = out_ptr + pid_b * stride_ob
    tl.store(out_base + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on, acc, mask=mask)
    # Mirror: element (r, c) with r < c also lands at (c, r).
    acc_t = tl.trans(acc)  # [BLOCK_M (rows offs_n), BLOCK_M (cols offs_m)]
    mask_t = mask_n[:, None] & mask_m[None, :] & (offs_m[None, :] < offs_n[:, None])
    tl.store(out_base + offs_n[:, None] * stride_om + offs_m[None, :] * stride_on, acc_t, mask=mask_t)


@triton.jit
def _bmm_kernel(
    # Pointers: C = A @ B̃ with B̃ = B, or ½(B + Bᵀ) when SYM_B (B square).
    a_ptr,
    b_ptr,
    c_ptr,
    # Sizes: A is [M, K], B is [K, N], C is [M, N] per batch element.
    M,
    N,
    K,
    # Strides.
    stride_ab,
    stride_am,
    stride_ak,
    stride_bb,
    stride_bk,
    stride_bn,
    stride_cb,
    stride_cm,
    stride_cn,
    # Meta-parameters.
    SYM_B: tl.constexpr,
    NATIVE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Batched C[b] = A[b] @ B̃[b]; one program per (batch, BLOCK_M × BLOCK_N tile) of C.

    Masking: rows ≥ M, columns ≥ N and the K tail load as 0; stores outside C are skipped.
    """
    ACC: tl.constexpr = c_ptr.dtype.element_ty
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_b = (pid // (num_pid_m * num_pid_n)).to(tl.int64)
    pid_t = pid % (num_pid_m * num_pid_n)
    pid_m = pid_t // num_pid_n
    pid_n = pid_t % num_pid_n

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + pid_b * stride_ab + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + pid_b * stride_bb + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    bt_ptrs = b_ptr + pid_b * stride_bb + offs_k[:, None] * stride_bn + offs_n[None, :] * stride_bk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        mask_k = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if NATIVE_DOT:
            acc = tl.dot(a, b, acc)
        else:
            b = b.to(ACC)
            if SYM_B:
                bt = tl.load(bt_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                b = 0.5 * (b + bt.to(ACC))
            acc = tl.dot(a.to(ACC), b, acc, input_precision="ieee")
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
        bt_ptrs += BLOCK_K * stride_bn

    c_ptrs = c_ptr + pid_b * stride_cb + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])


# ---------------------------------------------------------------------------------------------
# Configs: the legal space (for autotune/) and the default heuristic.
# ---------------------------------------------------------------------------------------------


def _keep_factor_update(config: Mapping[str, int]) -> bool:
    """Whether a config is legal for both kernels of this module.

    Rules: BLOCK_M, BLOCK_K powers of two ≥ 16 (``tl.dot``'s minimum); num_warps in {1, …, 16};
    num_stages ≥ 1; the fp32 operand tiles of the symmetric kernel (A: BLOCK_M × BLOCK_K and
    Cᵀ: BLOCK_K × BLOCK_M) times num_stages within the shared-memory budget; and at most 128
    accumulator values per thread (BLOCK_M² / (32·num_warps)). fp64 doubles the bytes: the
    heuristic caps its tiles, explicit fp64 configs are the caller's responsibility.
    """
    try:
        bm, bk, warps, stages = (config[key] for key in _KEYS)
    except KeyError:
        return False
    if not (is_pow2_tile(bm) and is_pow2_tile(bk)):
        return False
    if warps not in (1, 2, 4, 8, 16) or not isinstance(stages, int) or stages < 1:
        return False
    smem = 4 * stages * 2 * bm * bk
    return smem <= SMEM_BUDGET and bm * bm <= 128 * 32 * warps


def factor_update_configs() -> list[triton.Config]:
    """Legal configs (keys BLOCK_M, BLOCK_K; num_warps, num_stages) for a future autotuner."""
    space = itertools.product((16, 32, 64, 128), (16, 32, 64), (2, 4, 8), (1, 2, 3, 4))
    cfgs = [dict(zip(_KEYS, values, strict=True)) for values in space]
    return [
        triton.Config(
            {"BLOCK_M": c["BLOCK_M"], "BLOCK_K": c["BLOCK_K"]},
            num_warps=c["num_warps"],
            num_stages=c["num_stages"],
        )
        for c in cfgs
        if _keep_factor_update(c)
    ]


def _heuristic(d: int, k: int, acc_dtype: torch.dtype) -> dict[str, int]:
    """Default config.

    Interpreter: BLOCK_M = BLOCK_K = the smallest power of two ≥ the size, capped at 64. Each
    program runs serially in numpy and its cost is mostly per-op overhead, not tile size, so
    fewer, larger programs are faster: on the kernel tests' reference grid (d, k ≤ 64) caps of
    64 / 32 / 16 took 4.8 / 7.6 / 17.6 s. (Tests that need several tiles pass a config.)
    GPU (untuned starting points, fp32 ieee operands): 64 × 64 output tiles with 4 warps, or
    128 × 128 with 8 warps once d ≥ 1024 (fp32 only: fp64 keeps 64 for shared memory); BLOCK_K
    32; 3 stages.
    """
    if interpreting():
        return {"BLOCK_M": tile_size(d, 64), "BLOCK_K": tile_size(k, 64), "num_warps": 4, "num_stages": 1}
    big = d >= 1024 and acc_dtype == torch.float32
    return {
        "BLOCK_M": tile_size(d, 128 if big else 64),
        "BLOCK_K": tile_size(k, 32),
        "num_warps": 8 if big else 4,
        "num_stages": 3,
    }


def _resolve_config(
    config: Mapping[str, int] | triton.Config | None, default: dict[str, int]
) -> dict[str, int]:
    if config is None:
        return default
    cfg = normalize_config(config)
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise ValueError(f"config has unknown keys {unknown}; allowed: {list(_KEYS)}")
    merged = {**default, **cfg}
    if not _keep_factor_update(merged):
        raise ValueError(f"config is not a legal factor-update config: {merged}")
    return merged


# ---------------------------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------------------------


def _check_out(out: Tensor | None, X: Tensor, inputs: dict[str, Tensor]) -> Tensor:
    if out is None:
        return torch.empty(X.shape, dtype=X.dtype, device=X.device)
    check_tensor("out", out, 3, (X.dtype,), X.device)
    check_shape("out", out, tuple(X.shape))
    if any(stride == 0 and size > 1 for size, stride in zip(out.shape, out.stride(), strict=True)):
        raise ValueError("out must not have zero strides (expanded views would be written concurrently)")
    if may_overlap(out, X) and (out.data_ptr() != X.data_ptr() or out.stride() != X.stride()):
        raise ValueError("out may be X itself (in-place update) but must not partially overlap it")
    for name, t in inputs.items():
        if may_overlap(out, t):
            raise ValueError(f"out must not share memory with {name}")
    return out


# ---------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------


def _launch_bmm(a: Tensor, b: Tensor, c: Tensor, cfg: dict[str, int], sym_b: bool) -> None:
    """c[b] = a[b] @ b̃[b] for 3-D operands (any strides); b̃ = ½(b + bᵀ) when ``sym_b``."""
    Bsz, M, K = a.shape
    N = b.shape[-1]
    if c.numel() == 0:
        return
    native = a.dtype == b.dtype and a.dtype in _LOW and c.dtype == torch.float32 and not sym_b
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_K"]
    grid = (Bsz * triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _bmm_kernel[grid](
        a, b, c,
        M, N, K,
        *a.stride(), *b.stride(), *c.stride(),
        SYM_B=sym_b, NATIVE_DOT=native, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip


def factor_update_triton(
    X: Tensor,
    G: Tensor,
    beta: float,
    scale: Tensor | float,
    side: Side,
    weight: Weight = None,
    *,
    out: Tensor | None = None,
    config: Mapping[str, int] | triton.Config | None = None,
) -> Tensor:
    """Computes ``reference.factor_update.factor_update_ref`` with the blocked symmetric kernel:

        left:  X_out = β·X + s·G W Gᵀ   ``[B, m, m]``;   right: X_out = β·X + s·Gᵀ W G   ``[B, n, n]``.

    Differences from the reference are listed in the module docstring (fp32/fp64 accumulation;
    upper tiles mirrored, so the output is bitwise symmetric; β·X read from X's upper triangle).

    Args:
        X: symmetric factors ``[B, d, d]``, float32 or float64, any strides (d = m left, n right).
        G: gradient blocks ``[B, m, n]``, any strides; float32/float16/bfloat16 (float64 too when
            X is float64).
        beta: retention β (Python float).
        scale: s, a Python float or a per-block tensor with B elements (``[B]``).
        side: "left" or "right".
        weight: W = I (None); a dense symmetric ``[B, k, k]`` tensor (k = n left, m right; used as
            ½(W + Wᵀ)); or ``(Q, w)`` with ``Q: [B, k, k]``, ``w: [B, k]`` for W = Q diag(w) Qᵀ.
        out: optional ``[B, d, d]`` output of X's dtype; may be X itself for an in-place update.
        config: ``BLOCK_M``, ``BLOCK_K``, ``num_warps``, ``num_stages`` (dict or
            ``triton.Config``, merged over the heuristic); None → :func:`_heuristic`.

    Returns:
        X_out ``[B, d, d]`` (``out`` if given), exactly symmetric.

    Raises:
        ValueError: naming the parameter, on a bad side, type, shape, dtype or device, an ``out``
            that partially overlaps X or shares memory with another input, or an illegal config.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right'; got {side!r}")
    if not isinstance(G, Tensor):
        raise ValueError(f"G must be a torch.Tensor; got {type(G).__name__}")
    check_tensor("G", G, 3, _G_DTYPES, G.device)
    Bsz, m, n = G.shape
    d, k = (m, n) if side == "left" else (n, m)
    check_tensor("X", X, 3, _X_DTYPES, G.device)
    check_shape("X", X, (Bsz, d, d))
    if G.dtype == torch.float64 and X.dtype != torch.float64:
        raise ValueError("G is float64 but X is float32: use a float64 X (or a float32 G)")
    beta_hi, beta_lo = split_float(check_float("beta", beta))
    inputs = {"G": G}

    if isinstance(scale, Tensor):
        check_tensor("scale", scale, scale.dim(), _G_DTYPES, G.device)
        if scale.numel() != Bsz:
            raise ValueError(
                f"scale must be a float or a tensor with B = {Bsz} elements; got {list(scale.shape)}"
            )
        scale_t = scale.reshape(Bsz)
        scale_hi = scale_lo = 0.0
        inputs["scale"] = scale
    else:
        scale_t = None
        scale_hi, scale_lo = split_float(check_float("scale", scale))

    dense = isinstance(weight, Tensor)
    if weight is None:
        Q = w = None
    elif dense:
        Q, w = check_tensor("weight", weight, 3, _G_DTYPES, G.device), None
        check_shape("weight", Q, (Bsz, k, k))
        inputs["weight"] = Q
    elif isinstance(weight, tuple) and len(weight) == 2:
        Q = check_tensor("weight[0] (Q)", weight[0], 3, _G_DTYPES, G.device)
        w = check_tensor("weight[1] (w)", weight[1], 2, _G_DTYPES, G.device)
        check_shape("weight[0] (Q)", Q, (Bsz, k, k))
        check_shape("weight[1] (w)", w, (Bsz, k))
        inputs |= {"weight[0] (Q)": Q, "weight[1] (w)": w}
    else:
        raise ValueError(
            f"weight must be None, a [B, k, k] tensor or a (Q, w) tuple; got {type(weight).__name__}"
        )

    out = _check_out(out, X, inputs)
    cfg = _resolve_config(config, _heuristic(d, k, X.dtype))
    if out.numel() == 0:
        return out

    # Operands: 𝒢 = G or Gᵀ ([B, d, k], a strided view), then A, C as in the module docstring.
    g_op = G if side == "left" else G.transpose(1, 2)
    if Q is None:
        a_op = c_op = g_op
    else:
        a_op = torch.empty((Bsz, d, k), dtype=X.dtype, device=X.device)  # P = 𝒢 Q or 𝒢 ½(W + Wᵀ)
        _launch_bmm(g_op, Q, a_op, cfg, sym_b=dense)
        c_op = g_op if dense else a_op
    native = Q is None and G.dtype in _LOW and X.dtype == torch.float32
    w_t = w if w is not None else out  # dummy pointer when HAS_W is False
    s_t = scale_t if scale_t is not None else out

    num_pid = triton.cdiv(d, cfg["BLOCK_M"])
    grid = (Bsz * num_pid * (num_pid + 1) // 2,)
    _factor_update_kernel[grid](
        X, a_op, c_op, w_t, s_t, out,
        beta_hi, beta_lo, scale_hi, scale_lo,
        d, k,
        *X.stride(), *a_op.stride(), *c_op.stride(),
        *(w.stride() if w is not None else (0, 0)),
        scale_t.stride(0) if scale_t is not None else 0,
        *out.stride(),
        HAS_W=w is not None, PER_BLOCK_SCALE=scale_t is not None, NATIVE_DOT=native,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_K=cfg["BLOCK_K"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return out
