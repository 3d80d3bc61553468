"""Two-sided rotation into or out of an eigenbasis (Triton twin of :mod:`tritonkron.ops.rotation.reference`).

Both are two chained batched GEMMs of :mod:`tritonkron.ops._triton.bmm` through one fp32 scratch
buffer (transposed operands as swapped strides, no copies)::

    rotate:       T = Q_Aᵀ X     X̂ = T Q_B        # [B, m, n]
    rotate_back:  T = Q_A X̂     X = T Q_Bᵀ

The result is cast to ``out``'s dtype (default X's) at the store. Both products run under the
precision policy (``precision``, :mod:`tritonkron.ops.precision`; IEEE by default).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import triton
from torch import Tensor

from tritonkron.ops._triton.bmm import bmm_config, launch_bmm
from tritonkron.ops._triton.common import check_sized, check_tensor, out_or_empty
from tritonkron.ops.precision import check_precision

__all__ = ["rotate_triton"]


def rotate_triton(
    X: Tensor,
    Q_A: Tensor,
    Q_B: Tensor,
    *,
    back: bool = False,
    out: Tensor | None = None,
    config: Mapping[str, int] | triton.Config | None = None,
    precision: str = "ieee",
) -> Tensor:
    """Computes ``reference.rotation.rotate_ref`` (X̂ = Q_Aᵀ X Q_B) or, with ``back``,
    ``rotate_back_ref`` (X = Q_A X̂ Q_Bᵀ), ``[B, m, n]``, under the precision policy.

    Raises:
        ValueError: on a wrong type, shape, dtype or device (naming the parameter), an illegal
            config or an unknown precision.
    """
    precision = check_precision(precision)
    check_tensor("X", X, 3)
    Bsz, m, n = X.shape
    check_sized("Q_A", Q_A, (Bsz, m, m), device=X.device)
    check_sized("Q_B", Q_B, (Bsz, n, n), device=X.device)
    left, right = (Q_A, Q_B.transpose(1, 2)) if back else (Q_A.transpose(1, 2), Q_B)
    out = out_or_empty(out, (Bsz, m, n), X)
    if out.numel() == 0:
        return out
    cfg = bmm_config(config, m, n, max(m, n))
    buf = torch.empty((Bsz, m, n), dtype=torch.float32, device=X.device)
    launch_bmm(left, X, buf, cfg, precision=precision)
    launch_bmm(buf, right, out, cfg, precision=precision)
    return out
