"""Automatic claim checks: docs/maths.md §3's qualitative statements tested on every layer of a study.

Projection claims (F most accurate on the top directions, LD best-bounded whitening, vN in
between, each projection meeting its own residual condition) and curvature-alignment claims
(top eigenspace of C aligned with the curvature, noisier and less stable tail).
"""

from __future__ import annotations

import pandas as pd
from torch import Tensor

from tritonkron.analysis.measures import DIVERGENCES
from tritonkron.analysis.study import LayerStudy, Study
from tritonkron.analysis.tables import SHORT, format_cell

__all__ = ["claim_checks"]


def _at_k(ks: list[int], values: Tensor, k: int) -> tuple[int, float]:
    """The mean overlap at the largest tabulated k ≤ ``k`` (and that k)."""
    j = max(i for i, kk in enumerate(ks) if kk <= max(k, ks[0]))
    return ks[j], float(values[:, j].mean())


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
            f"max deviation {format_cell(own)}",
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
            f"overlap {format_cell(o)} vs random {format_cell(rnd)}",
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
            f"median u'Hu/lmax: top {format_cell(rt)}, tail {format_cell(rtail)}",
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
                f"mean |cos|: top {format_cell(ct)}, tail {format_cell(ctail)}",
            )
        )
        cv = al.rayleigh.std(0) / rq.abs().clamp_min(1e-300)
        vt, vtail = float(cv[top].median()), float(cv[~top].median())
        out.append(
            (
                "tail Rayleigh quotients vary more across resamples",
                vtail > vt,
                f"median CV: top {format_cell(vt)}, tail {format_cell(vtail)}",
            )
        )
    return out


def claim_checks(study: Study) -> pd.DataFrame:
    """Which of docs/maths.md §3's claims hold on each layer, with the numbers that decide it."""
    rows = [
        (ls.samples.name, claim, "yes" if holds else "no", evidence)
        for ls in study.layers
        for claim, holds, evidence in _projection_claims(ls) + _alignment_claims(ls)
    ]
    return pd.DataFrame(rows, columns=["layer", "claim", "holds", "evidence"])


def _triple(values: dict[str, float]) -> str:
    return ", ".join(f"{SHORT[d]} {format_cell(values[d])}" for d in DIVERGENCES)
