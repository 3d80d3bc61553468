"""A tiny end-to-end run of ``python -m perf``: train → CSVs → REPORT.md and PNGs, then step → report.

The run uses the hidden ``--tiny`` sizes (seconds on 2 cores) and pretends heavyball is not
installed, so the report must list its three optimizers as skipped rather than drop them.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from perf import peers
from perf.__main__ import main
from perf.device import describe_device, resolve_device

CORE = ["AdamW", "Muon (fp32 NS)", "Kron logdet", "Kron logdet r=4"]
ABLATIONS = ["Kron frobenius", "Kron logdet r=4 sketch"]
HEAVYBALL = ["heavyball SOAP", "heavyball KLShampoo", "heavyball PSGDKron"]
WORKLOADS = ["char_lm", "mlp", "cnn"]


def _section(text: str, workload: str) -> str:
    return text.split(f"## {workload}:", 1)[1].split("\n## ", 1)[0]


def _table_rows(section: str) -> dict[str, list[str]]:
    """First column → cells of the summary table (the first Markdown table of the section)."""
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| optimizer") and not line.startswith("|:"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _png_labels(path: Path) -> list[str]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] <= 1200 and image.size[1] <= 600
        return json.loads(image.text["Description"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("perf")
    results = root / "results"
    real = peers.available
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(peers, "available", lambda name: None if name == "heavyball" else real(name))
        args = [
            "train",
            "--tiny",
            "--results-dir",
            str(results),
            "--optimizers",
            *CORE,
            *ABLATIONS,
            *HEAVYBALL,
        ]
        assert main(args) == 0
        assert (
            main(["step", "--tiny", "--results-dir", str(results), "--optimizers", "AdamW", "Kron logdet"])
            == 0
        )
    return root


def test_report_lists_every_optimizer_and_skips(tiny_run: Path) -> None:
    text = (tiny_run / "REPORT.md").read_text(encoding="utf-8")
    optimizers = text.split("## Optimizers", 1)[1].split("\n## ", 1)[0]
    for label in HEAVYBALL:
        assert f"| {label} " in optimizers
        line = next(x for x in optimizers.splitlines() if x.startswith(f"| {label} "))
        assert "skipped: heavyball not installed" in line
    shampoo = next(x for x in optimizers.splitlines() if x.startswith("| pytorch-optimizer Shampoo "))
    # Not installed outranks not requested: the report says why a peer has no numbers.
    installed = importlib.util.find_spec("pytorch_optimizer") is not None
    assert ("not requested" if installed else "skipped: pytorch-optimizer not installed") in shampoo
    assert "torch 2." in text and "commit `" in text and "load average" in text


def test_summary_tables_hold_the_runs_they_claim(tiny_run: Path) -> None:
    text = (tiny_run / "REPORT.md").read_text(encoding="utf-8")
    runs = pd.read_csv(tiny_run / "results" / "train_runs.csv")
    for workload in WORKLOADS:
        rows = _table_rows(_section(text, workload))
        expected = CORE + (ABLATIONS if workload == "char_lm" else [])
        assert list(rows) == expected, workload
        assert not any(label in rows for label in HEAVYBALL)
        ran = runs[runs["workload"] == workload]
        assert set(ran["optimizer"]) == set(expected)
        for label in CORE:  # grid of 2 lrs (+ 1 past the best edge) on seed 0, then seed 1 at the best lr
            mine = ran[ran["optimizer"] == label]
            grid = mine[mine["phase"] == "grid"]
            assert sorted(mine["phase"]) == ["grid"] * len(grid) + ["seed"]
            assert len(grid) == 3  # with two points the best is always at an edge: one extension
            best_lr = float(mine[mine["phase"] == "seed"]["lr"].iloc[0])
            assert best_lr == grid.loc[grid["final_val_loss"].idxmin(), "lr"]
            assert rows[label][0].rstrip("*") == f"{best_lr:g}"
            assert rows[label][1] == "2"  # seeds
            final = mine[mine["lr"] == best_lr]["final_val_loss"].mean()
            assert float(rows[label][2]) == pytest.approx(final, rel=1e-3)
        header = next(x for x in _section(text, workload).splitlines() if x.startswith("| optimizer"))
        columns = [c.strip() for c in header.strip("|").split("|")]
        adamw = dict(zip(columns[1:], rows["AdamW"], strict=True))
        assert float(adamw["p50 × AdamW"]) == 1.0 and float(adamw["mean × AdamW"]) == 1.0
        assert "final val acc %" in columns if workload != "char_lm" else "final val acc %" not in columns
    assert "Goals on this workload" in _section(text, "char_lm")
    assert re.search(r"\bissue \d", text) is None


def test_plots_exist_and_show_the_reported_optimizers(tiny_run: Path) -> None:
    text = (tiny_run / "REPORT.md").read_text(encoding="utf-8")
    for workload in WORKLOADS:
        png = tiny_run / "results" / f"report_{workload}.png"
        assert f"](results/report_{workload}.png)" in text
        labels = _png_labels(png)
        assert set(CORE) <= set(labels)
        assert set(labels) <= set(_table_rows(_section(text, workload)))
    assert "](results/report_step.png)" in text
    assert _png_labels(tiny_run / "results" / "report_step.png") == ["AdamW", "Kron logdet"]


def test_report_and_csvs_state_the_device(tiny_run: Path) -> None:
    results = tiny_run / "results"
    session = json.loads((results / "train_sessions.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    described = session["env"]["device"]
    assert described == describe_device(resolve_device("auto"))  # the default --device: "cpu (2 threads)"
    text = (tiny_run / "REPORT.md").read_text(encoding="utf-8")
    assert f"\n- device: {described}\n" in text
    assert f"steps, device {described} (" in text.split("## Headline", 1)[1]
    assert set(pd.read_csv(results / "train_runs.csv")["device"]) == {described}
    step = pd.read_csv(results / "step.csv")
    assert set(step["device"]) == {described}
    assert f"Device: {described}; CPU: " in text.split("## Step time", 1)[1]


def test_curves_and_step_csv_and_rerender(tiny_run: Path) -> None:
    results = tiny_run / "results"
    runs = pd.read_csv(results / "train_runs.csv")
    curves = pd.read_csv(results / "train_curves.csv")
    assert len(curves.groupby(["workload", "optimizer", "lr", "seed"])) == len(runs)
    assert (curves.groupby(["workload", "optimizer", "lr", "seed"])["step"].max() == 8).all()
    step = pd.read_csv(results / "step.csv")
    assert set(step["provider"]) == {"AdamW", "Kron logdet"}
    assert {"op", "shape", "m", "n", "B", "dtype", "p50", "p20", "p80", "git_commit", "timestamp"} <= set(
        step
    )
    before = (tiny_run / "REPORT.md").read_text(encoding="utf-8")
    assert main(["report", "--results-dir", str(results)]) == 0
    assert (tiny_run / "REPORT.md").read_text(encoding="utf-8") == before
