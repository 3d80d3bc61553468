"""Eigenbasis preconditioning and spike-and-flat application (README, "What is derived and what is reconstructed").

Triton twins of :mod:`tritonkron.ops.precondition.reference`. Both launchers are chains of the batched
GEMM of :mod:`tritonkron.ops._triton.bmm` (fp32 accumulation, fused epilogues, transposed operands as
swapped strides):

``eigenbasis_precondition_triton``
    U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ,  Σ_ij = σ_ij / (1 + ε σ_ij),  σ_ij = s_A[i] s_B[j].
    Four batched GEMMs through fp32 scratch buffers::

        T = Q_Aᵀ M          # [B, m, n]
        R = (T Q_B) ⊙ Σ     # Σ built per output tile from s_A, s_B in the epilogue
        T = Q_A R
        U = T Q_Bᵀ          # cast to out's dtype at the store

``spike_and_flat_triton``
    P Y = U_k (D_k − c I)(U_kᵀ Y) + c·Y as two thin GEMMs::

        C = (D_k − c I) (U_kᵀ Y)   # [B, k, n], row scaling d_i − c fused in the epilogue
        P Y = U_k C + c·Y          # the axpy with Y fused in the epilogue

Every GEMM runs under the precision policy (``precision``: IEEE products by default, TF32 or bf16
operands with fp32 accumulation; :mod:`tritonkron.ops.precision`). Eigenvalue tracking, the third
step of the eigenbasis update, is in :mod:`tritonkron.ops.track_eigenvalues.triton`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import triton
from torch import Tensor

from tritonkron.ops._triton.bmm import Epilogue, bmm_config, bmm_configs, launch_bmm
from tritonkron.ops._triton.common import check_range, check_sized, check_tensor, out_or_empty
from tritonkron.ops.precision import check_precision

__all__ = ["eigenbasis_precondition_triton", "precondition_configs", "spike_and_flat_triton"]


def precondition_configs() -> list[triton.Config]:
    """Legal tile configs of both launchers: those of the batched GEMM they chain (``bmm_configs``)."""
    return bmm_configs()


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
    precision: str = "ieee",
) -> Tensor:
    """Computes ``reference.precondition.eigenbasis_precondition_ref``:

        U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ,  Σ_ij = σ_ij / (1 + ε σ_ij),  σ_ij = s_A[i] s_B[j].

    Differences from the reference: fp32 accumulation and fp32 intermediates whatever the input
    dtypes (operands may differ in dtype, e.g. fp16 M with fp32 bases); fp32 operands are
    multiplied under ``precision`` (IEEE by default); Σ is formed per output tile in the epilogue of the second GEMM and
    never stored; the result is cast to ``out``'s dtype (default M's dtype).

    Args:
        M: momentum blocks ``[B, m, n]``, any strides.
        Q_A: left bases ``[B, m, m]``; Q_B: right bases ``[B, n, n]``.
        s_A: left scales ``[B, m]``; s_B: right scales ``[B, n]``.
        eps: ε ≥ 0 of the Adam-style damping.
        out: optional ``[B, m, n]`` output; may be M itself (M is only read by the first GEMM).
        config: tile config (keys of :func:`precondition_configs`); None → heuristic.
        precision: the products' policy ("ieee", "tf32", "bf16").

    Returns:
        U ``[B, m, n]`` (``out`` if given).

    Raises:
        ValueError: on a wrong type, shape, dtype or device (naming the parameter), negative eps,
            an illegal config or an unknown precision.
    """
    precision = check_precision(precision)
    check_tensor("M", M, 3)
    Bsz, m, n = M.shape
    for name, t, shape in (("Q_A", Q_A, (Bsz, m, m)), ("Q_B", Q_B, (Bsz, n, n)), ("s_A", s_A, (Bsz, m)),
                           ("s_B", s_B, (Bsz, n))):  # fmt: skip
        check_sized(name, t, shape, device=M.device)
    eps = check_range("eps", eps, 0.0)
    out = out_or_empty(out, (Bsz, m, n), M)
    cfg = bmm_config(config, m, n, max(m, n))
    if out.numel() == 0:
        return out
    buf0 = torch.empty((Bsz, m, n), dtype=torch.float32, device=M.device)
    buf1 = torch.empty_like(buf0)
    p = precision
    launch_bmm(Q_A.transpose(1, 2), M, buf0, cfg, precision=p)  # T = Q_Aᵀ M
    sigma = {"epilogue": Epilogue.SIGMA, "row": s_A, "col": s_B, "eps": eps}
    launch_bmm(buf0, Q_B, buf1, cfg, **sigma, precision=p)  # R = (T Q_B) ⊙ Σ
    launch_bmm(Q_A, buf1, buf0, cfg, precision=p)  # T = Q_A R
    launch_bmm(buf0, Q_B.transpose(1, 2), out, cfg, precision=p)  # U = T Q_Bᵀ
    return out


def spike_and_flat_triton(
    U_k: Tensor,
    top_scales: Tensor,
    c: Tensor,
    Y: Tensor,
    *,
    out: Tensor | None = None,
    config: Mapping[str, int] | triton.Config | None = None,
    precision: str = "ieee",
) -> Tensor:
    """Computes ``reference.precondition.spike_and_flat_apply``:

        P Y = U_k (D_k − c I)(U_kᵀ Y) + c·Y.

    Differences from the reference: fp32 accumulation, an fp32 ``[B, k, n]`` intermediate,
    fp32 operands multiplied under ``precision`` (IEEE by default); the row scaling d_i − c is the epilogue of the
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
        precision: the products' policy ("ieee", "tf32", "bf16").

    Returns:
        P Y ``[B, d, n]`` (``out`` if given).

    Raises:
        ValueError: on a wrong type, shape, dtype or device (naming the parameter), an illegal
            config or an unknown precision.
    """
    precision = check_precision(precision)
    check_tensor("Y", Y, 3)
    Bsz, d, n = Y.shape
    check_sized("U_k", U_k, (Bsz, d, "k"), device=Y.device)
    k = U_k.shape[-1]
    check_sized("top_scales", top_scales, (Bsz, k), device=Y.device)
    if isinstance(c, Tensor) and c.dim() == 1:
        c = c.unsqueeze(-1)
    check_tensor("c", c, 2, device=Y.device)
    if c.shape != (Bsz, 1):
        raise ValueError(f"c must have shape [{Bsz}, 1] or [{Bsz}]; got {list(c.shape)}")
    c = c.reshape(Bsz)
    out = out_or_empty(out, (Bsz, d, n), Y)
    cfg = bmm_config(config, max(d, k), n, max(d, k))
    if out.numel() == 0:
        return out
    coeff = torch.empty((Bsz, k, n), dtype=torch.float32, device=Y.device)
    launch_bmm(U_k.transpose(1, 2), Y, coeff, cfg, epilogue=Epilogue.ROW_SHIFT, row=top_scales, shift=c,
               precision=precision)  # fmt: skip
    launch_bmm(U_k, coeff, out, cfg, epilogue=Epilogue.AXPY, y=Y, shift=c, precision=precision)
    return out
