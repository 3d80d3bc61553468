"""Tuning files (:mod:`tritonkron.tuning.file`): schema round-trip, corrupt and stale files, overrides."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import tritonkron as tk
from autotune.measure import cpu_threads
from tritonkron.tuning import file as tuning
from tritonkron.tuning.entry import TuningEntry, TuningFileError
from tritonkron.tuning.file import SCHEMA_VERSION, TuningTable, TuningWarning, load_tuning
from tritonkron.tuning.lookup import (
    heuristic_entry,
    ranks_for,
    resolve_tuning,
    resolve_tuning_path,
    single_rank,
    tuned_param_groups,
)

CONFIG = {"BLOCK_M": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}


def _table(device: str = "cpu") -> TuningTable:
    return TuningTable(
        device=device,
        entries=[
            TuningEntry(
                shape=(32, 64),
                dtype="float32",
                block_size=64,
                rank_a=9,
                rank_b=19,
                kernels={"factor_update.left": dict(CONFIG)},
                knobs={"ns_steps_a": 9, "root_method": "eigh", "cpu_threads": 1},
                predicted={"step_ms_full": 1.5, "state_mb_full": 0.05, "step_ms_sketch": None},
            ),
            TuningEntry(shape=(10, 32), dtype="float32", block_size=32, rank_a=5, rank_b=None),
        ],
        created="2026-01-01T00:00:00+00:00",
        commit="0" * 40,
    )


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_round_trip(tmp_path: Path):
    table = _table()
    path = table.save(tmp_path / "sub" / "tuning.json")
    loaded = load_tuning(path)
    assert loaded == table  # every serialised field, entries included
    assert loaded.path == str(path) and loaded.kernels_valid
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA_VERSION
    assert data["torch"] == torch.__version__ and "triton" in data and data["device"] == "cpu"
    assert [e["shape"] for e in data["entries"]] == [[10, 32], [32, 64]]  # sorted
    assert load_tuning(loaded.save(tmp_path / "again.json")) == table


def test_lookup_uses_the_matrix_view(tmp_path: Path):
    table = load_tuning(_table().save(tmp_path / "t.json"))
    entry = table.lookup((32, 4, 4, 4), torch.float32, "cpu")  # a conv weight viewed as 32 × 64
    assert entry is not None and (entry.rank_a, entry.rank_b, entry.block_size) == (9, 19, 64)
    assert entry.kernels == {"factor_update.left": CONFIG}
    assert table.lookup((32, 64), torch.bfloat16, "cpu") is None
    assert ranks_for(table, (10, 32), "float32", "cpu") == (5, None, 32)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a tuning file"),
        ('{"entries": []}', "not a tuning file"),
        ('{"schema": "one"}', "schema must be an int"),
        ('{"schema": 1, "device": "cpu"}', "is missing"),
    ],
)
def test_corrupt_file_raises_naming_the_path(tmp_path: Path, content: str, match: str):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TuningFileError, match=match) as info:
        load_tuning(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("shape", [32], "shape"),
        ("shape", [32, -1], "shape"),
        ("dtype", "float33", "dtype"),
        ("block_size", 0, "block_size"),
        ("rank_a", 2.5, "rank_a"),
        ("rank_b", True, "rank_b"),
        ("kernels", {"op": {"BLOCK_M": "big"}}, "kernels"),
        ("knobs", {"x": [1]}, "knobs"),
        ("predicted", {"ms": "fast"}, "predicted"),
    ],
)
def test_malformed_entry_raises_naming_entry(tmp_path: Path, field: str, value: object, match: str):
    data = _table().to_json()
    data["entries"][1][field] = value
    with pytest.raises(TuningFileError, match=match) as info:
        load_tuning(_write(tmp_path / "bad.json", data))
    assert "entry 1" in str(info.value) and str(tmp_path) in str(info.value)


def test_duplicate_entries_raise(tmp_path: Path):
    data = _table().to_json()
    data["entries"].append(data["entries"][0])
    with pytest.raises(TuningFileError, match="more than one entry"):
        load_tuning(_write(tmp_path / "dup.json", data))


def test_missing_file_raises_with_a_hint(tmp_path: Path):
    with pytest.raises(TuningFileError, match="does not exist.*python -m autotune"):
        load_tuning(tmp_path / "nope.json")


@pytest.mark.parametrize("schema", [0, SCHEMA_VERSION + 1])
def test_stale_schema_warns_once_and_gives_defaults(tmp_path: Path, schema: int):
    data = _table().to_json()
    data["schema"] = schema
    data["entries"] = "a future format"  # not validated: the file is not read further
    path = _write(tmp_path / "stale.json", data)
    with pytest.warns(TuningWarning, match=f"schema version {schema}"):
        table = load_tuning(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second load and every lookup are silent
        again = load_tuning(path)
        assert ranks_for(again, (32, 64), torch.float32, "cpu") == (None, None, 1024)
    assert table.entries == [] and ranks_for(table, (32, 64), torch.float32) == (None, None, 1024)


def test_other_versions_drop_kernel_configs_only(tmp_path: Path):
    data = _table().to_json()
    data["torch"] = "1.0.0"
    path = _write(tmp_path / "old.json", data)
    with pytest.warns(TuningWarning, match="kernel configs are ignored"):
        table = load_tuning(path)
    entry = table.lookup((32, 64), torch.float32, "cpu")
    assert entry is not None and entry.kernels == {} and (entry.rank_a, entry.rank_b) == (9, 19)


def test_other_device_drops_kernel_configs_once(tmp_path: Path):
    table = load_tuning(_table(device="NVIDIA H200").save(tmp_path / "gpu.json"))
    with pytest.warns(TuningWarning, match="tuned on 'NVIDIA H200', not 'cpu'"):
        entry = table.lookup((32, 64), torch.float32, "cpu")
    assert entry is not None and entry.kernels == {} and entry.block_size == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert table.lookup((32, 64), torch.float32, "cpu") is not None
        assert table.lookup((32, 64), torch.float32, "NVIDIA H200").kernels == {"factor_update.left": CONFIG}


def test_missing_shape_warns_once_and_gives_defaults(tmp_path: Path):
    table = load_tuning(_table().save(tmp_path / "t.json"))
    with pytest.warns(TuningWarning, match=r"no entry for shape \[7, 9\]"):
        assert ranks_for(table, (7, 9), torch.float32, "cpu") == (None, None, 1024)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ranks_for(table, (7, 9), torch.float32, "cpu") == (None, None, 1024)
        assert ranks_for(None, (7, 9), torch.float32) == (None, None, 1024)


def test_heuristic_entry_and_single_rank():
    entry = heuristic_entry((8, 3, 3), torch.bfloat16)
    assert entry == TuningEntry(shape=(8, 9), dtype="bfloat16", block_size=1024)
    assert single_rank(3, 7) == 7 and single_rank(None, 7) is None and single_rank(3, None) is None


def test_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = _table().save(tmp_path / "env.json")
    monkeypatch.delenv("TRITONKRON_TUNING", raising=False)
    assert resolve_tuning_path(None) is None and resolve_tuning(None) is None
    monkeypatch.setenv("TRITONKRON_TUNING", str(path))
    assert resolve_tuning_path(None) == path
    assert resolve_tuning(None) == _table()
    assert resolve_tuning_path(tmp_path / "explicit.json") == tmp_path / "explicit.json"  # explicit wins
    monkeypatch.setenv("TRITONKRON_TUNING", "  ")
    assert resolve_tuning_path(None) is None
    monkeypatch.setenv("TRITONKRON_TUNING", str(tmp_path / "missing.json"))
    with pytest.raises(TuningFileError, match="missing.json"):
        resolve_tuning(None)


def test_tuned_param_groups_train(tmp_path: Path):
    # One thread: these matrices are tiny, and on a loaded 2-core machine a second BLAS thread
    # makes each product ~1000× slower (spin-waiting for a descheduled worker).
    with cpu_threads(1):
        _train_with_tuned_groups(tmp_path)


def _train_with_tuned_groups(tmp_path: Path) -> None:
    table = load_tuning(_table().save(tmp_path / "t.json"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    groups = tuned_param_groups(model.named_parameters(), table, lr=1e-2)
    assert [(g.get("rank"), g.get("block_size")) for g in groups] == [(19, 64), (None, 32), (None, None)]
    opt = tk.Kron(groups)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_device_name_and_dtype_name():
    assert tuning.device_name("cpu") == "cpu"
    assert tuning.dtype_name(torch.float16) == "float16" and tuning.dtype_name("float16") == "float16"
