"""Run the spectral / Hessian-alignment study on a model.

:func:`run_study` ties the pieces together for any model (through the hooks of
:mod:`tritonkron.analysis.collect`, :mod:`tritonkron.analysis.curvature` and
:mod:`tritonkron.analysis.hessian`) and returns a :class:`Study`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import Tensor, nn

from tritonkron.analysis.collect import LayerSamples, collect_gradients, covariance
from tritonkron.analysis.curvature import curvature_operator
from tritonkron.analysis.hessian import AlignmentResult, factor_alignment, hessian_alignment
from tritonkron.analysis.spectral import (
    SpectralAnalysis,
    analyse_covariance,
    known_answer_suite,
    null_dimension,
)

__all__ = ["LayerStudy", "Progress", "Study", "run_study"]

Progress = Callable[[int, str], None]
"""``progress(units, description)``: called as work completes."""


@dataclass
class LayerStudy:
    """Everything measured on one layer.

    Attributes:
        samples: the gradient samples (and the coverage note).
        spectral: projections and error split of the (damped) dense covariance.
        alignment: curvature alignment of the same coordinates (``None`` if skipped).
        factor_overlap: for sub-grid layers, ``[R, len(ks)]`` overlap of the full layer's
            L ⊗ R top-k eigenvectors with its full-layer curvature (``None`` otherwise).
        factor_ks: the k values of ``factor_overlap``.
        null_dim: number of exactly-zero eigenvalues of the undamped C (dead units, constant
            inputs): directions where the damping alone sets λ.
        mean_cos: |cos| between C's top eigenvector u₁ and the mean gradient ḡ.
        mean_share: ‖ḡ‖² / λ₁, the share of λ₁ explained by the mean (the uncentred C = Σ + ḡḡᵀ).
    """

    samples: LayerSamples
    spectral: SpectralAnalysis
    null_dim: int = 0
    mean_cos: float = math.nan
    mean_share: float = math.nan
    alignment: AlignmentResult | None = None
    factor_overlap: Tensor | None = None
    factor_ks: list[int] = field(default_factory=list)


@dataclass
class Study:
    """A complete study: per-layer results, run metadata and the synthetic known-answer checks."""

    layers: list[LayerStudy]
    meta: dict[str, str]
    synthetic: pd.DataFrame


def run_study(
    model: nn.Module,
    forward: Callable[[nn.Module, Any], Tensor],
    criterion: Callable[[Tensor, Any], Tensor],
    sample_batches: Iterable[Any],
    curvature_batches: Sequence[Any],
    layers: Sequence[str] | None = None,
    max_dim: int = 2048,
    damping: float = 1e-3,
    top_k: int = 16,
    k_max: int = 64,
    kind: str = "ggn",
    seed: int = 0,
    meta: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> Study:
    """Collect gradients, analyse every layer's spectrum and its curvature alignment.

    Args:
        model: the model, at the point of training to study.
        forward: ``forward(model, batch) -> outputs``.
        criterion: ``criterion(outputs, batch) -> scalar loss``.
        sample_batches: one gradient sample per batch (S batches).
        curvature_batches: one curvature operator (and bootstrap resample of C) per batch;
            empty to skip the alignment.
        layers: parameter names; ``None``: every parameter with ≥ 2 dims.
        max_dim: dense covariance up to this many coordinates, else a random sub-grid.
        damping: relative damping δ of C (C + δ tr(C)/d I).
        top_k: eigendirections counted as "top" in the error split.
        k_max: largest k of the overlap curves (also the Lanczos rank).
        kind: ``"ggn"`` or ``"hessian"``.
        seed: seed of sub-grids, bootstraps and Lanczos.
        meta: run description for the report header.
        progress: optional ``progress(units, description)`` callback.

    Returns:
        The :class:`Study`.
    """

    def tick(units: int, what: str) -> None:
        if progress is not None:
            progress(units, what)

    loss_fn = lambda mdl, batch: criterion(forward(mdl, batch), batch)  # noqa: E731
    samples = collect_gradients(
        model, loss_fn, sample_batches, layers, max_dim, seed=seed, progress=lambda u: tick(u, "gradients")
    )
    out = []
    for name, s in samples.items():
        cov = covariance(s, damping)
        spectral = analyse_covariance(
            cov, s.sub_shape, top_k, progress=lambda u, name=name: tick(u, f"{name}: projections")
        )
        gbar = s.grads.reshape(s.num_samples, -1).mean(0)
        study = LayerStudy(
            samples=s, spectral=spectral, null_dim=null_dimension(spectral.eigenvalues, damping),
            mean_cos=float((spectral.eigenvectors[:, 0] @ gbar).abs() / gbar.norm().clamp_min(1e-300)),
            mean_share=float(gbar.square().sum() / spectral.eigenvalues[0]),
        )  # fmt: skip
        if curvature_batches:
            ops = [
                curvature_operator(model, forward, criterion, b, name, kind, s.rows, s.cols)[0]
                for b in curvature_batches
            ]
            factors = {div: (p.A, p.B) for div, p in spectral.projections.items()}
            study.alignment = hessian_alignment(
                s, ops, spectral.eigenvalues, spectral.eigenvectors, factors, k_max, damping, seed=seed,
                progress=lambda u, name=name: tick(u, f"{name}: alignment"),
            )  # fmt: skip
            if s.subset:
                study.factor_ks, study.factor_overlap = factor_alignment(
                    model, forward, criterion, curvature_batches, s, k_max, kind, seed,
                    progress=lambda u, name=name: tick(u, f"{name}: full-layer factors"),
                )  # fmt: skip
        out.append(study)
    synthetic = known_answer_suite(seed=seed)
    tick(1, "synthetic checks")
    return Study(layers=out, meta=dict(meta or {}), synthetic=synthetic)
