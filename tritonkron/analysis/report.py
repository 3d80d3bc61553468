"""Run the spectral / Hessian-alignment study on a model and write it as Markdown + PNG + CSV.

:func:`run_study` ties the pieces together for any model (through the hooks of
:mod:`tritonkron.analysis.collect` and :mod:`tritonkron.analysis.hessian`); :func:`write_report`
writes ``REPORT.md``, the figures (``error_<layer>.png``, ``overlap.png``, ``rayleigh.png``; they
need matplotlib, otherwise the report says they were skipped) and the raw numbers as CSV
(``summary.csv``, ``top_error.csv``, ``error_by_index.csv``, ``overlap.csv``, ``rayleigh.csv``,
``synthetic.csv``, ``claims.csv``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from tritonkron.analysis.collect import LayerSamples, collect_gradients, covariance
from tritonkron.analysis.hessian import (
    AlignmentResult,
    curvature_operator,
    factor_alignment,
    hessian_alignment,
)
from tritonkron.analysis.spectral import (
    DIVERGENCES,
    SpectralAnalysis,
    analyse_covariance,
    known_answer_suite,
    null_dimension,
)

__all__ = ["LayerStudy", "Study", "run_study", "write_report"]

Progress = Callable[[int, str], None]
"""``progress(units, description)``: called as work completes."""

SHORT = {"frobenius": "F", "von_neumann": "vN", "logdet": "LD"}


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


# ----------------------------------------------------------------------------- tables


def _fmt(x: object) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else "inf" if math.isinf(x) else f"{x:.3g}"
    return str(x).replace("|", "\\|")  # a bare pipe would split a Markdown table cell


def _md(frame: pd.DataFrame) -> str:
    return frame.map(_fmt).to_markdown(index=False)


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
            mean, std = o.mean(0), _spread(o)
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
                "rayleigh_std": _spread(al.rayleigh).tolist(),
                "cosine_mean": al.cosine.mean(0).tolist(),
                "cosine_std": _spread(al.cosine).tolist(),
            }
        )  # fmt: skip
        for ls in study.layers
        if (al := ls.alignment) is not None
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------- figures


def _figures(study: Study, out: Path, dpi: int) -> list[str]:
    """Write the PNGs; return their file names (empty if matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []

    def save(fig: Any, fname: str) -> None:
        fig.tight_layout()
        fig.savefig(out / fname, dpi=dpi)
        plt.close(fig)
        names.append(fname)

    names: list[str] = []
    colours = {"frobenius": "tab:blue", "von_neumann": "tab:orange", "logdet": "tab:green"}
    for ls in study.layers:
        sp = ls.spectral
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True, height_ratios=[2, 1])
        idx = torch.arange(1, len(sp.eigenvalues) + 1)
        for div, p in sp.projections.items():
            ax.plot(idx, p.log_ratio.abs(), ".", ms=2, alpha=0.35, color=colours[div])
            ax.plot(
                idx,
                _running_median(p.log_ratio.abs()),
                color=colours[div],
                label=f"{SHORT[div]} (running median)",
            )
        ax.axvline(sp.top_k + 0.5, color="grey", ls=":", lw=1)
        ax.set(xscale="log", yscale="log", ylabel="|log(u_i' S u_i / lambda_i)|")
        ax.set_title(f"{ls.samples.name}: Kronecker error per eigendirection of C")
        ax.legend(fontsize=8)
        ax2.plot(idx, sp.eigenvalues, color="k")
        ax2.set(xscale="log", yscale="log", xlabel="eigen-index i of C (descending)", ylabel="lambda_i")
        save(fig, f"error_{_safe(ls.samples.name)}.png")
    with_al = [ls for ls in study.layers if ls.alignment is not None]
    if not with_al:
        return names
    fig, axes = plt.subplots(1, len(with_al), figsize=(4.2 * len(with_al), 3.6), squeeze=False)
    for ax, ls in zip(axes[0], with_al, strict=True):
        al = ls.alignment
        for basis, o in al.overlap.items():
            ax.errorbar(al.ks, o.mean(0), yerr=_spread(o), marker="o", ms=3, label=basis)
        if ls.factor_overlap is not None:
            o = ls.factor_overlap
            ax.errorbar(ls.factor_ks, o.mean(0), yerr=_spread(o), ls="--", label="full-layer L(x)R")
        ax.plot(al.ks, al.random, "k:", label="random k/d")
        ax.set(xscale="log", ylim=(0, 1.02), xlabel="k", ylabel="||U_k' V_k||^2 / k", title=ls.samples.name)
    axes[0][0].legend(fontsize=7)
    save(fig, "overlap.png")
    fig, axes = plt.subplots(2, len(with_al), figsize=(4.2 * len(with_al), 5.6), squeeze=False, sharex="col")
    for (top, bottom), ls in zip(axes.T, with_al, strict=True):
        al, x = ls.alignment, ls.alignment.index + 1
        rq = al.rayleigh.mean(0)
        top.errorbar(x, rq, yerr=_spread(al.rayleigh), fmt="o", ms=3)
        top.set(xscale="log", yscale="log", title=ls.samples.name, ylabel="u_i' H u_i / lambda_max(H)")
        top.set_ylim(bottom=max(float(rq.clamp_min(1e-300).min()), 1e-6) / 2)
        bottom.errorbar(x, al.cosine.mean(0), yerr=_spread(al.cosine), fmt="o", ms=3, color="tab:red")
        bottom.set(xscale="log", ylim=(0, 1.05), xlabel="eigen-index i of C", ylabel="|cos(u_i(r), u_i)|")
        for ax in (top, bottom):
            ax.axvline(ls.spectral.top_k + 0.5, color="grey", ls=":", lw=1)
    save(fig, "rayleigh.png")
    return names


