"""How each Bregman projection spreads the Kronecker error over the covariance spectrum (PAPER §3).

For a dense gradient covariance C ``[mn, mn]`` (row-major ``vec``, PAPER §1) with eigenpairs
λ₁ ≥ … ≥ λ_mn, u_i, and the projection S = A ⊗ B of each divergence
(:func:`~tritonkron.reference.projection.kronecker_projection`), this module measures

* the **error per eigendirection** of C, r_i = log(sᵢ / λᵢ) with sᵢ = uᵢᵀ S uᵢ, summarised as the
  median |rᵢ| over the top-k directions and over the tail (PAPER §3.3's toy table);
* the **per-direction cost** of each divergence's own generator (PAPER §3.3, second-order /
  diagonal form with x = λᵢ / sᵢ)::

      F : ½ (λ − s)²        vN : s (x log x − x + 1)        LD : x − log x − 1

  and the share of the total cost that falls on the top-k directions;
* the **divergence-weighted residuals** of PAPER §3.2: for E = C − A ⊗ B and p ∈ {+1, 0, −1}
  (F, vN, LD), ‖Tr_B[E (I ⊗ Bᵖ)]‖_F / ‖Tr_B[C (I ⊗ Bᵖ)]‖_F (and the mirrored A-condition), which
  vanish for the projection of the same divergence only;
* the **whitened spectrum** μ = eig(S^{-1/2} C S^{-1/2}) (max, mean, min);
* the **scale identities** (PAPER §2.2), as relative deviations::

      F : (⟨C, S⟩ − ‖S‖²_F) / ‖S‖²_F     vN : (tr C − tr S) / tr C     LD : tr(S⁻¹C) / mn − 1

  each of which is zero for its own projection.

Everything is dense float64 (O((mn)²) memory, O((mn)³) time): meant for layers with mn up to a
few thousand, or for a coordinate sub-grid of a larger layer (:mod:`tritonkron.analysis.collect`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from tritonkron.analysis.collect import covariance, noise_samples, spiked_covariance
from tritonkron.config import Divergence, parse_divergence
from tritonkron.reference.projection import (
    divergence_weighted_residuals,
    kronecker_projection,
    partial_trace_a,
    partial_trace_b,
)

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

DIVERGENCES: tuple[str, ...] = ("frobenius", "von_neumann", "logdet")
"""The three divergences in the order used by every table (PAPER §2.1)."""


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
    """Per-eigendirection cost of a divergence for a diagonal error λ → s (PAPER §3.3).

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


def _kron_diag(U: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """uᵢᵀ (A ⊗ B) uᵢ for every column uᵢ of U, using (A ⊗ B) vec(X) = vec(A X Bᵀ)."""
    m, n = A.shape[0], B.shape[0]
    X = U.T.reshape(-1, m, n)
    return (A @ X @ B.T * X).sum(dim=(1, 2))


def _median(x: Tensor) -> float:
    return float(x.median()) if x.numel() else math.nan


def _residual_norms(cov: Tensor, A: Tensor, B: Tensor, shape: tuple[int, int]) -> dict[str, float]:
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


def _identities(cov: Tensor, A: Tensor, B: Tensor, whitened: Tensor) -> dict[str, float]:
    """Relative deviations of the three scale identities of PAPER §2.2."""
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

    These equal :func:`~tritonkron.reference.projection.bregman_divergence` (tested) at a
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
        residuals=_residual_norms(cov, A, B, shape),
        identities=_identities(cov, A, B, whitened),
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
      PAPER §3.3: F smallest top-k error, LD smallest max whitened eigenvalue, vN in between.
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
