"""The soak benchmark's fault injection on a short run: every fault is survived and counted."""

from __future__ import annotations

import tritonkron.step.dense as preconditioner
from perf.soak import run


def test_short_soak_counts_every_injected_fault_and_stays_finite() -> None:
    original = preconditioner.subspace_iteration
    row = run("Kron (faults)", steps=60, nan_rate=0.2, fail_every=3)
    assert preconditioner.subspace_iteration is original  # the patch is undone
    assert row["non-finite grads injected"] > 0 and row["refresh failures injected"] > 0
    assert row["param steps skipped"] == row["non-finite grads injected"]
    assert row["all params finite"]
    assert row["test acc %"] > 50  # it still learns (10 classes)
