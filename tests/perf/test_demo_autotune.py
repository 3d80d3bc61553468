"""The autotune step of ``python -m perf.demo``: tune, write the file, train ``rank="auto"`` on it, report."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from autotune.measure import cpu_threads
from autotune.rank import sketch_cap
from perf import demo
from perf.workloads import load_digits_dataset
from tritonkron.tuning.file import load_tuning

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def test_autotune_demo_writes_a_tuning_file_with_dense_and_sketched_choices(tmp_path: Path, digits) -> None:
    out = tmp_path / "results" / "tuning.json"
    with cpu_threads(1):
        result, path, seconds = demo.autotune_demo(
            digits, [32], out, steps=6, batch_size=64, precondition_every=3
        )
    assert path == out and out.is_file() and seconds > 0
    assert len(result.losses) == 6 and all(math.isfinite(v) for v in result.losses)
    table = load_tuning(out)
    entries = {e.shape: e for e in table.entries}
    assert set(entries) == {(32, 64), (10, 32)}  # the MLP 64 → 32 → 10's weight matrices
    for (m, n), entry in entries.items():
        assert entry.rank_a is None or 1 <= entry.rank_a <= m
        assert entry.rank_b is None or 1 <= entry.rank_b <= n
        s = entry.sketch
        assert s is not None and max(s.rank_a, s.rank_b) <= s.sketch_rank
        assert s.sketch_rank <= sketch_cap(m, n, 0.125)
    lines = demo.autotune_section(result, path, seconds)
    text = "\n".join(lines)
    assert lines[0] == "## Autotune" and str(out) in text
    assert re.fullmatch(r"cpu \(\d+ threads?\)", result.device)  # with the tuned thread count
    assert f"calibrated the MLP on {result.device} for 6 steps" in text and "(tuned for `cpu`)" in text
    assert "| 32x64 " in text and "| 10x32 " in text and "ℓ " in text


def test_tuned_specs_train_on_the_demo_file(tmp_path: Path, digits) -> None:
    with cpu_threads(1):
        _, path, _ = demo.autotune_demo(
            digits, [32], tmp_path / "tuning.json", steps=4, batch_size=64, precondition_every=3
        )
        specs = {s.label: s for s in demo.optimizer_specs(8, 3, path)}
        assert {"Kron logdet rank=auto", "Kron logdet rank=auto sketch"} <= set(specs)
        assert "Kron logdet rank=auto" not in {s.label for s in demo.optimizer_specs(8, 3)}
        batches = demo.batch_schedule(digits.x_train.shape[0], 30, 64, 0)
        for label in ("Kron logdet rank=auto", "Kron logdet rank=auto sketch"):
            run = demo.train_run(digits, specs[label], 1e-2, 0, batches, [32])
            assert run.steps_done == 30 and math.isfinite(run.train_loss)
            assert run.train_loss < math.log(10)  # better than the uniform guess after 30 steps


def test_demo_rejects_too_few_tune_steps(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--tune-steps"):
        demo.main(["--dataset", "digits", "--tune-steps", "1", "--out", str(tmp_path / "d.md")])


def test_torch_threads_survive_the_autotune_step(tmp_path: Path, digits) -> None:
    before = torch.get_num_threads()
    demo.autotune_demo(digits, [16], tmp_path / "t.json", steps=3, batch_size=32, precondition_every=2)
    assert torch.get_num_threads() == before