def _spread(x: Tensor) -> Tensor:
    """Standard deviation over resamples (dim 0); zeros for a single resample."""
    return x.std(0) if x.shape[0] > 1 else torch.zeros_like(x[0])


def _running_median(x: Tensor, width: int = 9) -> Tensor:
    if x.numel() < width:
        return x
    pad = width // 2
    xp = torch.cat([x[:1].repeat(pad), x, x[-1:].repeat(pad)])
    return xp.unfold(0, width, 1).median(dim=1).values


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


# ----------------------------------------------------------------------------- claims and Markdown


def _at_k(ks: list[int], values: Tensor, k: int) -> tuple[int, float]:
    """The mean overlap at the largest tabulated k ≤ ``k`` (and that k)."""
    j = max(i for i, kk in enumerate(ks) if kk <= max(k, ks[0]))
    return ks[j], float(values[:, j].mean())


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


def _spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation (no tie correction)."""
    rx, ry = x.argsort().argsort().double(), y.argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()).clamp_min(1e-300))


def _projection_claims(ls: LayerStudy) -> list[tuple[str, bool, str]]:
    p, k0 = ls.spectral.projections, ls.spectral.top_k
    if not all(d in p for d in DIVERGENCES):
        return []
    out = []
    for k in sorted({max(1, k0 // 4), k0}):
        te = {d: float(p[d].log_ratio[:k].abs().median()) for d in DIVERGENCES}
        out.append(
            (f"F most accurate on the top-{k} directions", min(te, key=te.get) == "frobenius", _triple(te))
        )
    te = {d: p[d].top_error for d in DIVERGENCES}
    wm = {d: p[d].whitened_max for d in DIVERGENCES}
    out.append(
        ("LD has the best-bounded whitening (smallest max)", min(wm, key=wm.get) == "logdet", _triple(wm))
    )
    mid = sorted(te.values())[1] == te["von_neumann"] and sorted(wm.values())[1] == wm["von_neumann"]
    out.append((f"vN sits in between (top-{k0} error and whitened max)", mid, "see the rows above"))
    own = max(max(abs(p[d].residuals[d]), abs(p[d].identities[d])) for d in DIVERGENCES)
    out.append(
        (
            "each projection meets its own §3.2 residual condition and scale identity",
            own < 1e-6,
            f"max deviation {_fmt(own)}",
        )
    )
    return out


def _alignment_claims(ls: LayerStudy) -> list[tuple[str, bool, str]]:
    al, k0 = ls.alignment, ls.spectral.top_k
    if al is None:
        return []
    kk, o = _at_k(al.ks, al.overlap["C"], k0)
    rnd = kk / ls.spectral.eigenvalues.numel()
    out = [
        (
            f"top-{kk} eigenspace of C overlaps the curvature's far above chance",
            o > 3 * rnd,
            f"overlap {_fmt(o)} vs random {_fmt(rnd)}",
        )
    ]
    top = al.index < k0
    if not (top.any() and (~top).any()):
        return out
    rq = al.rayleigh.mean(0)
    rt, rtail = float(rq[top].median()), float(rq[~top].median())
    out.append(
        (
            "top eigenvectors of C carry more curvature than the tail",
            rt > rtail,
            f"median u'Hu/lmax: top {_fmt(rt)}, tail {_fmt(rtail)}",
        )
    )
    rho = _spearman(al.cov_values[~top], rq[~top])
    out.append(
        (
            "tail Rayleigh quotients are non-monotone in λᵢ (noisy-tail signature)",
            rho < 0.9,
            f"Spearman(λᵢ, ρᵢ) over the tail {rho:.3f}",
        )
    )
    if al.rayleigh.shape[0] > 1:
        cos = al.cosine.mean(0)
        ct, ctail = float(cos[top].mean()), float(cos[~top].mean())
        out.append(
            (
                "tail eigenvectors are less stable across resamples",
                ctail < ct,
                f"mean |cos|: top {_fmt(ct)}, tail {_fmt(ctail)}",
            )
        )
        cv = al.rayleigh.std(0) / rq.abs().clamp_min(1e-300)
        vt, vtail = float(cv[top].median()), float(cv[~top].median())
        out.append(
            (
                "tail Rayleigh quotients vary more across resamples",
                vtail > vt,
                f"median CV: top {_fmt(vt)}, tail {_fmt(vtail)}",
            )
        )
    return out


def claim_checks(study: Study) -> pd.DataFrame:
    """Which of PAPER §3's claims hold on each layer, with the numbers that decide it."""
    rows = [
        (ls.samples.name, claim, "yes" if holds else "no", evidence)
        for ls in study.layers
        for claim, holds, evidence in _projection_claims(ls) + _alignment_claims(ls)
    ]
    return pd.DataFrame(rows, columns=["layer", "claim", "holds", "evidence"])


