"""The measures of a Kronecker model S = A ⊗ B of a covariance C, one function each.

Eigenpairs of A ⊗ B without forming it, the whitened spectrum, the per-direction cost of each
divergence, the number of exactly-null directions of C, the divergence-weighted residuals, the
scale identities and the three divergences D_φ(C, S). Their definitions and the docs/maths.md sections
they come from are in :mod:`tritonkron.analysis.spectral`, which applies them to every projection.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tritonkron.math.projection import (
    divergence_weighted_residuals,
    partial_trace_a,
    partial_trace_b,
)
from tritonkron.options import Divergence, parse_divergence

__all__ = [
    "DIVERGENCES",
    "direction_cost",
    "kronecker_divergences",
    "kronecker_eigh",
    "null_dimension",
    "residual_norms",
    "scale_identities",
    "whitened_spectrum",
]

DIVERGENCES: tuple[str, ...] = ("frobenius", "von_neumann", "logdet")
"""The three divergences in the order used by every table (docs/maths.md §2.1)."""


def kronecker_eigh(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenpairs of A ⊗ B, sorted by descending eigenvalue, without forming A ⊗ B.

    .. math:: A \\otimes B = \\sum_{i,j} a_i b_j\\,(q_i \\otimes r_j)(q_i \\otimes r_j)^\\top

    Args:
        A: symmetric ``[m, m]``.
        B: symmetric ``[n, n]``.

    Returns:
        ``(values [mn], rows [mn], cols [mn])``: the eigenvalues aᵢ b_j in descending order and,
        for each, the index i of A's eigenvector and j of B's (both in ``eigh``'s ascending order
        of A's and B's own eigenvalues). The eigenvector is ``torch.kron(Q_A[:, i], Q_B[:, j])``.
    """
    a = torch.linalg.eigvalsh(A)
    b = torch.linalg.eigvalsh(B)
    values = (a[:, None] * b[None, :]).reshape(-1)
    order = torch.argsort(values, descending=True)
    n = B.shape[0]
    return values[order], order // n, order % n


def _spd_power(X: Tensor, p: float) -> Tensor | None:
    """X^p for symmetric X via ``eigh``; ``None`` if X is not positive definite."""
    w, Q = torch.linalg.eigh(X)
    if not w.min() > 0:
        return None
    return (Q * w.pow(p)) @ Q.T


