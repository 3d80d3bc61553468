"""Blocked symmetric factor update, the Triton twin of :mod:`tritonkron.ops.factor_update.reference`.

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

Both GEMMs are shared kernels: the symmetric one of :mod:`tritonkron.ops._triton.sym_gemm` (with
C = X, α = s and the eigen-form weights w) and, for the weighted forms, the batched GEMM of
:mod:`tritonkron.ops._triton.bmm`, which forms the thin product P into an fp32 (fp64 for fp64 X)
``[B, d, k]`` buffer that the symmetric kernel then reads. The eigen-form keeps w as an explicit
per-column scaling of A inside the symmetric kernel rather than scaling P by √w: that is valid
for every sign of w (the Frobenius coupling has w = b ≥ 0 and LogDet w = 1/b > 0, but nothing
else enforces it), costs one multiply per loaded element, and reproduces the reference's
(𝒢Q) diag(w) (𝒢Q)ᵀ without a square-root rounding. Dense W is not assumed definite (no square
root): the symmetric kernel computes the upper tiles of P 𝒢ᵀ, and the GEMM symmetrises W on the
fly (``sym_b``: it loads W and Wᵀ), which is what the reference's final ½(out + outᵀ) computes
for a non-symmetric W.

Differences from the reference (only these):

- fp32 accumulation (fp64 when X is float64) whatever G's dtype; fp16/bf16 G with W = I uses the
  tensor-core ``tl.dot`` (exact products, fp32 sums), every other dot converts its operands to
  the accumulator dtype and multiplies them under the precision policy (``precision``: IEEE
  products by default, TF32 or bf16 operands; always IEEE for float64 X,
  :mod:`tritonkron.ops.precision`).
- Only the upper triangle is computed and it is mirrored, instead of averaging with the
  transpose; the β·X term uses X's upper triangle only (identical for a symmetric X).
- The eigen-form and dense weights are converted to the accumulator dtype.
- ``out`` may be X itself (in-place update): each upper element of X is read by exactly one
  program, the one that writes it and its mirror, before it writes; lower elements are never
  read. Any other overlap between ``out`` and an input is rejected.

Dtypes: X and ``out`` float32 with G in {float32, float16, bfloat16} (bfloat16 needs a GPU: the
interpreter has no bf16 arithmetic), or X and ``out`` float64 with G of any of these four
(converted exactly). Weights may be any of the four float dtypes.

The upper-tile enumeration is column by column (j outer, i ≤ j inner), so consecutive programs
share the C operand's j rows; the thin GEMM runs without GROUP_M swizzling (GROUP_M = 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import triton
from torch import Tensor

from tritonkron.ops._triton.bmm import launch_bmm
from tritonkron.ops._triton.common import (
    SMEM_BUDGET,
    check_float,
    check_per_block,
    check_sized,
    check_tensor,
    is_pow2_tile,
    legal_configs,
    may_overlap,
    resolve_config,
    tile_size,
)
from tritonkron.ops._triton.sym_gemm import launch_sym_gemm
from tritonkron.ops.precision import check_precision

__all__ = ["factor_update_config", "factor_update_configs", "factor_update_triton"]

Side = Literal["left", "right"]
Weight = Tensor | tuple[Tensor, Tensor] | None

_G_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_X_DTYPES = (torch.float32, torch.float64)
_KEYS = ("BLOCK_M", "BLOCK_K", "num_warps", "num_stages")


# ---------------------------------------------------------------------------------------------
# Configs: the legal space (for autotune/) and the default heuristic.
# ---------------------------------------------------------------------------------------------


def _keep_factor_update(config: Mapping[str, int]) -> bool:
    """Whether a config is legal for both GEMMs of the update (the symmetric one and the thin one).

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
    return legal_configs(
        _KEYS, ((16, 32, 64, 128), (16, 32, 64), (2, 4, 8), (1, 2, 3, 4)), _keep_factor_update
    )


def _heuristic(d: int, k: int, acc_dtype: torch.dtype) -> dict[str, int]:
    """Default config.

    Untuned starting points (fp32 ieee operands): 64 × 64 output tiles with 4 warps, or 128 × 128
    with 8 warps once d ≥ 1024 (fp32 only: fp64 keeps 64 for shared memory); BLOCK_K 32; 3 stages.
    The interpreter runs the same tiles as a GPU, so its tests check the variants a GPU launches.
    (Tests that need several tiles pass a config.)
    """
    big = d >= 1024 and acc_dtype == torch.float32
    return {
        "BLOCK_M": tile_size(d, 128 if big else 64),
        "BLOCK_K": tile_size(k, 32),
        "num_warps": 8 if big else 4,
        "num_stages": 3,
    }


def factor_update_config(
    config: Mapping[str, int] | triton.Config | None, d: int, k: int, acc_dtype: torch.dtype
) -> dict[str, int]:
    """An explicit config (``BLOCK_M``, ``BLOCK_K``, ``num_warps``, ``num_stages``) merged over the
    heuristic of a d × d update with inner size k, or the heuristic when ``config`` is None.

    Raises:
        ValueError: unknown keys or an illegal merged config.
    """
    return resolve_config(config, _heuristic(d, k, acc_dtype), _KEYS, _keep_factor_update, "factor-update")


