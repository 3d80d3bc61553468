"""``python -m perf.sketch_schedule``: the measurement of the sketch's refresh period on a planted stream."""

from __future__ import annotations

import pytest

from perf.sketch_schedule import main, planted_stream, run


@pytest.mark.parametrize("divergence", ["logdet", "frobenius"])
def test_refresh_every_step_leaves_nothing_between_diag_h_and_h(divergence: str) -> None:
    """With T = 1 every compression is diagonal when the direction is taken, so the two directions
    agree exactly; with T = 5 they differ, and the subspace overlap is a fraction."""
    grads = planted_stream(30, 2, 12, 10, 2, noise=1.0, seed=0)
    every = run(divergence, 1, grads, rank=2, ell=4, warmup=5)
    assert every["direction max"] == 0.0
    stale = run(divergence, 5, grads, rank=2, ell=4, warmup=5)
    assert stale["direction median"] > 0.0
    assert 0.0 < stale["overlap"] <= 1.0 + 1e-12


def test_main_prints_one_row_per_divergence_and_period(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--periods", "1,3", "--steps", "25", "--shape", "8,8", "--rank", "2", "--sketch-rank", "4"])
    table = capsys.readouterr().out
    assert table.count("| logdet") == 2 and table.count("| frobenius") == 2
