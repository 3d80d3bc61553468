"""The report pipeline on a tiny run: Markdown, PNGs and CSVs that contain what they claim."""

from __future__ import annotations

import re
import sys

import pandas as pd
import pytest
import torch
from torch import nn

from tritonkron.analysis.__main__ import main
from tritonkron.analysis.report import claim_checks, run_study, write_report

F64 = torch.float64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny linear algebra: one thread avoids OpenMP oversubscription slow-downs on shared CPUs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _forward(model, batch):
    return model(batch[0])


def _criterion(z, batch):
    return nn.functional.cross_entropy(z, batch[1])


@pytest.fixture(scope="module")
def study():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g, dtype=F64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()

    def batches(count, size):
        return [(x[i], y[i]) for i in (torch.randint(400, (size,), generator=g) for _ in range(count))]

    calls = []
    result = run_study(
        model, _forward, _criterion, batches(120, 16), batches(2, 64),
        max_dim=24, top_k=4, k_max=8, seed=0, meta={"workload": "tiny synthetic"},
        progress=lambda units, what: calls.append((units, what)),
    )  # fmt: skip
    return result, calls


def test_run_study_covers_every_layer(study):
    result, calls = study
    names = [ls.samples.name for ls in result.layers]
    assert names == ["0.weight", "2.weight"]
    big, small = result.layers
    assert big.samples.subset and big.samples.sub_shape[0] * big.samples.sub_shape[1] <= 24
    assert not small.samples.subset
    assert big.factor_overlap is not None and big.factor_overlap.shape == (2, len(big.factor_ks))
    assert small.factor_overlap is None
    assert small.alignment.overlap["C"].shape == (2, len(small.alignment.ks))
    g = small.samples.grads.reshape(120, -1)
    gbar = g.mean(0)
    u1 = small.spectral.eigenvectors[:, 0]
    assert small.mean_cos == pytest.approx(float((u1 @ gbar).abs() / gbar.norm()))
    assert small.mean_share == pytest.approx(float(gbar @ gbar / small.spectral.eigenvalues[0]))
    # 120 sample ticks + per layer (eigh + 3 projections + 2 resamples) + 2 full-layer + synthetic.
    assert sum(u for u, _ in calls) == 120 + 2 * 6 + 2 + 1


def test_write_report_writes_markdown_pngs_and_csvs(study, tmp_path):
    result, _ = study
    path = write_report(result, tmp_path, discussion="Hand-written **discussion** here.")
    text = path.read_text()
    for section in (
        "## Synthetic covariances",
        "## Error split",
        "## Hessian alignment",
        "## Automatic claim checks",
        "## Discussion",
    ):
        assert section in text
    assert "Hand-written **discussion** here." in text
    assert "tiny synthetic" in text and "sub-grid" in text
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["error_0_weight.png", "error_2_weight.png", "overlap.png", "rayleigh.png"]
    for name in pngs:
        assert f"]({name})" in text
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 6 and set(summary.divergence) == {"frobenius", "von_neumann", "logdet"}
    # The numbers in the CSV are the ones in the study, and the Markdown shows them.
    p = result.layers[1].spectral.projections["logdet"]
    row = summary[(summary.layer == "2.weight") & (summary.divergence == "logdet")].iloc[0]
    # CSVs keep 6 significant digits.
    assert row.top_error == pytest.approx(p.top_error, rel=1e-5)
    assert row.whitened_max == pytest.approx(p.whitened_max, rel=1e-5)
    assert f"{p.whitened_max:.3g}" in text
    errors = pd.read_csv(tmp_path / "error_by_index.csv")
    assert len(errors) == 3 * (24 + 18)
    lam = result.layers[1].spectral.eigenvalues
    got = errors[(errors.layer == "2.weight") & (errors.divergence == "frobenius")].eigenvalue.to_numpy()
    assert got == pytest.approx(lam.numpy(), rel=1e-5)
    overlap = pd.read_csv(tmp_path / "overlap.csv")
    assert {"C", "kron:frobenius", "kron:von_neumann", "kron:logdet", "full-layer:L(x)R"} <= set(
        overlap.basis
    )
    assert overlap.overlap_mean.between(0, 1 + 1e-9).all()
    assert ((overlap.random - overlap.k / overlap.dim).abs() <= 1e-5 * overlap.random).all()
    rayleigh = pd.read_csv(tmp_path / "rayleigh.csv")
    assert set(rayleigh.layer) == {"0.weight", "2.weight"} and rayleigh.top.any() and (~rayleigh.top).any()
    synthetic = pd.read_csv(tmp_path / "synthetic.csv")
    assert set(synthetic.case) == {"kronecker", "spiked", "noise"}
    claims = pd.read_csv(tmp_path / "claims.csv")
    assert set(claims.holds) <= {"yes", "no"} and len(claims) > 0


def test_markdown_tables_are_well_formed(study, tmp_path):
    """Every table row has as many cell separators as its header (pipes in cells are escaped)."""
    result, _ = study
    lines = write_report(result, tmp_path).read_text().splitlines()
    header = None
    checked = 0
    for line in lines:
        if not line.startswith("|"):
            header = None
            continue
        cells = len(re.findall(r"(?<!\\)\|", line))
        if header is None:
            header = cells
        assert cells == header, line
        checked += 1
    assert checked > 50


def test_claim_checks_are_decided_from_the_numbers(study):
    result, _ = study
    checks = claim_checks(result)
    assert set(checks.holds) <= {"yes", "no"}
    own = checks[checks.claim.str.startswith("each projection meets")]
    assert (own.holds == "yes").all()  # stationarity of every projection on real samples
    p = result.layers[1].spectral.projections
    f_best = min(p, key=lambda d: p[d].top_error) == "frobenius"
    row = checks[(checks.layer == "2.weight") & (checks.claim == "F most accurate on the top-4 directions")]
    assert row.holds.item() == ("yes" if f_best else "no")


def test_report_without_matplotlib_says_figures_were_skipped(study, tmp_path, monkeypatch):
    result, _ = study
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = write_report(result, tmp_path).read_text()
    assert "matplotlib is not installed" in text and not list(tmp_path.glob("*.png"))
    assert "No discussion supplied" in text


def test_cli_on_digits_end_to_end(tmp_path, capsys):
    disc = tmp_path / "discussion.md"
    disc.write_text("CLI discussion text.")
    out = tmp_path / "report"
    args = ["--workload", "digits", "--steps", "5", "--samples", "60", "--hidden", "4", "--max-dim", "64",
            "--resamples", "1", "--curvature-batch", "64", "--k-max", "8", "--top-k", "4",
            "--out", str(out), "--discussion", str(disc), "--dpi", "40"]  # fmt: skip
    assert main(args) == 0
    text = (out / "REPORT.md").read_text()
    assert "CLI discussion text." in text and "digits" in text
    assert "S = 60 minibatch gradients" in text
    assert (out / "overlap.png").exists() and (out / "summary.csv").exists()
    assert "wrote" in capsys.readouterr().out
