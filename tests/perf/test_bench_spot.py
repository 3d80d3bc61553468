"""The spot-check benchmark: its run plans resolve, its configurations differ as labelled, and a
tiny run produces one finite row per run."""

from __future__ import annotations

import math

import pytest
import torch

from perf import bench_spot
from perf.peers import available

OPTIONAL = {"heavyball SOAP": "heavyball"}


@pytest.mark.parametrize("study", ["betas", "long", "clip"])
def test_every_planned_configuration_exists(study: str) -> None:
    entries = bench_spot.configurations()
    for _, label, lr, _ in bench_spot.study_runs(study):
        assert lr > 0
        if label in OPTIONAL and not available(OPTIONAL[label]):
            continue
        assert label in entries, label


def test_unknown_study_is_rejected() -> None:
    with pytest.raises(ValueError, match="study must be"):
        bench_spot.study_runs("short")


def test_configurations_carry_their_labelled_options() -> None:
    entries = bench_spot.configurations()
    model = torch.nn.Linear(4, 3)
    for label, betas, block in [
        ("Kron logdet β₂=0.95", (0.9, 0.95), 1024),
        ("Kron logdet β₂=0.98", (0.9, 0.98), 1024),
        ("Kron logdet β₂=0.95 b=128", (0.9, 0.95), 128),
    ]:
        group = entries[label].build(model, 1e-3).param_groups[0]
        assert tuple(group["betas"]) == betas and group["block_size"] == block
    for label, block in [("Kron logdet max_update_rms=1", 1024), ("Kron logdet b=128 max_update_rms=1", 128)]:
        group = entries[label].build(model, 1e-3).param_groups[0]
        assert group["max_update_rms"] == 1.0 and group["block_size"] == block
    assert entries["Kron logdet β₂=0.95"].build(model, 1e-3).param_groups[0]["max_update_rms"] is None
    adamw = entries["AdamW β₂=0.98"].build(model, 1e-3).param_groups[0]
    assert tuple(adamw["betas"]) == (0.9, 0.98)


def test_tiny_run_gives_one_finite_row_per_run() -> None:
    runs = [("char_lm", "Kron logdet β₂=0.95", 1e-2, 0), ("mlp", "AdamW β₂=0.98", 1e-3, 1)]
    table = bench_spot.run_study("betas", runs, tiny=True)
    assert list(table["configuration"]) == ["Kron logdet β₂=0.95", "AdamW β₂=0.98"]
    assert list(table["seed"]) == [0, 1]
    assert all(math.isfinite(x) for x in table["final val loss"])
    assert (table["steps"] > 0).all()
