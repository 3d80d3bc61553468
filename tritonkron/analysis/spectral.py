"""How each Bregman projection spreads the Kronecker error over the covariance spectrum (docs/maths.md §3).

For a dense gradient covariance C ``[mn, mn]`` (row-major ``vec``, docs/maths.md §1) with eigenpairs
λ₁ ≥ … ≥ λ_mn, u_i, and the projection S = A ⊗ B of each divergence
(:func:`~tritonkron.math.projection.kronecker_projection`), this module measures

* the **error per eigendirection** of C, r_i = log(sᵢ / λᵢ) with sᵢ = uᵢᵀ S uᵢ, summarised as the
  median |rᵢ| over the top-k directions and over the tail (docs/maths.md §3.3's toy table);
* the **per-direction cost** of each divergence's own generator (docs/maths.md §3.3, second-order /
  diagonal form with x = λᵢ / sᵢ)::

      F : ½ (λ − s)²        vN : s (x log x − x + 1)        LD : x − log x − 1

  and the share of the total cost that falls on the top-k directions;
* the **divergence-weighted residuals** of docs/maths.md §3.2: for E = C − A ⊗ B and p ∈ {+1, 0, −1}
  (F, vN, LD), ‖Tr_B[E (I ⊗ Bᵖ)]‖_F / ‖Tr_B[C (I ⊗ Bᵖ)]‖_F (and the mirrored A-condition), which
  vanish for the projection of the same divergence only;
* the **whitened spectrum** μ = eig(S^{-1/2} C S^{-1/2}) (max, mean, min);
* the **scale identities** (docs/maths.md §2.2), as relative deviations::

      F : (⟨C, S⟩ − ‖S‖²_F) / ‖S‖²_F     vN : (tr C − tr S) / tr C     LD : tr(S⁻¹C) / mn − 1

  each of which is zero for its own projection.

Everything is dense float64 (O((mn)²) memory, O((mn)³) time): meant for layers with mn up to a
few thousand, or for a coordinate sub-grid of a larger layer (:mod:`tritonkron.analysis.collect`).

Each measure is a function of :mod:`tritonkron.analysis.measures`; this module applies them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from tritonkron.analysis.collect import covariance, noise_samples, spiked_covariance
from tritonkron.analysis.measures import (
    DIVERGENCES,
    direction_cost,
    kronecker_divergences,
    kronecker_eigh,
    null_dimension,
    residual_norms,
    scale_identities,
    whitened_spectrum,
)
from tritonkron.math.projection import kronecker_projection
from tritonkron.options import parse_divergence

__all__ = [
    "DIVERGENCES",
    "ProjectionAnalysis",
    "SpectralAnalysis",
    "analyse_covariance",
    "analyse_projection",
    "direction_cost",
    "known_answer_suite",
    "kronecker_divergences",
    "kronecker_eigh",
    "null_dimension",
    "whitened_spectrum",
]


@dataclass
class ProjectionAnalysis:
    """One divergence's Kronecker projection of C, measured against C's spectrum.

    Attributes:
        divergence: ``"frobenius"``, ``"von_neumann"`` or ``"logdet"``.
        A: row factor ``[m, m]`` (balanced gauge tr A / m = tr B / n).
        B: column factor ``[n, n]``.
        model_diag: sᵢ = uᵢᵀ (A ⊗ B) uᵢ ``[mn]``, in C's descending eigen-order.
        log_ratio: rᵢ = log(sᵢ / λᵢ) ``[mn]`` (±inf where sᵢ or λᵢ is 0).
        cost: per-direction cost of this divergence's generator ``[mn]`` (module docstring).
        top_error: median |rᵢ| over i ≤ k.
        tail_error: median |rᵢ| over i > k (nan when k = mn).
        top_cost_share: Σ_{i≤k} costᵢ / Σ_i costᵢ (nan when the total is 0).
        whitened: eigenvalues of S^{-1/2} C S^{-1/2} ``[mn]``, descending (inf if S is singular).
        divergences: D_φ(C, S) for each of the three φ (inf / nan where undefined).
        residuals: relative norm of the §3.2 residual under each divergence's weighting: the
            larger of the A- and B-conditions, ‖Tr_B[E(I⊗Bᵖ)]‖/‖Tr_B[C(I⊗Bᵖ)]‖ (nan if S is
            not SPD for p = −1).
        identities: relative deviation of each divergence's scale identity (module docstring).
    """

    divergence: str
    A: Tensor
    B: Tensor
    model_diag: Tensor
    log_ratio: Tensor
    cost: Tensor
    top_error: float
    tail_error: float
    top_cost_share: float
    whitened: Tensor
    divergences: dict[str, float] = field(default_factory=dict)
    residuals: dict[str, float] = field(default_factory=dict)
    identities: dict[str, float] = field(default_factory=dict)

    @property
    def whitened_max(self) -> float:
        """Largest eigenvalue of S^{-1/2} C S^{-1/2}."""
        return float(self.whitened[0])

    @property
    def whitened_mean(self) -> float:
        """tr(S⁻¹C) / mn (exactly 1 for the LogDet projection)."""
        return float(self.whitened.mean())

    @property
    def whitened_min(self) -> float:
        """Smallest eigenvalue of S^{-1/2} C S^{-1/2}."""
        return float(self.whitened[-1])


@dataclass
class SpectralAnalysis:
    """The spectral study of one covariance under the three projections.

    Attributes:
        shape: ``(m, n)`` of the gradient whose covariance was analysed.
        top_k: number of leading eigendirections counted as "top".
        eigenvalues: λ ``[mn]`` of C, descending.
        eigenvectors: U ``[mn, mn]``, columns uᵢ in the same order.
        projections: divergence name → :class:`ProjectionAnalysis`.
    """

    shape: tuple[int, int]
    top_k: int
    eigenvalues: Tensor
    eigenvectors: Tensor
    projections: dict[str, ProjectionAnalysis]


# ----------------------------------------------------------------------------- helpers


def _kron_diag(U: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """uᵢᵀ (A ⊗ B) uᵢ for every column uᵢ of U, using (A ⊗ B) vec(X) = vec(A X Bᵀ)."""
    m, n = A.shape[0], B.shape[0]
    X = U.T.reshape(-1, m, n)
    return (A @ X @ B.T * X).sum(dim=(1, 2))


def _median(x: Tensor) -> float:
    return float(x.median()) if x.numel() else math.nan


# ----------------------------------------------------------------------------- main entry


def analyse_projection(
    cov: Tensor,
    shape: tuple[int, int],
    divergence: str,
    eigenvalues: Tensor,
    eigenvectors: Tensor,
    top_k: int,
) -> ProjectionAnalysis:
    """Project C under one divergence and measure the projection against C's spectrum.

    Args:
        cov: symmetric PSD C ``[mn, mn]`` (positive definite for ``"logdet"``).
        shape: ``(m, n)``.
        divergence: the divergence of the projection.
        eigenvalues: λ ``[mn]`` of C, descending.
        eigenvectors: ``[mn, mn]`` matching columns.
        top_k: number of top directions, 1 ≤ k ≤ mn.

    Returns:
        The :class:`ProjectionAnalysis`.
    """
    A, B = kronecker_projection(cov, shape, divergence)
    s = _kron_diag(eigenvectors, A, B)
    lam = eigenvalues
    with torch.no_grad():
        log_ratio = torch.log(s.clamp_min(0)) - torch.log(lam.clamp_min(0))
    cost = direction_cost(lam, s, divergence)
    total = cost.sum()
    share = float(cost[:top_k].sum() / total) if total > 0 and torch.isfinite(total) else math.nan
    whitened = whitened_spectrum(cov, A, B)
    return ProjectionAnalysis(
        divergence=divergence,
        A=A,
        B=B,
        model_diag=s,
        log_ratio=log_ratio,
        cost=cost,
        top_error=_median(log_ratio[:top_k].abs()),
        tail_error=_median(log_ratio[top_k:].abs()),
        top_cost_share=share,
        whitened=whitened,
        divergences=kronecker_divergences(cov, lam, A, B, whitened),
        residuals=residual_norms(cov, A, B, shape),
        identities=scale_identities(cov, A, B, whitened),
    )


def analyse_covariance(
    cov: Tensor,
    shape: tuple[int, int],
    top_k: int,
    divergences: tuple[str, ...] = DIVERGENCES,
    progress: Callable[[int], None] | None = None,
) -> SpectralAnalysis:
    """The full spectral study of one covariance: projections, error split, whitening, identities.

    Args:
        cov: symmetric PSD covariance C = E[vec(G) vec(G)ᵀ] ``[mn, mn]``; it is analysed in
            float64. Use a damped C + κI (:func:`tritonkron.analysis.collect.covariance`) when
            C may be singular: LogDet needs C ≻ 0 and log(sᵢ/λᵢ) needs λᵢ > 0.
        shape: ``(m, n)``, the shape of the gradient G.
        top_k: number of leading eigendirections of C counted as "top" (clamped to [1, mn]).
        divergences: which projections to compute.
        progress: called with 1 after the eigendecomposition and after each projection.

    Returns:
        The :class:`SpectralAnalysis`.

    Raises:
        ValueError: on a bad ``shape``/``cov`` or an unknown divergence.
    """
    cov = cov.to(torch.float64)
    cov = 0.5 * (cov + cov.T)
    d = cov.shape[0]
    if shape[0] * shape[1] != d:
        raise ValueError(f"cov is {d} x {d} but shape {shape} has {shape[0] * shape[1]} entries")
    k = max(1, min(int(top_k), d))
    lam, U = torch.linalg.eigh(cov)
    lam, U = lam.flip(0), U.flip(1)
    tick = progress if progress is not None else (lambda _: None)
    tick(1)
    projections = {}
    for name in divergences:
        projections[name] = analyse_projection(cov, shape, parse_divergence(name).value, lam, U, k)
        tick(1)
    return SpectralAnalysis(shape=shape, top_k=k, eigenvalues=lam, eigenvectors=U, projections=projections)


# ----------------------------------------------------------------------------- known answers


def known_answer_suite(m: int = 12, n: int = 16, top_k: int = 8, seed: int = 0) -> pd.DataFrame:
    """The three synthetic covariances with a known answer, analysed like a real layer.

    * ``kronecker``: C = A₀ ⊗ B₀ exactly → every projection recovers it: |log(sᵢ/λᵢ)| = 0,
      whitened spectrum ≡ 1.
    * ``spiked``: :func:`~tritonkron.analysis.collect.spiked_covariance` (4 spikes, σ = 0.1) →
      docs/maths.md §3.3: F smallest top-k error, LD smallest max whitened eigenvalue, vN in between.
    * ``noise``: sample covariance of S = 20 mn white-noise gradients → all projections ≈ c I
      and the whitened spectrum follows Marchenko–Pastur, max ≈ (1 + √(mn/S))².

    Returns:
        One row per (case, divergence): top/tail error, max |log(sᵢ/λᵢ)|, whitened max/mean and
        the expected whitened max (1, none, or the Marchenko–Pastur edge).
    """
    gen = torch.Generator().manual_seed(seed)
    A0 = torch.randn(m, m, generator=gen, dtype=torch.float64)
    B0 = torch.randn(n, n, generator=gen, dtype=torch.float64)
    A0, B0 = (
        A0 @ A0.T / m + 0.1 * torch.eye(m, dtype=torch.float64),
        B0 @ B0.T / n + 0.1 * torch.eye(n, dtype=torch.float64),
    )
    S = 20 * m * n
    cases = {
        "kronecker": (torch.kron(A0, B0), 1.0),
        "spiked": (spiked_covariance(m, n, seed=seed), math.nan),
        "noise": (covariance(noise_samples(m, n, S, seed=seed)), (1 + math.sqrt(m * n / S)) ** 2),
    }
    rows = []
    for case, (cov, expected) in cases.items():
        res = analyse_covariance(cov, (m, n), top_k)
        for div, p in res.projections.items():
            rows.append(
                {
                    "case": case,
                    "divergence": div,
                    "top_error": p.top_error,
                    "tail_error": p.tail_error,
                    "max_abs_log_ratio": float(p.log_ratio.abs().max()),
                    "whitened_max": p.whitened_max,
                    "whitened_mean": p.whitened_mean,
                    "expected_whitened_max": expected,
                }
            )
    return pd.DataFrame(rows)
