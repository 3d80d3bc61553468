"""Sketch-aware tuning: the (k_A, k_B, ℓ) rule, its cost cap, the tuning-file field and ``rank="auto", sketch=True``."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import tritonkron as tk
from autotune import space
from autotune.measure import cpu_threads
from autotune.rank import (
    SKETCH_MIN_CAP,
    ParamSpectra,
    explain_rank,
    rank_profile,
    sketch_cap,
    sketch_ranks,
    sketch_width,
)
from autotune.search import SearchOptions, tune_model
from tritonkron.tuning.entry import SketchTuning, TuningEntry, TuningFileError
from tritonkron.tuning.file import TuningTable, TuningWarning, load_tuning
from tritonkron.tuning.lookup import sketch_tuning_for


def _decaying(d: int, power: float = 1.0, seed: int = 0) -> Tensor:
    """A power-law spectrum λ_i = i^(-power) with a little noise, descending, ``[d]``."""
    gen = torch.Generator().manual_seed(seed)
    lam = torch.arange(1, d + 1, dtype=torch.float64).pow(-power) * (1 + 0.01 * torch.rand(d, generator=gen))
    return lam.sort(descending=True).values.float()


def _planted(rank: int, d: int) -> Tensor:
    return torch.cat([torch.linspace(50.0, 10.0, rank), torch.ones(d - rank)])


def _spectra(m: int, n: int, eig_a: Tensor, eig_b: Tensor) -> ParamSpectra:
    return ParamSpectra(
        "w", (m, n), torch.float32, max(m, n), (eig_a[None],), (eig_b[None],), (None,), (None,)
    )


@pytest.mark.parametrize(
    ("m", "n", "budget", "cap"),
    [(128, 784, 0.125, 98), (64, 128, 0.125, SKETCH_MIN_CAP), (10, 20, 0.125, 20), (1000, 50, 0.5, 500)],
)
def test_sketch_cap(m: int, n: int, budget: float, cap: int):
    assert sketch_cap(m, n, budget) == cap


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, float("nan")])
def test_sketch_cap_rejects_a_bad_budget(budget: float):
    with pytest.raises(ValueError, match="sketch_budget"):
        sketch_cap(64, 64, budget)


def test_sketch_width_of_a_planted_spike_is_its_rank():
    """A rank-r spike on a flat floor is captured whole at ℓ = r: no buffer is needed."""
    assert sketch_width(_planted(6, 200), 6, cap=100) == 6


@pytest.mark.parametrize(("k", "cap"), [(4, 100), (10, 100), (30, 40), (30, 200)])
def test_sketch_width_is_the_smallest_width_reaching_half_the_escaped_mass(k: int, cap: int):
    lam = _decaying(300, power=0.7)
    ell = sketch_width(lam, k, cap, mass=0.9)
    high = min(2 * k, cap, 300)
    assert k <= ell <= high
    share, _ = rank_profile(lam)
    if ell < high:  # stopped early: it reached the target and nothing smaller did
        assert float(share[ell]) >= 0.95
        assert all(float(share[w]) < 0.95 for w in range(k, ell))
    else:
        assert all(float(share[w]) < 0.95 for w in range(k, high))


def test_sketch_ranks_respect_the_cap_and_a_small_factor_is_held_whole():
    m, n = 24, 784  # A (24) fits under the cap L = 98 and may take any k; B is capped at L/2
    choice = sketch_ranks([_spectra(m, n, _decaying(m, 0.3), _decaying(n, 0.5))], mass=0.9, flatness=4.0)
    assert choice.cap == sketch_cap(m, n, 0.125) == 98
    assert choice.rank_b.rank <= choice.cap // 2 and choice.rank_b.capped  # a slow decay hits the cap
    assert choice.rank_a.rank == explain_rank(_decaying(m, 0.3), 0.9, 4.0, max_rank=m).rank
    assert max(choice.rank_a.rank, choice.rank_b.rank) <= choice.sketch_rank <= choice.cap
    assert choice.sketch_rank <= 2 * max(choice.rank_a.rank, choice.rank_b.rank)


def test_sketch_ranks_grow_with_the_budget_until_the_rule_is_met():
    spectra = [_spectra(128, 784, _decaying(128, 0.8), _decaying(784, 0.5))]
    small, large = (sketch_ranks(spectra, 0.9, 4.0, budget) for budget in (0.05, 0.5))
    assert small.sketch_rank <= small.cap < large.cap
    assert small.rank_b.rank <= large.rank_b.rank and small.sketch_rank < large.sketch_rank
    uncapped = explain_rank(_decaying(784, 0.5), 0.9, 4.0).rank
    assert large.rank_b.rank == min(uncapped, large.cap // 2)


def test_entry_sketch_round_trips_and_old_files_still_load(tmp_path: Path):
    sketch = SketchTuning(block_size=300, rank_a=7, rank_b=20, sketch_rank=38)
    entries = [
        TuningEntry(shape=(16, 300), dtype="float32", block_size=128, rank_a=8, rank_b=40, sketch=sketch),
        TuningEntry(shape=(4, 16), dtype="float32", block_size=16, rank_a=2, rank_b=5),
    ]
    path = TuningTable(device="cpu", entries=entries).save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["schema"] == 1 and "sketch" not in data["entries"][0]  # (4, 16) sorts first, no field
    assert data["entries"][1]["sketch"] == {"block_size": 300, "rank_a": 7, "rank_b": 20, "sketch_rank": 38}
    table = load_tuning(path)
    assert table.lookup((16, 300), torch.float32).sketch == sketch
    assert table.lookup((4, 16), torch.float32).sketch is None


@pytest.mark.parametrize(
    "bad",
    [
        {"block_size": 300, "rank_a": 7, "rank_b": 20, "sketch_rank": 10},  # ℓ < k_B
        {"block_size": 300, "rank_a": 7, "rank_b": 20},  # no ℓ
        {"block_size": 0, "rank_a": 7, "rank_b": 20, "sketch_rank": 38},
        [300, 7, 20, 38],
    ],
)
def test_malformed_sketch_field_raises(tmp_path: Path, bad: object):
    entry = TuningEntry(shape=(16, 300), dtype="float32").to_json() | {"sketch": bad}
    data = TuningTable(device="cpu").to_json() | {"entries": [entry]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TuningFileError, match="sketch"):
        load_tuning(path)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(300, 16), nn.Tanh(), nn.Linear(16, 4))


def _loss_fn(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 300, generator=gen) @ torch.randn(300, 300, generator=gen).tril() / 10
    y = torch.randn(512, 4, generator=gen)

    def loss_fn(model: nn.Module) -> Tensor:
        idx = torch.randint(0, 512, (64,), generator=gen)
        return (model(x[idx]) - y[idx]).square().mean()

    return loss_fn


def _train(opt: torch.optim.Optimizer, model: nn.Module, steps: int = 25) -> list[float]:
    loss_fn, losses = _loss_fn(3), []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_kron_auto_sketch_reads_the_tuned_block_ranks_and_sketch_rank(tmp_path: Path):
    entries = [
        TuningEntry(
            (16, 300), "float32", block_size=128, rank_a=8, rank_b=40, sketch=SketchTuning(300, 5, 12, 20)
        ),
        TuningEntry((4, 16), "float32", block_size=16, rank_a=2, rank_b=5, sketch=SketchTuning(16, 2, 5, 6)),
    ]
    path = TuningTable(device="cpu", entries=entries).save(tmp_path / "t.json")
    model = _model()
    opt = tk.Kron(model.parameters(), lr=1e-2, rank="auto", sketch=True, tuning=path)
    losses = _train(opt, model)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    (first,) = opt.state[model[0].weight]["blocks"]  # block 300: one unsplit 16 × 300 block
    assert first["basis_a"].shape == (1, 16, 16) and first["basis_b"].shape == (1, 300, 20)
    (second,) = opt.state[model[2].weight]["blocks"]
    assert second["basis_a"].shape == (1, 4, 4) and second["basis_b"].shape == (1, 16, 6)
    # Dense rank="auto" on the same file keeps the dense block (128 splits 300 into 3 blocks).
    dense = _model()
    opt_dense = tk.Kron(dense.parameters(), lr=1e-2, rank="auto", tuning=path)
    _train(opt_dense, dense, steps=2)
    assert opt_dense.state[dense[0].weight]["blocks"][0]["factor_b"].shape == (3, 100, 100)


def test_the_tuned_sketch_rank_is_used_under_auto(tmp_path: Path):
    entries = [TuningEntry((16, 300), "float32", sketch=SketchTuning(300, 5, 12, 20))]
    path = TuningTable(device="cpu", entries=entries).save(tmp_path / "t.json")
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)  # (4, 16) is not in the file
        opt = tk.Kron(model.parameters(), lr=1e-2, rank="auto", sketch=True, sketch_rank=30, tuning=path)
        _train(opt, model, steps=2)
    assert opt.state[model[0].weight]["blocks"][0]["basis_b"].shape == (1, 300, 20)


def test_file_without_a_sketch_choice_warns_and_falls_back_to_twice_the_dense_rank(tmp_path: Path):
    entries = [
        TuningEntry((16, 300), "float32", block_size=300, rank_a=3, rank_b=9),
        TuningEntry((4, 16), "float32", block_size=16, rank_a=2, rank_b=5),
    ]
    path = TuningTable(device="cpu", entries=entries).save(tmp_path / "old.json")
    table = load_tuning(path)
    with pytest.warns(TuningWarning, match="no sketch choice"):
        assert sketch_tuning_for(table, (16, 300), torch.float32) is None
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TuningWarning)
        opt = tk.Kron(model.parameters(), lr=1e-2, rank="auto", sketch=True, tuning=path)
        _train(opt, model, steps=2)
    assert opt.state[model[0].weight]["blocks"][0]["basis_b"].shape == (1, 300, 18)


def test_tune_model_writes_a_capped_sketch_choice_that_kron_trains_on(tmp_path: Path):
    """In-process tuning of a model whose 16 × 300 layer is blocked densely but sketched whole."""
    model = _model()
    opts = SearchOptions(steps=12, cpu_reps=1, precondition_every=4, sketch_budget=0.125)
    with cpu_threads(1):
        result = tune_model(model, _loss_fn(), opts)
    path = result.table.save(tmp_path / "tuning.json")
    table = load_tuning(path)
    by_shape = {e.shape: e for e in table.entries}
    assert set(by_shape) == {(16, 300), (4, 16)}
    for (m, n), entry in by_shape.items():
        s = entry.sketch
        assert s is not None and s.block_size == space.sketch_block_size((m, n), entry.block_size)
        cap = sketch_cap(min(m, s.block_size), min(n, s.block_size), 0.125)
        assert max(s.rank_a, s.rank_b) <= s.sketch_rank <= min(cap, 2 * max(s.rank_a, s.rank_b))
        assert entry.predicted["state_mb_sketch"] < entry.predicted["state_mb_full"]
    big = by_shape[(16, 300)]
    assert big.block_size < 300 and big.sketch.block_size == 300  # second calibration at the whole dim
    assert big.sketch.rank_b <= sketch_cap(16, 300, 0.125) // 2
    with cpu_threads(1):
        trained = _model()
        opt = tk.Kron(trained.parameters(), lr=1e-2, rank="auto", sketch=True, tuning=path)
        losses = _train(opt, trained)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.9 * losses[0]
    basis_b = opt.state[trained[0].weight]["blocks"][0]["basis_b"]
    assert basis_b.shape == (1, 300, big.sketch.sketch_rank)


def test_no_sketch_option_leaves_the_field_out():
    with cpu_threads(1):
        result = tune_model(_model(), _loss_fn(), SearchOptions(steps=4, cpu_reps=1, sketch=False))
    assert all(e.sketch is None for e in result.table.entries)
    assert all("sketch" not in e for e in result.table.to_json()["entries"])
