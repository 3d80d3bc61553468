"""``python -m perf.bench_lr`` at a tiny size: every (optimizer, lr) row, skipped peers named, the figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from perf import bench_lr, peers
from perf.report import lr_section
from perf.report_plots import plot_lr_sensitivity

CHOSEN = ["AdamW", "heavyball SOAP", 'Kron bound="adam" + bias_correction']
LRS = [1e-3, 1e-2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path, str]:
    out = tmp_path_factory.mktemp("lr") / "lr_sensitivity_2000-01-01.md"
    real = peers.available
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(peers, "available", lambda name: None if name == "heavyball" else real(name))
        printed: list[str] = []
        mp.setattr("builtins.print", lambda *a, **k: printed.append(" ".join(map(str, a))))
        args = ["--tiny", "--steps", "2", "--seeds", "1", "--lrs", ",".join(map(str, LRS))]
        runs = bench_lr.main([*args, "--optimizers", ",".join(CHOSEN), "--no-extend", "--out", str(out)])
    return runs, out, "\n".join(printed)


def test_every_row(tiny: tuple[pd.DataFrame, Path, str]) -> None:
    runs, out, printed = tiny
    ran = [label for label in CHOSEN if label != "heavyball SOAP"]
    assert list(dict.fromkeys(runs["optimizer"])) == ran
    assert "heavyball SOAP: skipped: heavyball not installed" in printed
    per_lr = bench_lr.lr_table(runs)
    assert [(o, lr) for o, lr in zip(per_lr["optimizer"], per_lr["lr"], strict=True)] == [
        (o, lr) for o in ran for lr in LRS
    ]
    assert runs["final_val_loss"].map(math.isfinite).all() and (runs["steps"] == 2).all()
    assert (runs["worst_update_rms_over_lr"] > 0).all()
    summary = bench_lr.sensitivity_table(runs)
    assert list(summary["optimizer"]) == ran
    text = out.read_text()
    for label in ran:
        assert text.count(f"| {label} ") == 1 + len(LRS)  # the summary row and one row per lr
    assert "heavyball SOAP: skipped" in text
    assert out.with_suffix(".csv").is_file() and out.with_suffix(".png").is_file()


def test_plot_and_report_section(tiny: tuple[pd.DataFrame, Path, str], tmp_path: Path) -> None:
    runs, out, _ = tiny
    diverged = runs.iloc[:1].assign(lr=1e-1, final_val_loss=math.nan, diverged=True)
    path = plot_lr_sensitivity(pd.concat([runs, diverged]), tmp_path / "lr.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert json.loads(image.text["Description"]) == list(dict.fromkeys(runs["optimizer"]))
    assert lr_section(tmp_path, Path("results")) == []
    lines = lr_section(out.parent, Path("results"))
    assert "![final loss against lr](results/lr_sensitivity_2000-01-01.png)" in lines


def test_grid_and_ladder() -> None:
    assert bench_lr.lr_grid(1e-3) == [3e-4, 1e-3, 3e-3]
    assert bench_lr.lr_grid(1e-2) == [3e-3, 1e-2, 3e-2]
    assert set(bench_lr.CENTERS) == {e.label for e in bench_lr.entries()}
