"""The study's numbers as pandas tables (one per CSV file of the report) and their Markdown cells."""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import Tensor

from tritonkron.analysis.study import Study

__all__ = [
    "SHORT",
    "error_frame",
    "format_cell",
    "markdown_table",
    "overlap_frame",
    "rayleigh_frame",
    "spread",
    "summary_frame",
    "top_error_frame",
]

SHORT = {"frobenius": "F", "von_neumann": "vN", "logdet": "LD"}


def format_cell(x: object) -> str:
    """One Markdown table cell: floats to 3 significant digits (``nan``, ``inf`` spelled out)."""
    if isinstance(x, float):
        return "nan" if math.isnan(x) else "inf" if math.isinf(x) else f"{x:.3g}"
    return str(x).replace("|", "\\|")  # a bare pipe would split a Markdown table cell


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub Markdown table of :func:`format_cell` cells, without the index."""
    return frame.map(format_cell).to_markdown(index=False)


def summary_frame(study: Study) -> pd.DataFrame:
    """One row per (layer, divergence) with the error split, whitening, identities, residuals."""
    rows = []
    for ls in study.layers:
        s, sp = ls.samples, ls.spectral
        for div, p in sp.projections.items():
            rows.append(
                {"layer": s.name, "shape": "x".join(map(str, s.shape)), "dense_coords": "x".join(map(str, s.sub_shape)),
                 "subset": s.subset, "divergence": div, "top_k": sp.top_k, "top_error": p.top_error,
                 "tail_error": p.tail_error, "top_cost_share": p.top_cost_share, "whitened_max": p.whitened_max,
                 "whitened_mean": p.whitened_mean, "whitened_min": p.whitened_min,
                 **{f"D_{k}": v for k, v in p.divergences.items()},
                 **{f"residual_{k}": v for k, v in p.residuals.items()},
                 **{f"identity_{k}": v for k, v in p.identities.items()}}
            )  # fmt: skip
    return pd.DataFrame(rows)


def error_frame(study: Study) -> pd.DataFrame:
    """One row per (layer, divergence, eigen-index): λᵢ, sᵢ = uᵢᵀSuᵢ, log(sᵢ/λᵢ) and the cost."""
    frames = [
        pd.DataFrame(
            {
                "layer": ls.samples.name,
                "divergence": div,
                "index": range(1, len(ls.spectral.eigenvalues) + 1),
                "eigenvalue": ls.spectral.eigenvalues.tolist(),
                "model": p.model_diag.tolist(),
                "log_ratio": p.log_ratio.tolist(),
                "cost": p.cost.tolist(),
            }
        )  # fmt: skip
        for ls in study.layers
        for div, p in ls.spectral.projections.items()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def overlap_frame(study: Study) -> pd.DataFrame:
    """One row per (layer, basis, k): mean and std over resamples of the overlap, and k/d."""
    rows = []
    for ls in study.layers:
        curves: list[tuple[str, int, list[int], Tensor]] = []
        if ls.alignment is not None:
            d = ls.spectral.eigenvalues.numel()
            curves += [(basis, d, ls.alignment.ks, o) for basis, o in ls.alignment.overlap.items()]
        if ls.factor_overlap is not None:
            d = ls.samples.shape[0] * ls.samples.shape[1]
            curves.append(("full-layer:L(x)R", d, ls.factor_ks, ls.factor_overlap))
        for basis, d, ks, o in curves:
            mean, std = o.mean(0), spread(o)
            rows += [
                (ls.samples.name, basis, d, k, float(mean[j]), float(std[j]), k / d) for j, k in enumerate(ks)
            ]
    return pd.DataFrame(rows, columns=["layer", "basis", "dim", "k", "overlap_mean", "overlap_std", "random"])


def rayleigh_frame(study: Study) -> pd.DataFrame:
    """One row per (layer, probed index): λᵢ, ρᵢ/λ_max(H) and |cos| stability over resamples."""
    frames = [
        pd.DataFrame(
            {
                "layer": ls.samples.name,
                "index": (al.index + 1).tolist(),
                "top": (al.index < ls.spectral.top_k).tolist(),
                "eigenvalue": al.cov_values.tolist(),
                "rayleigh_mean": al.rayleigh.mean(0).tolist(),
                "rayleigh_std": spread(al.rayleigh).tolist(),
                "cosine_mean": al.cosine.mean(0).tolist(),
                "cosine_std": spread(al.cosine).tolist(),
            }
        )  # fmt: skip
        for ls in study.layers
        if (al := ls.alignment) is not None
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def top_error_frame(study: Study) -> pd.DataFrame:
    """Median |log(sᵢ/λᵢ)| over the top-k eigendirections of C for k = 1, 2, 4, 8, top_k, 4·top_k."""
    rows = []
    for ls in study.layers:
        d, k0 = ls.spectral.eigenvalues.numel(), ls.spectral.top_k
        ks = sorted({k for k in (1, 2, 4, 8, k0, 4 * k0) if k <= d})
        for div, p in ls.spectral.projections.items():
            err = p.log_ratio.abs()
            rows.append(
                {
                    "layer": ls.samples.name,
                    "divergence": div,
                    **{f"k={k}": float(err[:k].median()) for k in ks},
                }
            )
    return pd.DataFrame(rows)


def spread(x: Tensor) -> Tensor:
    """Standard deviation over resamples (dim 0); zeros for a single resample."""
    return x.std(0) if x.shape[0] > 1 else torch.zeros_like(x[0])
