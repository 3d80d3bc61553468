"""Eigenbasis preconditioning, spike-and-flat application and eigenvalue tracking (PAPER §4.2–§4.4).

Triton twins of :mod:`tritonkron.reference.precondition` and
:func:`tritonkron.divergences.track_eigenvalues`. Three launchers:

``eigenbasis_precondition_triton``
    U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ,  Σ_ij = σ_ij / (1 + ε σ_ij),  σ_ij = s_A[i] s_B[j].
    A chain of four batched GEMMs through fp32 scratch buffers::

        T = Q_Aᵀ M          # [B, m, n]
        R = (T Q_B) ⊙ Σ     # Σ built per output tile from s_A, s_B in the epilogue
        T = Q_A R
        U = T Q_Bᵀ          # cast to out's dtype at the store

``spike_and_flat_triton``
    P Y = U_k (D_k − c I)(U_kᵀ Y) + c·Y as two thin GEMMs::

        C = (D_k − c I) (U_kᵀ Y)   # [B, k, n], row scaling d_i − c fused in the epilogue
        P Y = U_k C + c·Y          # the axpy with Y fused in the epilogue

``track_eigenvalues_triton``
    a_i ← β a_i + (1−β) s_A Σ_j Ĝ_ij² w_B,j  and  b_j ← β b_j + (1−β) s_B Σ_i Ĝ_ij² w_A,i in one
    launch: one program per (batch, row tile) sweeps its rows of Ĝ for a; one program per
    (batch, column tile) sweeps its columns for b. Ĝ is read twice, with no atomics, so the
    result is deterministic.

The GEMM kernel is the tutorial one (03-matrix-multiplication): program ids flattened over
(batch, tile) with GROUP_M swizzling, K loop with masked loads, fp32 accumulator, epilogue
applied while the accumulator is still fp32. Transposed operands are passed as swapped strides.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritonkron._env import triton_interpret

__all__ = [
    "eigenbasis_precondition_triton",
    "precondition_configs",
    "spike_and_flat_triton",
    "track_eigenvalues_configs",
    "track_eigenvalues_triton",
]

_SUPPORTED = (torch.float32, torch.float16, torch.bfloat16)

# Epilogues of the batched GEMM (constexpr so that unused branches are compiled out).
_EPI_NONE = tl.constexpr(0)
_EPI_SIGMA = tl.constexpr(1)  # acc ⊙ σ/(1+εσ), σ_ij = row[i]·col[j]
_EPI_ROW_SHIFT = tl.constexpr(2)  # (row[i] − shift[b]) · acc_ij
_EPI_AXPY = tl.constexpr(3)  # acc + shift[b] · Y_ij


@triton.jit
def _bmm_kernel(
    # Pointers: C = epilogue(A @ B); row/col/y/shift are epilogue operands (dummies if unused).
    a_ptr, b_ptr, c_ptr, row_ptr, col_ptr, y_ptr, shift_ptr, eps,
    # Sizes: A is [M, K], B is [K, N], C is [M, N] per batch element.
    M, N, K,
    # Strides: stride_xy is how far a pointer moves when index y of tensor x grows by one.
    stride_ab, stride_am, stride_ak, stride_bb, stride_bk, stride_bn, stride_cb, stride_cm, stride_cn,
    stride_rowb, stride_rowm, stride_colb, stride_coln, stride_yb, stride_ym, stride_yn, stride_shiftb,
    # Meta-parameters.
    EPILOGUE: tl.constexpr, IEEE_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """Batched C[b] = epilogue(A[b] @ B[b]); one program per (batch, BLOCK_M × BLOCK_N tile).

    Masking: rows ≥ M, columns ≥ N and the K tail are masked (loads return 0, stores skipped).
    """
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
    b_ptrs = b_ptr + pid_b * stride_bb + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        mask_k = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if IEEE_FP32:
            # Mixed or fp32 operands: exact fp32 products (no TF32), as the reference computes.
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # Epilogue, while the accumulator is still fp32.
    if EPILOGUE == _EPI_SIGMA:
        s_row = tl.load(row_ptr + pid_b * stride_rowb + offs_m * stride_rowm, mask=mask_m, other=0.0)
        s_col = tl.load(col_ptr + pid_b * stride_colb + offs_n * stride_coln, mask=mask_n, other=0.0)
        sigma = s_row.to(tl.float32)[:, None] * s_col.to(tl.float32)[None, :]
        acc = acc * (sigma / (1.0 + eps * sigma))
    elif EPILOGUE == _EPI_ROW_SHIFT:
        s_row = tl.load(row_ptr + pid_b * stride_rowb + offs_m * stride_rowm, mask=mask_m, other=0.0)
        shift = tl.load(shift_ptr + pid_b * stride_shiftb).to(tl.float32)
        acc = acc * (s_row.to(tl.float32) - shift)[:, None]
    elif EPILOGUE == _EPI_AXPY:
        shift = tl.load(shift_ptr + pid_b * stride_shiftb).to(tl.float32)
        y_ptrs = y_ptr + pid_b * stride_yb + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
        y = tl.load(y_ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        acc = acc + shift * y.to(tl.float32)

    c_ptrs = c_ptr + pid_b * stride_cb + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _track_eigenvalues_kernel(
    # Pointers: eigenvalues, rotated gradient, weights (dummies unless HAS_*), scales, outputs.
    a_ptr, b_ptr, g_ptr, wl_ptr, sl_ptr, wr_ptr, sr_ptr, a_out_ptr, b_out_ptr, beta,
    # Sizes: Ĝ is [M, N] per batch element.
    M, N,
    # Strides.
    stride_ab, stride_am, stride_bb, stride_bn, stride_gb, stride_gm, stride_gn, stride_wlb, stride_wln,
    stride_slb, stride_wrb, stride_wrm, stride_srb, stride_aob, stride_aom, stride_bob, stride_bon,
    # Meta-parameters.
    HAS_WL: tl.constexpr, HAS_WR: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Programs [0, cdiv(M, BLOCK_M)) of each batch element reduce rows of Ĝ² into a; the
    remaining cdiv(N, BLOCK_N) programs reduce columns into b. Masked entries load as 0."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid = num_pid_m + tl.cdiv(N, BLOCK_N)
    pid_b = (pid // num_pid).to(tl.int64)
    pid_r = pid % num_pid
    g_base = g_ptr + pid_b * stride_gb
    if pid_r < num_pid_m:
        # a_i ← β a_i + (1−β) s_A Σ_j Ĝ_ij² w_B,j over this program's BLOCK_M rows.
        offs_m = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for j in range(0, tl.cdiv(N, BLOCK_N)):
            offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            g_ptrs = g_base + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn
            g = tl.load(g_ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
            sq = g * g
            if HAS_WL:
                w = tl.load(wl_ptr + pid_b * stride_wlb + offs_n * stride_wln, mask=mask_n, other=0.0)
                sq = sq * w.to(tl.float32)[None, :]
            acc += tl.sum(sq, axis=1)
        scale = tl.load(sl_ptr + pid_b * stride_slb).to(tl.float32)
        x = tl.load(a_ptr + pid_b * stride_ab + offs_m * stride_am, mask=mask_m, other=0.0)
        x = beta * x.to(tl.float32) + (1.0 - beta) * (acc * scale)
        a_out_ptrs = a_out_ptr + pid_b * stride_aob + offs_m * stride_aom
        tl.store(a_out_ptrs, x.to(a_out_ptr.dtype.element_ty), mask=mask_m)
    else:
        # b_j ← β b_j + (1−β) s_B Σ_i Ĝ_ij² w_A,i over this program's BLOCK_N columns.
        offs_n = (pid_r - num_pid_m) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for i in range(0, tl.cdiv(M, BLOCK_M)):
            offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
            mask_m = offs_m < M
            g_ptrs = g_base + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn
            g = tl.load(g_ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
            sq = g * g
            if HAS_WR:
                w = tl.load(wr_ptr + pid_b * stride_wrb + offs_m * stride_wrm, mask=mask_m, other=0.0)
                sq = sq * w.to(tl.float32)[:, None]
            acc += tl.sum(sq, axis=0)
        scale = tl.load(sr_ptr + pid_b * stride_srb).to(tl.float32)
        x = tl.load(b_ptr + pid_b * stride_bb + offs_n * stride_bn, mask=mask_n, other=0.0)
        x = beta * x.to(tl.float32) + (1.0 - beta) * (acc * scale)
        b_out_ptrs = b_out_ptr + pid_b * stride_bob + offs_n * stride_bon
        tl.store(b_out_ptrs, x.to(b_out_ptr.dtype.element_ty), mask=mask_n)


# ---------------------------------------------------------------------------------------------
# Configs: legal spaces for a future autotuner, and the default heuristic.
# ---------------------------------------------------------------------------------------------

_GEMM_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")
_TRACK_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")
# Shared-memory budget of the pipelined operand tiles (bytes); conservative for sm80 and later.
_SMEM_BUDGET = 160 * 1024


def _pow2_at_least_16(x: object) -> bool:
    return isinstance(x, int) and x >= 16 and (x & (x - 1)) == 0


def _keep_precondition(cfg: Mapping[str, int]) -> bool:
    """Whether a GEMM tile config is legal: power-of-two tiles ≥ 16 (tl.dot's minimum), GROUP_M ≥ 1,
    warps in {1, 2, 4, 8, 16}, stages ≥ 1, and fp32 operand tiles × stages within the budget."""
    if not all(_pow2_at_least_16(cfg[key]) for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K")):
        return False
    if cfg["GROUP_M"] < 1 or cfg["num_warps"] not in (1, 2, 4, 8, 16) or cfg["num_stages"] < 1:
        return False
    smem = 4 * cfg["num_stages"] * cfg["BLOCK_K"] * (cfg["BLOCK_M"] + cfg["BLOCK_N"])
    return smem <= _SMEM_BUDGET


def precondition_configs() -> list[triton.Config]:
    """Legal tile configs of the GEMM kernel used by both preconditioning launchers."""
    space = itertools.product((32, 64, 128), (32, 64, 128), (32, 64), (8,), (4, 8), (2, 3, 4))
    cfgs = [dict(zip(_GEMM_KEYS, values, strict=True)) for values in space]
    return [
        triton.Config({k: c[k] for k in _GEMM_KEYS[:4]}, num_warps=c["num_warps"], num_stages=c["num_stages"])
        for c in cfgs
        if _keep_precondition(c)
    ]


def _keep_track_eigenvalues(cfg: Mapping[str, int]) -> bool:
    """Whether a reduction config is legal: power-of-two tiles ≥ 16, warps in {1, …, 16}."""
    return (
        _pow2_at_least_16(cfg["BLOCK_M"])
        and _pow2_at_least_16(cfg["BLOCK_N"])
        and cfg["BLOCK_M"] * cfg["BLOCK_N"] <= 16384
        and cfg["num_warps"] in (1, 2, 4, 8, 16)
        and cfg["num_stages"] >= 1
    )


def track_eigenvalues_configs() -> list[triton.Config]:
    """Legal tile configs of the eigenvalue-tracking reduction."""
    space = itertools.product((16, 32, 64, 128), (32, 64, 128), (2, 4, 8), (1, 2))
    cfgs = [dict(zip(_TRACK_KEYS, values, strict=True)) for values in space]
    tiles = ("BLOCK_M", "BLOCK_N")
    return [
        triton.Config({k: c[k] for k in tiles}, num_warps=c["num_warps"], num_stages=c["num_stages"])
        for c in cfgs
        if _keep_track_eigenvalues(c)
    ]


def _tile(dim: int, cap: int) -> int:
    """The smallest power of two ≥ dim, clamped to [16, cap]."""
    return max(16, min(cap, triton.next_power_of_2(max(dim, 1))))


def _gemm_heuristic(M: int, N: int, K: int) -> dict[str, int]:
    """Default GEMM tiles. Interpreter: tiles ≤ 32 (each program runs serially in numpy; small
    tiles waste little on masked edges of the small test shapes). GPU: 64 × 64 × 32, or 128 × 128
    for large outputs; untuned starting points (fp32 ieee operands)."""
    interp = triton_interpret()
    cap = 32 if interp else (128 if M >= 512 and N >= 512 else 64)
    tiles = {"BLOCK_M": _tile(M, cap), "BLOCK_N": _tile(N, cap), "BLOCK_K": _tile(K, 32), "GROUP_M": 8}
    return {**tiles, "num_warps": 8 if cap == 128 else 4, "num_stages": 1 if interp else 3}


def _resolve(
    config: Mapping[str, int] | triton.Config | None,
    default: dict[str, int],
    keys: tuple[str, ...],
    keep: Any,
) -> dict[str, int]:
    """Merge an explicit config (dict or ``triton.Config``) over the heuristic and validate it."""
    if config is None:
        return default
    if isinstance(config, triton.Config):
        config = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise ValueError(f"config has unknown keys {unknown}; allowed: {list(keys)}")
    merged = {**default, **config}
    if not keep(merged):
        raise ValueError(f"config is not a legal tile config: {merged}")
    return merged


def _launch_bmm(
    a: Tensor,
    b: Tensor,
    c: Tensor,
    cfg: dict[str, int],
    epilogue: int | tl.constexpr = 0,
    row: Tensor | None = None,
    col: Tensor | None = None,
    y: Tensor | None = None,
    shift: Tensor | None = None,
    eps: float = 0.0,
) -> None:
    """c[b] = epilogue(a[b] @ b[b]) for 3-D (possibly transposed-view) operands."""
    Bsz, M, K = a.shape
    N = b.shape[-1]
    if Bsz == 0 or M == 0 or N == 0:
        return
    ieee = not (a.dtype == b.dtype and a.dtype in (torch.float16, torch.bfloat16))
    # Unused epilogue operands get c as a dummy pointer (never dereferenced) and zero strides.
    row_t, col_t, y_t, shift_t = (t if t is not None else c for t in (row, col, y, shift))
    grid = (Bsz * triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _bmm_kernel[grid](
        a, b, c, row_t, col_t, y_t, shift_t, eps,
        M, N, K,
        *a.stride(), *b.stride(), *c.stride(),
        *(row.stride() if row is not None else (0, 0)),
        *(col.stride() if col is not None else (0, 0)),
        *(y.stride() if y is not None else (0, 0, 0)),
        shift.stride(0) if shift is not None else 0,
        EPILOGUE=int(getattr(epilogue, "value", epilogue)), IEEE_FP32=ieee,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------------------------


def _check_tensor(name: str, t: object, ndim: int, device: torch.device | None = None) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {tuple(t.shape)}")
    if t.dtype not in _SUPPORTED:
        raise ValueError(f"{name} must be float32, float16 or bfloat16; got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}; got {t.device}")
    return t


def _check_shape(name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}; got {list(t.shape)}")


def _check_out(out: Tensor | None, shape: tuple[int, ...], like: Tensor, name: str = "out") -> Tensor:
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    _check_tensor(name, out, len(shape), like.device)
    _check_shape(name, out, shape)
    return out


def _check_scalar(name: str, value: object, lo: float, hi: float = float("inf")) -> float:
    if isinstance(value, Tensor) or not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a Python float; got {type(value).__name__}")
    value = float(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}]; got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------


def eigenbasis_precondition_triton(
    M: Tensor,
    Q_A: Tensor,
    Q_B: Tensor,
    s_A: Tensor,
    s_B: Tensor,
    eps: float,
    *,
    out: Tensor | None = None,
    config: Mapping[str, int] | triton.Config | None = None,
) -> Tensor:
    """Computes ``reference.precondition.eigenbasis_precondition_ref``:

        U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ,  Σ_ij = σ_ij / (1 + ε σ_ij),  σ_ij = s_A[i] s_B[j].

    Differences from the reference: fp32 accumulation and fp32 intermediates whatever the input
    dtypes (operands may differ in dtype, e.g. fp16 M with fp32 bases); fp32 operands use
    ``input_precision="ieee"``; Σ is formed per output tile in the epilogue of the second GEMM and
    never stored; the result is cast to ``out``'s dtype (default M's dtype).

    Args:
        M: momentum blocks ``[B, m, n]``, any strides.
        Q_A: left bases ``[B, m, m]``; Q_B: right bases ``[B, n, n]``.
        s_A: left scales ``[B, m]``; s_B: right scales ``[B, n]``.
        eps: ε ≥ 0 of the Adam-style damping.
        out: optional ``[B, m, n]`` output; may be M itself (M is only read by the first GEMM).
        config: tile config (keys of :func:`precondition_configs`); None → heuristic.

    Returns:
        U ``[B, m, n]`` (``out`` if given).

    Raises:
        ValueError: on a wrong type, shape, dtype or device (naming the parameter), negative eps
            or an illegal config.
    """
    _check_tensor("M", M, 3)
    Bsz, m, n = M.shape
    for name, t, shape in (("Q_A", Q_A, (Bsz, m, m)), ("Q_B", Q_B, (Bsz, n, n)), ("s_A", s_A, (Bsz, m)),
                           ("s_B", s_B, (Bsz, n))):  # fmt: skip
        _check_tensor(name, t, len(shape), M.device)
        _check_shape(name, t, shape)
    eps = _check_scalar("eps", eps, 0.0)
    out = _check_out(out, (Bsz, m, n), M)
    cfg = _resolve(config, _gemm_heuristic(m, n, max(m, n)), _GEMM_KEYS, _keep_precondition)
    if out.numel() == 0:
        return out
    buf0 = torch.empty((Bsz, m, n), dtype=torch.float32, device=M.device)
    buf1 = torch.empty_like(buf0)
    _launch_bmm(Q_A.transpose(1, 2), M, buf0, cfg)  # T = Q_Aᵀ M
    _launch_bmm(buf0, Q_B, buf1, cfg, _EPI_SIGMA, row=s_A, col=s_B, eps=eps)  # R = (T Q_B) ⊙ Σ
    _launch_bmm(Q_A, buf1, buf0, cfg)  # T = Q_A R
    _launch_bmm(buf0, Q_B.transpose(1, 2), out, cfg)  # U = T Q_Bᵀ
    return out


def spike_and_flat_triton(
    U_k: Tensor,
    top_scales: Tensor,
    c: Tensor,
    Y: Tensor,
    *,
    out: Tensor | None = None,
    config: Mapping[str, int] | triton.Config | None = None,
) -> Tensor:
    """Computes ``reference.precondition.spike_and_flat_apply``:

        P Y = U_k (D_k − c I)(U_kᵀ Y) + c·Y.

    Differences from the reference: fp32 accumulation, an fp32 ``[B, k, n]`` intermediate,
    ``input_precision="ieee"`` for fp32 operands; the row scaling d_i − c is the epilogue of the
    first GEMM and the axpy c·Y the epilogue of the second; the result is cast to ``out``'s dtype
    (default Y's dtype). k = 0 gives c·Y.

    Args:
        U_k: top-k orthonormal eigenvectors ``[B, d, k]``.
        top_scales: D_k's diagonal ``[B, k]``.
        c: tail constants ``[B, 1]`` (or ``[B]``).
        Y: right-hand sides ``[B, d, n]``.
        out: optional ``[B, d, n]`` output; may be Y itself (each output element reads only its
            own Y element, after Y's first GEMM has finished).
        config: tile config (keys of :func:`precondition_configs`); None → heuristic.

    Returns:
        P Y ``[B, d, n]`` (``out`` if given).

    Raises:
        ValueError: on a wrong type, shape, dtype or device (naming the parameter) or an illegal
            config.
    """
    _check_tensor("Y", Y, 3)
    Bsz, d, n = Y.shape
    _check_tensor("U_k", U_k, 3, Y.device)
    if U_k.shape[:2] != (Bsz, d):
        raise ValueError(f"U_k must have shape [{Bsz}, {d}, k]; got {list(U_k.shape)}")
    k = U_k.shape[-1]
    _check_tensor("top_scales", top_scales, 2, Y.device)
    _check_shape("top_scales", top_scales, (Bsz, k))
    if isinstance(c, Tensor) and c.dim() == 1:
        c = c.unsqueeze(-1)
    _check_tensor("c", c, 2, Y.device)
    if c.shape != (Bsz, 1):
        raise ValueError(f"c must have shape [{Bsz}, 1] or [{Bsz}]; got {list(c.shape)}")
    c = c.reshape(Bsz)
    out = _check_out(out, (Bsz, d, n), Y)
    cfg = _resolve(config, _gemm_heuristic(max(d, k), n, max(d, k)), _GEMM_KEYS, _keep_precondition)
    if out.numel() == 0:
        return out
    coeff = torch.empty((Bsz, k, n), dtype=torch.float32, device=Y.device)
    _launch_bmm(U_k.transpose(1, 2), Y, coeff, cfg, _EPI_ROW_SHIFT, row=top_scales, shift=c)
    _launch_bmm(U_k, coeff, out, cfg, _EPI_AXPY, y=Y, shift=c)
    return out


def track_eigenvalues_triton(
    a: Tensor,
    b: Tensor,
    G_hat: Tensor,
    left_weight: Tensor | None,
    left_scale: Tensor | float,
    right_weight: Tensor | None,
    right_scale: Tensor | float,
    beta: float,
    *,
    out: tuple[Tensor, Tensor] | None = None,
    config: Mapping[str, int] | triton.Config | None = None,
) -> tuple[Tensor, Tensor]:
    """Computes ``divergences.track_eigenvalues`` with the ``Coupling`` fields passed separately:

        a_i ← β a_i + (1−β) s_A Σ_j Ĝ_ij² w_B,j ;   b_j ← β b_j + (1−β) s_B Σ_i Ĝ_ij² w_A,i.

    Differences from the reference: fp32 accumulation whatever the input dtypes; the squares,
    weights, scales and EMA are fused into one launch (Ĝ is read once for a and once for b);
    results are cast to the output dtypes (default those of a and b).

    Args:
        a: ``[B, m]``; b: ``[B, n]``; G_hat: Ĝ = Q_Aᵀ G Q_B ``[B, m, n]``.
        left_weight: w_B ``[B, n]``, or None for all ones.
        left_scale: s_A ``[B]`` (or a float).
        right_weight: w_A ``[B, m]``, or None for all ones.
        right_scale: s_B ``[B]`` (or a float).
        beta: retention β ∈ [0, 1].
        out: optional ``(a_new [B, m], b_new [B, n])``; may be ``(a, b)`` for an in-place update.
        config: ``BLOCK_M``, ``BLOCK_N``, ``num_warps``, ``num_stages``; None → heuristic.

    Returns:
        ``(a_new, b_new)``.

    Raises:
        ValueError: on a wrong type, shape, dtype or device (naming the parameter), β outside
            [0, 1] or an illegal config.
    """
    _check_tensor("G_hat", G_hat, 3)
    Bsz, m, n = G_hat.shape
    dev = G_hat.device
    for name, t, shape in (("a", a, (Bsz, m)), ("b", b, (Bsz, n))):
        _check_tensor(name, t, 2, dev)
        _check_shape(name, t, shape)
    for name, t, shape in (("left_weight", left_weight, (Bsz, n)), ("right_weight", right_weight, (Bsz, m))):
        if t is not None:
            _check_tensor(name, t, 2, dev)
            _check_shape(name, t, shape)
    scales = []
    for name, s in (("left_scale", left_scale), ("right_scale", right_scale)):
        if not isinstance(s, Tensor):
            s = torch.full((Bsz,), _check_scalar(name, s, -float("inf")), dtype=torch.float32, device=dev)
        _check_tensor(name, s, 1, dev)
        _check_shape(name, s, (Bsz,))
        scales.append(s)
    beta = _check_scalar("beta", beta, 0.0, 1.0)
    if out is None:
        out = (torch.empty_like(a), torch.empty_like(b))
    elif not isinstance(out, tuple) or len(out) != 2:
        raise ValueError("out must be a tuple (a_new, b_new)")
    a_out = _check_out(out[0], (Bsz, m), a, "out[0]")
    b_out = _check_out(out[1], (Bsz, n), b, "out[1]")
    interp = triton_interpret()
    default = {"BLOCK_M": _tile(m, 32 if interp else 64), "BLOCK_N": _tile(n, 32 if interp else 128),
               "num_warps": 4, "num_stages": 1}  # fmt: skip
    cfg = _resolve(config, default, _TRACK_KEYS, _keep_track_eigenvalues)
    if Bsz == 0 or (m == 0 and n == 0):
        return a_out, b_out
    wl = left_weight if left_weight is not None else a_out
    wr = right_weight if right_weight is not None else a_out
    grid = (Bsz * (triton.cdiv(m, cfg["BLOCK_M"]) + triton.cdiv(n, cfg["BLOCK_N"])),)
    _track_eigenvalues_kernel[grid](
        a, b, G_hat, wl, scales[0], wr, scales[1], a_out, b_out, beta,
        m, n,
        *a.stride(), *b.stride(), *G_hat.stride(),
        *(left_weight.stride() if left_weight is not None else (0, 0)), scales[0].stride(0),
        *(right_weight.stride() if right_weight is not None else (0, 0)), scales[1].stride(0),
        *a_out.stride(), *b_out.stride(),
        HAS_WL=left_weight is not None, HAS_WR=right_weight is not None,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return a_out, b_out
