"""The stacking benchmark on a tiny run: every configuration is timed and stacking keeps the bits."""

from __future__ import annotations

import math

from perf.bench_stacking import run


def test_tiny_stacking_run_reports_every_configuration_with_equal_bits() -> None:
    table = run(steps=2, warmup=1, block_sizes=(128,))
    assert list(table["optimizer"]) == ["AdamW", "Kron b=128 stack=False", "Kron b=128 stack=True"]
    assert all(math.isfinite(v) and v > 0 for v in table["mean_ms"])
    kron = table[table["optimizer"] != "AdamW"]
    assert list(kron["same bits"]) == ["yes", "yes"]
    assert math.isclose(float(kron["speedup_vs_unstacked"].iloc[0]), 1.0)