def _thin_gemm_config(cfg: Mapping[str, int]) -> dict[str, int]:
    """The batched-GEMM config of the thin product P: BLOCK_M × BLOCK_K output tiles, BLOCK_K deep."""
    return {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_K"], "BLOCK_K": cfg["BLOCK_K"], "GROUP_M": 1,
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------------------------


def _check_out(out: Tensor | None, X: Tensor, inputs: dict[str, Tensor]) -> Tensor:
    """``out`` checked (X's dtype and shape, no zero strides, X itself or no overlap with X or any of
    ``inputs``), or a new tensor like X when None."""
    if out is None:
        return torch.empty(X.shape, dtype=X.dtype, device=X.device)
    check_sized("out", out, tuple(X.shape), (X.dtype,), X.device)
    if any(stride == 0 and size > 1 for size, stride in zip(out.shape, out.stride(), strict=True)):
        raise ValueError("out must not have zero strides (expanded views would be written concurrently)")
    if may_overlap(out, X) and (out.data_ptr() != X.data_ptr() or out.stride() != X.stride()):
        raise ValueError("out may be X itself (in-place update) but must not partially overlap it")
    for name, t in inputs.items():
        if may_overlap(out, t):
            raise ValueError(f"out must not share memory with {name}")
    return out


def _check_scale(scale: Tensor | float, Bsz: int, G: Tensor, inputs: dict[str, Tensor]) -> Tensor | float:
    """The scale s as the symmetric kernel's α: a ``[B]`` view of a tensor scale (recorded in
    ``inputs``) or a checked Python float."""
    if isinstance(scale, Tensor):
        inputs["scale"] = scale
        return check_per_block("scale", scale, Bsz, _G_DTYPES, G.device, "a float or a tensor")
    return check_float("scale", scale)


def _check_weight(
    weight: Weight, Bsz: int, k: int, G: Tensor, inputs: dict[str, Tensor]
) -> tuple[Tensor | None, Tensor | None]:
    """``(Q, w)`` of the weight: ``(None, None)`` for W = I, ``(W, None)`` for a dense W and
    ``(Q, w)`` for the eigen form; every weight tensor is recorded in ``inputs``."""
    if weight is None:
        return None, None
    if isinstance(weight, Tensor):
        Q = check_sized("weight", weight, (Bsz, k, k), _G_DTYPES, G.device)
        inputs["weight"] = Q
        return Q, None
    if isinstance(weight, tuple) and len(weight) == 2:
        Q = check_sized("weight[0] (Q)", weight[0], (Bsz, k, k), _G_DTYPES, G.device)
        w = check_sized("weight[1] (w)", weight[1], (Bsz, k), _G_DTYPES, G.device)
        inputs |= {"weight[0] (Q)": Q, "weight[1] (w)": w}
        return Q, w
    raise ValueError(
        f"weight must be None, a [B, k, k] tensor or a (Q, w) tuple; got {type(weight).__name__}"
    )


def _launch_update(
    X: Tensor,
    G: Tensor,
    beta: float,
    alpha: Tensor | float,
    side: Side,
    Q: Tensor | None,
    w: Tensor | None,
    dense: bool,
    out: Tensor,
    cfg: dict[str, int],
    precision: str,
) -> None:
    """The thin GEMM P (weighted forms only), then the symmetric GEMM into ``out``, both under
    the precision policy."""
    Bsz, d, _ = out.shape
    k = G.shape[2] if side == "left" else G.shape[1]
    # Operands: 𝒢 = G or Gᵀ ([B, d, k], a strided view), then A, C as in the module docstring.
    g_op = G if side == "left" else G.transpose(1, 2)
    if Q is None:
        a_op = c_op = g_op
    else:
        a_op = torch.empty((Bsz, d, k), dtype=X.dtype, device=X.device)  # P = 𝒢 Q or 𝒢 ½(W + Wᵀ)
        launch_bmm(g_op, Q, a_op, _thin_gemm_config(cfg), sym_b=dense, precision=precision)
        c_op = g_op if dense else a_op
    launch_sym_gemm(
        a_op, c_op.transpose(1, 2), out, cfg, w=w, c=X, alpha=alpha, beta=beta, precision=precision
    )


# ---------------------------------------------------------------------------------------------
# Launchers.
# ---------------------------------------------------------------------------------------------


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
    precision: str = "ieee",
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
        precision: the products' policy ("ieee", "tf32", "bf16"; ignored for float64 X).

    Returns:
        X_out ``[B, d, d]`` (``out`` if given), exactly symmetric.

    Raises:
        ValueError: naming the parameter, on a bad side, type, shape, dtype or device, an ``out``
            that partially overlaps X or shares memory with another input, an illegal config or
            an unknown precision.
    """
    precision = check_precision(precision)
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right'; got {side!r}")
    check_tensor("G", G, 3, _G_DTYPES)
    Bsz, m, n = G.shape
    d, k = (m, n) if side == "left" else (n, m)
    check_sized("X", X, (Bsz, d, d), _X_DTYPES, G.device)
    if G.dtype == torch.float64 and X.dtype != torch.float64:
        raise ValueError("G is float64 but X is float32: use a float64 X (or a float32 G)")
    beta = check_float("beta", beta)
    inputs = {"G": G}
    alpha = _check_scale(scale, Bsz, G, inputs)
    Q, w = _check_weight(weight, Bsz, k, G, inputs)
    out = _check_out(out, X, inputs)
    cfg = factor_update_config(config, d, k, X.dtype)
    if out.numel() == 0:
        return out
    _launch_update(X, G, beta, alpha, side, Q, w, isinstance(weight, Tensor), out, cfg, precision)
    return out