def whitened_spectrum(cov: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """Eigenvalues of the whitened covariance S^{-1/2} C S^{-1/2}, S = A ⊗ B, descending.

    .. math:: \\mu = \\mathrm{eig}\\big((A^{-1/2}\\otimes B^{-1/2})\\, C\\,(A^{-1/2}\\otimes B^{-1/2})\\big),
              \\quad \\tfrac{1}{mn}\\textstyle\\sum \\mu = \\mathrm{tr}(S^{-1}C)/mn

    Args:
        cov: C ``[mn, mn]``.
        A: ``[m, m]``.
        B: ``[n, n]``.

    Returns:
        ``[mn]`` in the dtype of ``cov``; all +inf when A or B is not positive definite (the
        whitening S^{-1/2} does not exist).
    """
    Ah, Bh = _spd_power(A, -0.5), _spd_power(B, -0.5)
    if Ah is None or Bh is None:
        return torch.full((cov.shape[0],), math.inf, dtype=cov.dtype)
    K = torch.kron(Ah, Bh)
    W = K @ cov @ K
    return torch.linalg.eigvalsh(0.5 * (W + W.T)).flip(0)


def direction_cost(lam: Tensor, s: Tensor, divergence: str | Divergence) -> Tensor:
    """Per-eigendirection cost of a divergence for a diagonal error λ → s (docs/maths.md §3.3).

    .. math:: F: \\tfrac12(\\lambda - s)^2, \\quad vN: s\\,(x\\log x - x + 1), \\quad
              LD: x - \\log x - 1, \\qquad x = \\lambda / s

    These are the exact scalar Bregman divergences d_φ(λ, s), i.e. D_φ restricted to one
    eigendirection; their sum is D_φ(C, S) when C and S commute.

    Args:
        lam: λ ``[d]`` ≥ 0.
        s: s ``[d]`` > 0 (vN, LD); a non-positive s gives +inf.
        divergence: the divergence.

    Returns:
        ``[d]`` costs ≥ 0.
    """
    kind = parse_divergence(divergence)
    if kind is Divergence.FROBENIUS:
        return 0.5 * (lam - s).square()
    pos = s > 0
    x = torch.where(pos, lam / torch.where(pos, s, 1.0), torch.zeros_like(lam))
    vn = kind is Divergence.VON_NEUMANN
    cost = s * (torch.xlogy(x, x) - x + 1) if vn else x - torch.log(x) - 1
    return torch.where(pos, cost, torch.full_like(cost, math.inf))


def null_dimension(eigenvalues: Tensor, damping: float) -> int:
    """Number of exactly-null directions of C, seen in the eigenvalues λ of the damped C + κI.

    With κ = δ tr(C)/d (:func:`~tritonkron.analysis.collect.covariance`), κ = δ tr(C + κI) /
    (d (1 + δ)); directions with λᵢ − κ ≤ 1e-9 λ_max are counted (dead units, constant inputs).
    """
    d = eigenvalues.numel()
    kappa = damping * float(eigenvalues.sum()) / (d * (1 + damping))
    return int(((eigenvalues - kappa) <= 1e-9 * float(eigenvalues.max())).sum())


def residual_norms(cov: Tensor, A: Tensor, B: Tensor, shape: tuple[int, int]) -> dict[str, float]:
    """Relative §3.2 residuals of (A, B) under each divergence's weighting (nan if undefined)."""
    out: dict[str, float] = {}
    for name in DIVERGENCES:
        try:
            ra, rb = divergence_weighted_residuals(cov, A, B, name)
        except ValueError:  # LD weighting needs SPD factors
            out[name] = math.nan
            continue
        if name == "frobenius":
            wb, wa = B, A
        elif name == "von_neumann":
            wb, wa = None, None
        else:
            wb, wa = torch.linalg.inv(B), torch.linalg.inv(A)
        na = torch.linalg.norm(partial_trace_b(cov, shape, wb))
        nb = torch.linalg.norm(partial_trace_a(cov, shape, wa))
        out[name] = float(max(torch.linalg.norm(ra) / na, torch.linalg.norm(rb) / nb))
    return out


def scale_identities(cov: Tensor, A: Tensor, B: Tensor, whitened: Tensor) -> dict[str, float]:
    """Relative deviations of the three scale identities of docs/maths.md §2.2."""
    S = torch.kron(A, B)
    s_sq = S.square().sum()
    return {
        "frobenius": float(((cov * S).sum() - s_sq) / s_sq),
        "von_neumann": float((cov.trace() - S.trace()) / cov.trace()),
        "logdet": float(whitened.mean() - 1.0),
    }


def kronecker_divergences(
    cov: Tensor, eigenvalues: Tensor, A: Tensor, B: Tensor, whitened: Tensor
) -> dict[str, float]:
    """D_φ(C, A ⊗ B) for the three φ, from C's eigenvalues and the factors' (no mn × mn ``eigh``).

    With S = A ⊗ B, log S = log A ⊗ I + I ⊗ log B and log det S = n log det A + m log det B::

        D_F  = ½ ‖C − S‖²_F
        D_vN = Σ λᵢ log λᵢ − tr(Tr_B(C) log A) − tr(Tr_A(C) log B) − tr C + tr A · tr B
        D_LD = Σ μᵢ − Σ log λᵢ + n log det A + m log det B − mn     (μ = eig(S^{-1/2} C S^{-1/2}))

    These equal :func:`~tritonkron.math.projection.bregman_divergence` (tested) at a
    fraction of its cost. A non-positive-definite factor gives inf for vN and LD; a singular C
    gives inf for LD.

    Args:
        cov: C ``[mn, mn]``.
        eigenvalues: λ of C.
        A: ``[m, m]``.
        B: ``[n, n]``.
        whitened: μ from :func:`whitened_spectrum`.
    """
    m, n = A.shape[0], B.shape[0]
    S = torch.kron(A, B)
    out = {"frobenius": float(0.5 * (cov - S).square().sum())}
    a, Qa = torch.linalg.eigh(A)
    b, Qb = torch.linalg.eigh(B)
    if not (a.min() > 0 and b.min() > 0):
        out.update(von_neumann=math.inf, logdet=math.inf)
        return out
    lam = eigenvalues.clamp_min(0)
    log_a, log_b = (Qa * a.log()) @ Qa.T, (Qb * b.log()) @ Qb.T
    c_log_s = (partial_trace_b(cov, (m, n)) * log_a).sum() + (partial_trace_a(cov, (m, n)) * log_b).sum()
    out["von_neumann"] = float(torch.xlogy(lam, lam).sum() - c_log_s - lam.sum() + a.sum() * b.sum())
    if not lam.min() > 0:
        out["logdet"] = math.inf
    else:
        logdet_s = n * a.log().sum() + m * b.log().sum()
        out["logdet"] = float(whitened.sum() - lam.log().sum() + logdet_s - m * n)
    return out
