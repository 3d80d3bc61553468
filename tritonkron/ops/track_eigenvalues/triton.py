"""Eigenvalue tracking in a fixed eigenbasis, the Triton twin of
:func:`tritonkron.ops.track_eigenvalues.reference.track_eigenvalues_ref`::

    a_i ← β a_i + (1−β) s_A Σ_j Ĝ_ij² w_B,j        a: [B, m]
    b_j ← β b_j + (1−β) s_B Σ_i Ĝ_ij² w_A,i        b: [B, n],   Ĝ = Q_Aᵀ G Q_B: [B, m, n]

Both updates run in one launch of a reduction kernel: for each batch element, one program per
BLOCK_M rows of Ĝ sweeps its rows (in BLOCK_N-wide chunks) for a, and one program per BLOCK_N
columns sweeps its columns for b. Ĝ is read twice, with no atomics, so the result is
deterministic; squares, weights, scales and the EMA are fused, with fp32 accumulation.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritonkron.ops._triton.common import (
    check_range,
    check_sized,
    check_tensor,
    is_pow2_tile,
    legal_configs,
    out_or_empty,
    resolve_config,
    tile_size,
)
from tritonkron.ops.kernel_guard import kernel_failure

__all__ = ["track_eigenvalues_configs", "track_eigenvalues_triton"]

_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")


@triton.jit
def _row_sums_ema(
    a_ptr, g_base, w_ptr, s_ptr, out_ptr, beta, pid_b, pid_r, M, N,
    stride_ab, stride_am, stride_gm, stride_gn, stride_wb, stride_wn, stride_sb, stride_ob, stride_om,
    HAS_W: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """a_i ← β a_i + (1−β) s_A Σ_j Ĝ_ij² w_B,j for the BLOCK_M rows of tile ``pid_r``.

    Every value lives inside this function, so the caller's runtime branch joins no tile-shaped
    variables (BLOCK_M and BLOCK_N may differ on a GPU).
    """
    offs_m = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for j in range(0, tl.cdiv(N, BLOCK_N)):
        offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        g_ptrs = g_base + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn
        g = tl.load(g_ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        sq = g * g
        if HAS_W:
            w = tl.load(w_ptr + pid_b * stride_wb + offs_n * stride_wn, mask=mask_n, other=0.0)
            sq = sq * w.to(tl.float32)[None, :]
        acc += tl.sum(sq, axis=1)
    scale = tl.load(s_ptr + pid_b * stride_sb).to(tl.float32)
    x = tl.load(a_ptr + pid_b * stride_ab + offs_m * stride_am, mask=mask_m, other=0.0).to(tl.float32)
    x = beta * x + (1.0 - beta) * (acc * scale)
    tl.store(out_ptr + pid_b * stride_ob + offs_m * stride_om, x.to(out_ptr.dtype.element_ty), mask=mask_m)


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
    remaining cdiv(N, BLOCK_N) programs reduce columns into b. Masked entries load as 0.

    The column reduction is the row reduction of Ĝᵀ: the same helper with M ↔ N, the row and
    column strides swapped and BLOCK_N-wide output tiles.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid = num_pid_m + tl.cdiv(N, BLOCK_N)
    pid_b = (pid // num_pid).to(tl.int64)
    pid_r = pid % num_pid
    g_base = g_ptr + pid_b * stride_gb
    if pid_r < num_pid_m:
        _row_sums_ema(
            a_ptr, g_base, wl_ptr, sl_ptr, a_out_ptr, beta, pid_b, pid_r, M, N,
            stride_ab, stride_am, stride_gm, stride_gn, stride_wlb, stride_wln, stride_slb, stride_aob,
            stride_aom, HAS_WL, BLOCK_M, BLOCK_N,
        )  # fmt: skip
    else:
        _row_sums_ema(
            b_ptr, g_base, wr_ptr, sr_ptr, b_out_ptr, beta, pid_b, pid_r - num_pid_m, N, M,
            stride_bb, stride_bn, stride_gn, stride_gm, stride_wrb, stride_wrm, stride_srb, stride_bob,
            stride_bon, HAS_WR, BLOCK_N, BLOCK_M,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Configs: the legal space (for autotune/); the heuristic is in the launcher.
# ---------------------------------------------------------------------------------------------


def _keep_track_eigenvalues(cfg: Mapping[str, int]) -> bool:
    """Whether a reduction config is legal: power-of-two tiles ≥ 16, warps in {1, …, 16}."""
    return (
        is_pow2_tile(cfg["BLOCK_M"])
        and is_pow2_tile(cfg["BLOCK_N"])
        and cfg["BLOCK_M"] * cfg["BLOCK_N"] <= 16384
        and cfg["num_warps"] in (1, 2, 4, 8, 16)
        and cfg["num_stages"] >= 1
    )


def track_eigenvalues_configs() -> list[triton.Config]:
    """Legal tile configs of the eigenvalue-tracking reduction."""
    return legal_configs(
        _KEYS, ((16, 32, 64, 128), (32, 64, 128), (2, 4, 8), (1, 2)), _keep_track_eigenvalues
    )


def _check_operands(
    a: Tensor, b: Tensor, G_hat: Tensor, left_weight: Tensor | None, right_weight: Tensor | None
) -> None:
    """Checks Ĝ ``[B, m, n]``, a ``[B, m]``, b ``[B, n]`` and the optional weights (w_B ``[B, n]``,
    w_A ``[B, m]``), all on Ĝ's device."""
    check_tensor("G_hat", G_hat, 3)
    Bsz, m, n = G_hat.shape
    dev = G_hat.device
    for name, t, shape in (("a", a, (Bsz, m)), ("b", b, (Bsz, n))):
        check_sized(name, t, shape, device=dev)
    for name, t, shape in (("left_weight", left_weight, (Bsz, n)), ("right_weight", right_weight, (Bsz, m))):
        if t is not None:
            check_sized(name, t, shape, device=dev)


