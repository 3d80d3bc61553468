"""Both factor EMAs and the rotated gradient from shared products, dispatched.

Reference: :mod:`tritonkron.ops.rotated_statistics.reference`; Triton:
:mod:`tritonkron.ops.rotated_statistics.triton`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.ops.backend import resolve_backend
from tritonkron.ops.precision import check_precision
from tritonkron.ops.rotated_statistics import reference

__all__ = ["rotated_statistics"]


def rotated_statistics(
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
    backend: str | None = None,
    precision: str = "ieee",
) -> tuple[Tensor, Tensor, Tensor]:
    """(A', B', Ĝ): A' = β A + s_A G Q_B diag(w_B) Q_Bᵀ Gᵀ, B' = β B + s_B Gᵀ Q_A diag(w_A) Q_Aᵀ G, Ĝ = Q_Aᵀ G Q_B.

    Both paths share the products G Q_B and Q_Aᵀ G between the three results
    (:func:`tritonkron.ops.rotated_statistics.reference.rotated_statistics_ref`,
    :func:`tritonkron.ops.rotated_statistics.triton.rotated_statistics_triton`). A weight None means
    w = 1 (W = I, von Neumann), for which that factor's Gram matrix reads G itself. ``precision``
    is the products' policy (:mod:`tritonkron.ops.precision`).
    """
    precision = check_precision(precision)
    if resolve_backend(backend, A, G, Q_A, op="rotated_statistics") == "reference":
        return reference.rotated_statistics_ref(A, B, G, Q_A, Q_B, w_A, s_A, w_B, s_B, beta, precision)
    out = torch.ops.tritonkron.rotated_statistics(
        A, B, G, Q_A, Q_B, w_A, s_A, w_B, s_B, float(beta), precision
    )
    return out[0], out[1], out[2]
