"""Factor EMAs and the rotated gradient from shared products (Triton twin of
:func:`tritonkron.ops.rotated_statistics.reference.rotated_statistics_ref`).

With P = G Q_B and R = Q_Aᵀ G (``[B, m, n]``, fp32 scratch; fp64 for fp64 factors)::

    A' = β A + s_A · P diag(w_B) Pᵀ        (symmetric kernel, C = A, per-column scaling w_B)
    B' = β B + s_B · Rᵀ diag(w_A) R        (symmetric kernel on the [B, n, m] view Rᵀ)
    Ĝ  = R Q_B  (m ≥ n)   or   Q_Aᵀ P  (m < n)

so the three results cost 2mn(m + n) + mn·min(m, n) multiply-adds, against 3mn(m + n) for two
:func:`~tritonkron.ops.factor_update.triton.factor_update_triton` calls plus a rotation (each of
which forms its own basis product). A weight None means W = I (von Neumann): Q_B Q_Bᵀ = I, so
that factor's Gram matrix reads G itself and its basis product is only formed when Ĝ needs it.

The GEMMs are the shared kernels of :mod:`tritonkron.ops._triton.bmm` and
:mod:`tritonkron.ops._triton.sym_gemm`, so the differences from the reference are theirs: fp32
accumulation (fp64 for fp64 factors), the products under the precision policy (``precision``:
IEEE by default, TF32 or bf16 operands; :mod:`tritonkron.ops.precision`), upper tiles mirrored
(bitwise symmetric A', B'; the β-term reads the upper triangle of A and B), and Ĝ cast to G's
dtype at the store.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.ops._triton.bmm import bmm_config, launch_bmm
from tritonkron.ops._triton.common import check_per_block, check_sized, check_tensor
from tritonkron.ops._triton.sym_gemm import launch_sym_gemm
from tritonkron.ops.factor_update.triton import factor_update_config
from tritonkron.ops.precision import check_precision

__all__ = ["rotated_statistics_triton"]

_FLOATS = (torch.float32, torch.float64)


def rotated_statistics_triton(
    A: Tensor,
    B: Tensor,
    G: Tensor,
    Q_A: Tensor,
    Q_B: Tensor,
    w_A: Tensor | None,
    s_A: Tensor,
    w_B: Tensor | None,
    s_B: Tensor,
    beta: float,
    *,
    precision: str = "ieee",
) -> tuple[Tensor, Tensor, Tensor]:
    """Computes ``rotated_statistics_ref``: (A', B', Ĝ) with

        A' = β A + s_A·G Q_B diag(w_B) Q_Bᵀ Gᵀ,  B' = β B + s_B·Gᵀ Q_A diag(w_A) Q_Aᵀ G,  Ĝ = Q_Aᵀ G Q_B.

    Args:
        A: ``[B, m, m]`` and B: ``[B, n, n]`` symmetric factors, float32 or float64 (same dtype).
        G: gradient blocks ``[B, m, n]`` of the factors' dtype.
        Q_A: ``[B, m, m]``, Q_B: ``[B, n, n]`` orthonormal bases (the weights refer to them).
        w_A: ``[B, m]`` or None (W = I); s_A: ``[B]``; w_B: ``[B, n]`` or None; s_B: ``[B]``.
        beta: retention β (the scales include 1 − β).
        precision: the products' policy ("ieee", "tf32", "bf16"; ignored for float64 factors).

    Returns:
        (A', B', Ĝ), new tensors; A', B' exactly symmetric.

    Raises:
        ValueError: naming the parameter, on a wrong type, shape, dtype or device, or an unknown
            precision.
    """
    precision = check_precision(precision)
    dev = check_tensor("G", G, 3, _FLOATS).device
    Bsz, m, n = G.shape
    for name, t, shape in (("A", A, (Bsz, m, m)), ("B", B, (Bsz, n, n)), ("Q_A", Q_A, (Bsz, m, m)),
                           ("Q_B", Q_B, (Bsz, n, n))):  # fmt: skip
        check_sized(name, t, shape, (G.dtype,), dev)
    for name, w, shape in (("w_A", w_A, (Bsz, m)), ("w_B", w_B, (Bsz, n))):
        if w is not None:
            check_sized(name, w, shape, _FLOATS, dev)
    alpha_A = check_per_block("s_A", s_A, Bsz, _FLOATS, dev)
    alpha_B = check_per_block("s_B", s_B, Bsz, _FLOATS, dev)
    A_new, B_new, G_hat = torch.empty_like(A), torch.empty_like(B), torch.empty_like(G)
    if G.numel() == 0:
        return A_new, B_new, G_hat
    Q_At = Q_A.transpose(1, 2)
    need_P = w_B is not None or m < n
    need_R = w_A is not None or m >= n
    P = R = None
    if need_P:
        P = torch.empty((Bsz, m, n), dtype=A.dtype, device=dev)
        launch_bmm(G, Q_B, P, bmm_config(None, m, n, n), precision=precision)
    if need_R:
        R = torch.empty((Bsz, m, n), dtype=A.dtype, device=dev)
        launch_bmm(Q_At, G, R, bmm_config(None, m, n, m), precision=precision)
    if R is not None and (m >= n or P is None):
        launch_bmm(R, Q_B, G_hat, bmm_config(None, m, n, n), precision=precision)
    else:
        launch_bmm(Q_At, P, G_hat, bmm_config(None, m, n, m), precision=precision)
    left = G if w_B is None else P
    launch_sym_gemm(left, left.transpose(1, 2), A_new, factor_update_config(None, m, n, A.dtype),
                    w=w_B, c=A, alpha=alpha_A, beta=float(beta), precision=precision)  # fmt: skip
    right = G if w_A is None else R
    launch_sym_gemm(right.transpose(1, 2), right, B_new, factor_update_config(None, n, m, B.dtype),
                    w=w_A, c=B, alpha=alpha_B, beta=float(beta), precision=precision)  # fmt: skip
    return A_new, B_new, G_hat