def _check_scales(
    left_scale: Tensor | float, right_scale: Tensor | float, Bsz: int, dev: torch.device
) -> tuple[Tensor, Tensor]:
    """(s_A, s_B) as ``[B]`` tensors: checked tensors, or fp32 tensors filled with a checked float."""
    scales = []
    for name, s in (("left_scale", left_scale), ("right_scale", right_scale)):
        if not isinstance(s, Tensor):
            s = torch.full((Bsz,), check_range(name, s, -float("inf")), dtype=torch.float32, device=dev)
        scales.append(check_sized(name, s, (Bsz,), device=dev))
    return scales[0], scales[1]


def _check_outputs(out: object, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(a_new, b_new)``: the checked ``out`` pair, or new tensors like a and b when None."""
    Bsz, m = a.shape
    n = b.shape[1]
    if out is None:
        out = (torch.empty_like(a), torch.empty_like(b))
    elif not isinstance(out, tuple) or len(out) != 2:
        raise ValueError("out must be a tuple (a_new, b_new)")
    a_out = out_or_empty(out[0], (Bsz, m), a, "out[0]")
    b_out = out_or_empty(out[1], (Bsz, n), b, "out[1]")
    return a_out, b_out


def _launch_track(
    a: Tensor,
    b: Tensor,
    G_hat: Tensor,
    left_weight: Tensor | None,
    right_weight: Tensor | None,
    scales: tuple[Tensor, Tensor],
    beta: float,
    a_out: Tensor,
    b_out: Tensor,
    cfg: dict[str, int],
) -> None:
    """One launch of :func:`_track_eigenvalues_kernel` (a missing weight passes a dummy pointer and
    zero strides); a launch failure is raised as :func:`kernel_failure`."""
    Bsz, m, n = G_hat.shape
    wl = left_weight if left_weight is not None else a_out
    wr = right_weight if right_weight is not None else a_out
    grid = (Bsz * (triton.cdiv(m, cfg["BLOCK_M"]) + triton.cdiv(n, cfg["BLOCK_N"])),)
    try:
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
    except Exception as exc:
        raise kernel_failure("_track_eigenvalues_kernel", cfg, exc) from exc


# ---------------------------------------------------------------------------------------------
# Launcher.
# ---------------------------------------------------------------------------------------------


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
    _check_operands(a, b, G_hat, left_weight, right_weight)
    Bsz, m, n = G_hat.shape
    scales = _check_scales(left_scale, right_scale, Bsz, G_hat.device)
    beta = check_range("beta", beta, 0.0, 1.0)
    a_out, b_out = _check_outputs(out, a, b)
    # The interpreter runs the GPU's tiles (BLOCK_M and BLOCK_N differ once m, n > 64).
    default = {"BLOCK_M": tile_size(m, 64), "BLOCK_N": tile_size(n, 128),
               "num_warps": 4, "num_stages": 1}  # fmt: skip
    cfg = resolve_config(config, default, _KEYS, _keep_track_eigenvalues)
    if Bsz == 0 or (m == 0 and n == 0):
        return a_out, b_out
    _launch_track(a, b, G_hat, left_weight, right_weight, scales, beta, a_out, b_out, cfg)
    return a_out, b_out