def _triple(values: dict[str, float]) -> str:
    return ", ".join(f"{SHORT[d]} {_fmt(values[d])}" for d in DIVERGENCES)


_INTRO = {
    "synthetic": "Known answers: an exactly Kronecker C is recovered by all three projections (zero error, whitened spectrum all 1); for a Kronecker C plus planted non-Kronecker spikes F has the smallest top-k error and LD the smallest max whitened eigenvalue (PAPER §3.3); for pure white noise all three give ≈ c·I and the whitened spectrum is Marchenko–Pastur (max ≈ (1+√(d/S))²).",
    "error": "top/tail error: median |log(uᵢᵀSuᵢ/λᵢ)| over the top-k / remaining eigendirections uᵢ of C; top_cost_share: share of the divergence's own per-direction cost (PAPER §3.3) on the top-k; whitened: eigenvalues of S^{-1/2} C S^{-1/2}.",
    "residual": "residual_φ: relative norm of the §3.2 residual Tr_B[E(I⊗Bᵖ)] (and its A-mirror) under φ's weighting; identity_φ: relative deviation of φ's scale identity (PAPER §2.2); D_φ: D_φ(C, S). Rows are projections, so each row's own-divergence entries must be ≈ 0.",
    "overlap": "overlap(k) = ‖U_kᵀV_k‖²_F/k between the top-k eigenvectors of C (bootstrap-resampled) or of a Kronecker projection A⊗B and the top-k eigenvectors of the layer curvature (Lanczos), mean ± std over the curvature batches; random: k/d.",
    "rayleigh": "Rayleigh quotients uᵢᵀHuᵢ/λ_max(H) of C's eigenvectors and their stability (|cos| between the bootstrap and the full-sample eigenvector), top-k against the probed tail indices (the figure's y axis is clipped at 5e-7; only exactly-null directions of dead units, at ≈ 0, fall below):",
}


