"""Eigenbasis maintenance: sorted eigendecomposition, power step + QR refresh, subspace iteration.

The factors' eigenbases are kept stale between refreshes (KL-Shampoo/SOAP machinery, docs/maths.md §2.4):
every T steps one power-iteration step followed by a QR decomposition moves the basis towards the
current factor's eigenvectors,

    Q ← qr(X Q).Q,    x_i ← (Qᵀ X Q)_ii,    then (Q, x) re-sorted by descending x,

where the Rayleigh quotients x_i re-estimate the tracked eigenvalues in the new basis. Because the
tracked eigenvalues always equal diag(Qᵀ X Q) between refreshes (the factor and its eigenvalues
receive the same increments), this keeps the factor and the eigenvalue vector in one gauge.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.math.safe_linalg import SITE_CANONICAL, Eigenpairs, safe_eigh, sort_descending

__all__ = [
    "Eigenpairs",
    "canonical_degenerate_basis",
    "cholesky_qr",
    "orthonormalize",
    "rayleigh_quotients",
    "sort_descending",
    "subspace_iteration",
]


def rayleigh_quotients(X: Tensor, Q: Tensor) -> Tensor:
    """diag(Qᵀ X Q) for ``X: [B, d, d]``, ``Q: [B, d, k]``; returns ``[B, k]``."""
    return ((X @ Q) * Q).sum(dim=-2)


def cholesky_qr(Y: Tensor) -> Tensor:
    """Q of the thin QR factorisation Y = Q R (R with a positive diagonal) by shifted CholeskyQR3,
    computed in float64 (docs/maths.md §2.4): with the columns of Y first scaled to unit norm
    (Q does not change),

        G = YᵀY + s I,  R = chol(G)ᵀ,  Y ← Y R⁻¹,  then twice more with s = 0,

    s = 11 (m n + n (n + 1)) u ‖Y‖²_F, u the unit roundoff. The shifted pass cannot fail and leaves
    Y with condition number ≈ √(s)/σ_min(Y); two plain passes then make it orthonormal to O(u).
    Only GEMMs, batched Cholesky factorisations and triangular solves: no per-matrix Householder
    QR. Returns Q in Y's dtype (non-finite where a factorisation broke down, which the refresh
    rejects). ``Y``: ``[B, m, n]``, m ≥ n.
    """
    dtype = Y.dtype
    Y = Y.to(torch.float64)
    Y = Y / torch.linalg.vector_norm(Y, dim=-2, keepdim=True).clamp_min(torch.finfo(Y.dtype).tiny)
    m, n = Y.shape[-2:]
    shift = 11 * (m * n + n * (n + 1)) * (torch.finfo(Y.dtype).eps / 2) * n  # ‖Y‖²_F = n after scaling
    eye = torch.eye(n, dtype=Y.dtype, device=Y.device)
    for s in (shift, 0.0, 0.0):
        L, _ = torch.linalg.cholesky_ex(Y.mT @ Y + s * eye)
        Y = torch.linalg.solve_triangular(L.mT, Y, upper=True, left=False)
    return Y.to(dtype)


def orthonormalize(Y: Tensor, method: str = "householder") -> Tensor:
    """Q of Y = Q R: ``"householder"`` (``torch.linalg.qr``, LAPACK/cuSOLVER), ``"cholesky"``
    (:func:`cholesky_qr`; the same Q up to the signs of its columns), or ``"auto"`` (cholesky on
    CUDA, householder elsewhere)."""
    if method == "cholesky" or (method == "auto" and Y.device.type == "cuda"):
        return cholesky_qr(Y)
    return torch.linalg.qr(Y).Q


def subspace_iteration(X: Tensor, Q: Tensor, steps: int = 1, method: str = "householder") -> Eigenpairs:
    """Top-k subspace iteration: ``steps`` times Q ← qr(X Q).Q, then sort by Rayleigh quotient
    (``method``: how Q is orthonormalised, :func:`orthonormalize`).

    With k = d (a full basis) and ``steps=1`` this is the power step + QR basis refresh.
    Converges to the top-k eigenvectors of symmetric PSD X at rate (λ_{k+1}/λ_k)^steps.

    Args:
        X: symmetric factors ``[B, d, d]``.
        Q: current orthonormal basis ``[B, d, k]``.
        steps: number of power steps.

    Returns:
        Eigenpairs (Rayleigh quotients diag(Qᵀ X Q), basis), descending.

    Raises:
        torch.linalg.LinAlgError / RuntimeError: when QR fails; callers keep the old basis.
    """
    for _ in range(steps):
        Q = orthonormalize(X @ Q, method)
    return sort_descending(rayleigh_quotients(X, Q), Q)


def canonical_degenerate_basis(vectors: Tensor, degenerate: Tensor) -> Tensor:
    """Replace the basis of a degenerate eigenspace by a canonical one.

    The eigenvectors of a repeated eigenvalue are arbitrary: ``eigh`` of X and of c·X may return
    unrelated bases of, e.g., the null space of a rank-deficient Gram matrix, and stale-basis
    eigenvalue tracking (which depends on the basis) would then follow a different trajectory.
    With F the columns flagged ``degenerate`` (one shared eigenvalue), the new columns are
    Q_F W where W are the eigenvectors of Q_Fᵀ D Q_F with the fixed D = diag(1, …, d): the result
    depends only on the subspace span(Q_F), not on the basis chosen inside it. Other columns are
    returned unchanged (up to sign).

    Args:
        vectors: orthonormal columns ``[B, d, d]``.
        degenerate: ``[B, d]`` bool mask of the columns spanning the degenerate eigenspace.

    Returns:
        ``[B, d, d]`` orthonormal columns; non-degenerate columns first in their original order,
        then the canonical basis of the degenerate subspace. Where the eigendecomposition of the
        compression fails (:func:`~tritonkron.math.safe_linalg.safe_eigh`), W is a permutation
        (the identity fallback): the degenerate columns are kept as given, sorted by (Q_Fᵀ D Q_F)_ii.
    """
    d = vectors.shape[-1]
    mask = degenerate.to(vectors.dtype)
    ramp = torch.arange(1, d + 1, dtype=vectors.dtype, device=vectors.device)
    compressed = (vectors.transpose(-1, -2) * ramp) @ vectors  # Qᵀ D Q
    compressed = compressed * mask.unsqueeze(-1) * mask.unsqueeze(-2)
    # Isolated diagonal entries below every eigenvalue of the compression (which lie in [1, d])
    # keep the other columns in place and in their original order.
    keep = -2.0 * d - torch.flip(ramp, (0,))
    compressed = compressed + torch.diag_embed((1 - mask) * keep)
    W = safe_eigh(compressed, site=SITE_CANONICAL).vectors
    return vectors @ W
