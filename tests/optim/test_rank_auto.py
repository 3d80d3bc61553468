"""``Kron(rank="auto", tuning=...)``: per-shape block size and per-factor ranks from a tuning file."""

from __future__ import annotations

import warnings

import pytest
import torch

import tritonkron as tk
from tritonkron.tuning.entry import TuningEntry, TuningFileError
from tritonkron.tuning.file import TuningTable, TuningWarning, device_name


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Tanh(), torch.nn.Linear(10, 3))


def _table(tmp_path, entries: list[TuningEntry]):
    return TuningTable(device=device_name(torch.device("cpu")), entries=entries).save(
        tmp_path / "tuning.json"
    )


def _train(opt: torch.optim.Optimizer, model: torch.nn.Module, steps: int = 12) -> list[float]:
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(32, 12, generator=g), torch.randn(32, 3, generator=g)
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_auto_uses_per_factor_ranks_and_block_size_from_the_file(tmp_path) -> None:
    path = _table(
        tmp_path,
        [
            TuningEntry(shape=(10, 12), dtype="float32", block_size=6, rank_a=2, rank_b=5),
            TuningEntry(shape=(3, 10), dtype="float32", block_size=1024, rank_a=None, rank_b=4),
        ],
    )
    model = _model()
    opt = tk.Kron(model.parameters(), lr=1e-2, rank="auto", tuning=path)
    losses = _train(opt, model)
    assert losses[-1] < losses[0]
    first, second = model[0].weight, model[2].weight
    # block_size 6 splits 10 × 12 into 2 × 2 blocks of 5 × 6
    assert opt.state[first]["blocks"][0]["factor_a"].shape == (4, 5, 5)
    assert opt.state[second]["blocks"][0]["factor_b"].shape == (1, 10, 10)


def test_auto_equals_the_explicit_ranks_it_reads(tmp_path) -> None:
    """A file with rank_a = rank_b = k and the default block reproduces rank=k exactly."""
    path = _table(
        tmp_path,
        [
            TuningEntry(shape=(10, 12), dtype="float32", rank_a=3, rank_b=3),
            TuningEntry(shape=(3, 10), dtype="float32", rank_a=3, rank_b=3),
        ],
    )
    auto, fixed = _model(), _model()
    _train(tk.Kron(auto.parameters(), lr=1e-2, rank="auto", tuning=path), auto)
    _train(tk.Kron(fixed.parameters(), lr=1e-2, rank=3), fixed)
    for a, b in zip(auto.parameters(), fixed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_per_factor_ranks_differ_from_a_single_rank(tmp_path) -> None:
    path = _table(tmp_path, [TuningEntry(shape=(10, 12), dtype="float32", rank_a=2, rank_b=None)])
    auto, fixed = _model(), _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)  # the (3, 10) shape is not in the file
        _train(tk.Kron(auto.parameters(), lr=1e-2, rank="auto", tuning=path), auto)
    _train(tk.Kron(fixed.parameters(), lr=1e-2, rank=2), fixed)
    assert not torch.equal(auto[0].weight, fixed[0].weight)


def test_auto_without_a_file_warns_and_runs_full_rank(monkeypatch) -> None:
    monkeypatch.delenv("TRITONKRON_TUNING", raising=False)
    auto, full = _model(), _model()
    with pytest.warns(TuningWarning, match="without a tuning file"):
        opt = tk.Kron(auto.parameters(), lr=1e-2, rank="auto")
    _train(opt, auto)
    _train(tk.Kron(full.parameters(), lr=1e-2), full)
    assert all(torch.equal(a, b) for a, b in zip(auto.parameters(), full.parameters(), strict=True))


def test_corrupt_tuning_file_fails_at_construction(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(TuningFileError, match="bad.json"):
        tk.Kron(_model().parameters(), rank="auto", tuning=path)


def test_auto_with_sketch_trains(tmp_path) -> None:
    path = _table(
        tmp_path,
        [
            TuningEntry(shape=(10, 12), dtype="float32", rank_a=2, rank_b=3),
            TuningEntry(shape=(3, 10), dtype="float32", rank_a=None, rank_b=2),
        ],
    )
    model = _model()
    losses = _train(tk.Kron(model.parameters(), lr=1e-2, rank="auto", sketch=True, tuning=path), model)
    assert losses[-1] < losses[0]