def _markdown(study: Study, figures: list[str], discussion: str | None) -> str:
    out = ["# Kronecker projections on real gradients: error spread and Hessian alignment", ""]
    out += [
        "Generated by `python -m tritonkron.analysis` (PAPER §3; definitions in `tritonkron/analysis/`).",
        "",
    ]
    out += ["| setting | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in study.meta.items()], ""]
    out += [
        "## Synthetic covariances with a known answer",
        "",
        _INTRO["synthetic"],
        "",
        _md(study.synthetic),
        "",
    ]
    out += ["## Layers", ""]
    out += [
        f"- `{ls.samples.name}`: {ls.samples.note}; {ls.null_dim} exactly-null directions of C (set by the damping "
        f"alone); top eigenvector u₁ vs mean gradient ḡ: |cos| = {ls.mean_cos:.3f}, ‖ḡ‖²/λ₁ = {ls.mean_share:.3f}."
        for ls in study.layers
    ]
    summ = summary_frame(study)
    if not summ.empty:
        cols = [
            "layer",
            "divergence",
            "top_k",
            "top_error",
            "tail_error",
            "top_cost_share",
            "whitened_max",
            "whitened_mean",
            "whitened_min",
        ]
        out += ["", "## Error split over the spectrum of C", "", _INTRO["error"], "", _md(summ[cols]), ""]
        out += [
            "Median |log(uᵢᵀSuᵢ/λᵢ)| over the top-k directions for several k:",
            "",
            _md(top_error_frame(study)),
            "",
        ]
        out += [f"![{f}]({f})" for f in figures if f.startswith("error_")]
        cols = [
            "layer",
            "divergence",
            *[c for c in summ.columns if c.startswith(("residual_", "identity_", "D_"))],
        ]
        out += [
            "",
            "## Divergence-weighted residuals, scale identities and divergences",
            "",
            _INTRO["residual"],
            "",
            _md(summ[cols]),
        ]
    ov = overlap_frame(study)
    if not ov.empty:
        ov["cell"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(ov.overlap_mean, ov.overlap_std, strict=True)]
        table = ov.pivot_table(
            index=["layer", "basis", "dim"], columns="k", values="cell", aggfunc="first", sort=False
        )
        table.columns = [f"k={k}" for k in table.columns]
        out += [
            "",
            "## Hessian alignment",
            "",
            _INTRO["overlap"],
            "",
            table.fillna("").reset_index().to_markdown(index=False),
            "",
        ]
        out += [f"![{f}]({f})" for f in figures if f in ("overlap.png", "rayleigh.png")]
        rq = rayleigh_frame(study)
        grp = rq.groupby(["layer", "top"]).agg(
            n=("index", "size"),
            rayleigh_median=("rayleigh_mean", "median"),
            rayleigh_std_median=("rayleigh_std", "median"),
            cosine_mean=("cosine_mean", "mean"),
        )
        out += ["", _INTRO["rayleigh"], "", _md(grp.reset_index())]
    if not figures:
        out += ["", "_Figures skipped: matplotlib is not installed._"]
    checks = claim_checks(study)
    if not checks.empty:
        out += ["", "## Automatic claim checks", "", _md(checks)]
    out += [
        "",
        "## Discussion",
        "",
        discussion.strip() if discussion else "_No discussion supplied (pass `--discussion FILE`)._",
        "",
    ]
    return "\n".join(out)


def write_report(study: Study, out_dir: str | Path, discussion: str | None = None, dpi: int = 90) -> Path:
    """Write ``REPORT.md``, the PNG figures and the CSV files of a study into ``out_dir``.

    Args:
        study: the :class:`Study`.
        out_dir: destination folder (created).
        discussion: Markdown text for the "Discussion" section.
        dpi: resolution of the PNGs.

    Returns:
        The path of ``REPORT.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_frame(study).to_csv(out / "summary.csv", index=False, float_format="%.6g")
    error_frame(study).to_csv(out / "error_by_index.csv", index=False, float_format="%.6g")
    overlap_frame(study).to_csv(out / "overlap.csv", index=False, float_format="%.6g")
    rayleigh_frame(study).to_csv(out / "rayleigh.csv", index=False, float_format="%.6g")
    study.synthetic.to_csv(out / "synthetic.csv", index=False, float_format="%.6g")
    top_error_frame(study).to_csv(out / "top_error.csv", index=False, float_format="%.6g")
    claim_checks(study).to_csv(out / "claims.csv", index=False)
    figures = _figures(study, out, dpi)
    path = out / "REPORT.md"
    path.write_text(_markdown(study, figures, discussion), encoding="utf-8")
    return path
