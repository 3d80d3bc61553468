"""The learning-rate grid of the training benchmark extends past an edge while the best lies there."""

from __future__ import annotations

import dataclasses
import math

import pytest

import perf.train as train
from perf.peers import OptimizerEntry


def _record(lr: float, seed: int, phase: str, loss: float) -> train.RunRecord:
    fields = {f.name: 0 for f in dataclasses.fields(train.RunRecord) if f.name != "curve"}
    fields |= {"workload": "w", "optimizer": "o", "lr": lr, "seed": seed, "phase": phase}
    fields |= {"diverged": not math.isfinite(loss), "final_val_loss": loss}
    return train.RunRecord(**fields)


def _run(monkeypatch: pytest.MonkeyPatch, loss_of_lr, extend_edges: int) -> list[train.RunRecord]:
    """Run the protocol with a fake trainer whose final loss is ``loss_of_lr(lr)``."""

    def fake_run_one(workload, entry, lr, seed, phase, batches):  # noqa: ANN001, ANN202
        return _record(lr, seed, phase, loss_of_lr(lr))

    monkeypatch.setattr(train, "run_one", fake_run_one)
    workload = train.Workload(
        name="w",
        title="t",
        data="d",
        note="",
        make_model=lambda: None,
        batches=lambda seed: [],
        loss=lambda *a: 0.0,
        evaluate=lambda m: (0.0, 0.0),
        steps=1,
        eval_every=1,
        lrs=(1e-3, 3e-3, 1e-2),
        params=1,
    )
    entry = OptimizerEntry(label="o", kind="tritonkron", source="s", build=lambda model, lr: None)
    return train.run_benchmark(workload, [entry], seeds=2, ablation_grid=True, extend_edges=extend_edges)


def test_best_at_the_upper_edge_extends_upwards_until_interior(monkeypatch: pytest.MonkeyPatch) -> None:
    optimum = 0.05  # outside the grid: the loss falls until 0.05, then rises
    records = _run(monkeypatch, lambda lr: abs(math.log(lr / optimum)), extend_edges=3)
    grid = [r.lr for r in records if r.phase == "grid"]
    assert grid[:3] == [1e-3, 3e-3, 1e-2]
    assert grid[3] == pytest.approx(3e-2) and grid[4] == pytest.approx(9e-2)
    assert len(grid) == 5  # 9e-2 is worse than 3e-2, so 3e-2 is interior: no sixth lr
    seeds = [r for r in records if r.phase == "seed"]
    assert [r.lr for r in seeds] == [pytest.approx(3e-2)]


def test_best_at_the_lower_edge_extends_downwards_and_respects_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _run(monkeypatch, lambda lr: lr, extend_edges=2)  # smaller is always better
    grid = sorted(r.lr for r in records if r.phase == "grid")
    assert len(grid) == 5
    assert grid[0] == pytest.approx(1e-3 / 9)


def test_no_extension_when_disabled_or_interior(monkeypatch: pytest.MonkeyPatch) -> None:
    assert len([r for r in _run(monkeypatch, lambda lr: lr, 0) if r.phase == "grid"]) == 3
    interior = _run(monkeypatch, lambda lr: abs(math.log(lr / 3e-3)), 2)
    assert len([r for r in interior if r.phase == "grid"]) == 3
