"""The study's PNG figures, written next to the report.

``error_<layer>.png``: the Kronecker error of each projection per eigendirection of C, over C's
spectrum; ``overlap.png``: overlap against k with the curvature's top eigenvectors;
``rayleigh.png``: Rayleigh quotients of C's eigenvectors and their stability across resamples.
They need matplotlib; without it none are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tritonkron.analysis.study import Study
from tritonkron.analysis.tables import SHORT, spread

__all__ = ["write_figures"]


def write_figures(study: Study, out: Path, dpi: int) -> list[str]:
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
            ax.errorbar(al.ks, o.mean(0), yerr=spread(o), marker="o", ms=3, label=basis)
        if ls.factor_overlap is not None:
            o = ls.factor_overlap
            ax.errorbar(ls.factor_ks, o.mean(0), yerr=spread(o), ls="--", label="full-layer L(x)R")
        ax.plot(al.ks, al.random, "k:", label="random k/d")
        ax.set(xscale="log", ylim=(0, 1.02), xlabel="k", ylabel="||U_k' V_k||^2 / k", title=ls.samples.name)
    axes[0][0].legend(fontsize=7)
    save(fig, "overlap.png")
    fig, axes = plt.subplots(2, len(with_al), figsize=(4.2 * len(with_al), 5.6), squeeze=False, sharex="col")
    for (top, bottom), ls in zip(axes.T, with_al, strict=True):
        al, x = ls.alignment, ls.alignment.index + 1
        rq = al.rayleigh.mean(0)
        top.errorbar(x, rq, yerr=spread(al.rayleigh), fmt="o", ms=3)
        top.set(xscale="log", yscale="log", title=ls.samples.name, ylabel="u_i' H u_i / lambda_max(H)")
        top.set_ylim(bottom=max(float(rq.clamp_min(1e-300).min()), 1e-6) / 2)
        bottom.errorbar(x, al.cosine.mean(0), yerr=spread(al.cosine), fmt="o", ms=3, color="tab:red")
        bottom.set(xscale="log", ylim=(0, 1.05), xlabel="eigen-index i of C", ylabel="|cos(u_i(r), u_i)|")
        for ax in (top, bottom):
            ax.axvline(ls.spectral.top_k + 0.5, color="grey", ls=":", lw=1)
    save(fig, "rayleigh.png")
    return names


def _running_median(x: Tensor, width: int = 9) -> Tensor:
    if x.numel() < width:
        return x
    pad = width // 2
    xp = torch.cat([x[:1].repeat(pad), x, x[-1:].repeat(pad)])
    return xp.unfold(0, width, 1).median(dim=1).values


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)
