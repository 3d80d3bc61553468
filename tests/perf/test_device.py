"""``--device auto|cpu|cuda`` of the perf commands: resolution, usage errors, timing and the device line.

CUDA's presence is patched (``torch.cuda.is_available``), so every branch runs on a CPU-only
machine and the tests mean the same on a GPU one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from autotune.measure import cpu_threads
from perf import bench_step, device
from perf.__main__ import build_parser
from perf.bench_table import print_and_write, timing_parser
from perf.peers import build_registry
from perf.report import session_device

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """CUDA reported available, named "Fake GPU"; the list records every synchronize call."""
    synced: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: synced.append(d))
    return synced


def test_auto_is_cpu_without_cuda_and_cuda_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.resolve_device("auto") == CPU and device.resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.resolve_device("auto") == CUDA and device.resolve_device("cuda") == CUDA
    assert device.resolve_device("cpu") == CPU  # cpu stays cpu on a GPU machine


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("name", ["cuda", "gpu"])
def test_unusable_device_names_the_flag_and_the_choices(name: str) -> None:
    with pytest.raises(ValueError, match="--device") as info:
        device.resolve_device(name)
    assert "auto, cpu, cuda" in str(info.value)


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("argv", [["train"], ["train", "--tiny"], ["step"]])
def test_perf_commands_default_to_auto(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).device == CPU
    assert build_parser().parse_args([*argv, "--device", "cpu"]).device == CPU


def test_perf_auto_picks_cuda_when_available(fake_cuda: list[torch.device]) -> None:
    assert build_parser().parse_args(["train"]).device == CUDA
    assert timing_parser("doc", Path("x.csv"), "warm-up").parse_args([]).device == CUDA


def _main(module: str) -> Callable[[list[str]], object]:
    return importlib.import_module(module).main


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("perf.__main__", ["train", "--tiny"]),
        ("perf.__main__", ["step", "--tiny"]),
        ("perf.demo", []),
        ("perf.bench_autotune", []),
        ("perf.bench_compile", []),
        ("perf.bench_stacking", []),
        ("perf.bench_memory", ["--skip-gpt2"]),
        ("perf.bench_spot", ["--study", "betas"]),
        ("perf.soak", []),
    ],
)
def test_cuda_without_cuda_is_a_usage_error(
    module: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        _main(module)([*argv, "--device", "cuda"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device" in err and "CUDA is not available" in err and "auto, cpu, cuda" in err


def test_describe_device() -> None:
    with cpu_threads(1):
        assert device.describe_device("cpu") == "cpu (1 thread)"
    with cpu_threads(2):
        assert device.describe_device(CPU) == "cpu (2 threads)"


def test_describe_and_clock_on_cuda(fake_cuda: list[torch.device]) -> None:
    assert device.describe_device(CUDA) == "cuda (Fake GPU)"
    device.clock(CPU)
    assert fake_cuda == []
    start = device.clock(CUDA)
    assert fake_cuda == [CUDA] and device.clock(CUDA) >= start


def test_step_timer_reads_the_device_clock_around_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    marks: list[torch.device | str] = []

    def clock(where: torch.device | str) -> float:
        marks.append(where)
        return float(len(marks))

    monkeypatch.setattr(bench_step, "clock", clock)
    adamw = next(e for e in build_registry() if e.label == "AdamW")
    times = bench_step.time_steps(adamw, bench_step.StepCase("t", 4, 6), warmup=1, steps=2, device=CPU)
    assert marks == [CPU] * 6 and times == [1.0, 1.0]  # two marks per step, warm-up step untimed


def test_timing_csv_records_the_device(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    with cpu_threads(1):
        print_and_write(pd.DataFrame({"optimizer": ["AdamW"]}), out, CPU)
    table = pd.read_csv(out)
    assert list(table["device"]) == ["cpu (1 thread)"] and "cpu" in table


def test_sessions_recorded_before_the_device_field_ran_on_the_cpu() -> None:
    assert session_device({"threads": 2}) == "cpu (2 threads)"
    assert session_device({"threads": 2, "device": "cuda (Fake GPU)"}) == "cuda (Fake GPU)"


def test_soak_report_states_the_device(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "soak.md"
    _main("perf.soak")(["--steps", "2", "--device", "cpu", "--out", str(out)])
    header = out.read_text(encoding="utf-8").splitlines()[2]
    assert f"device {device.describe_device(CPU)}," in header and "--device cpu" in header
