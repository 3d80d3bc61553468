"""``python -m autotune --device auto|cpu|cuda``: the flag, the factory's device and the device line.

CUDA's presence is patched (``torch.cuda.is_available``), so the CUDA branches run on a CPU-only
machine. The end-to-end run (``test_cli.py``) checks the device line of the real output.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from autotune.__main__ import build_model, build_parser, main

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SEEN: list[torch.device] = []


def _loss(model: nn.Module) -> Tensor:
    return model(torch.ones(1, 2)).sum()


def cpu_only() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    """A factory without a ``device`` parameter that builds on the CPU."""
    return nn.Linear(2, 2), _loss


def recording(device: torch.device | None = None) -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    """A factory with a ``device`` parameter; records what it was called with."""
    SEEN.append(device)
    return nn.Linear(2, 2).to(device), _loss


def meta_only() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    """A factory that ignores the device and builds on ``meta``."""
    return nn.Linear(2, 2, device="meta"), _loss


def test_auto_resolves_to_cpu_without_cuda_and_cuda_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build_parser().parse_args(["--model", "m:f"]).device == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert build_parser().parse_args(["--model", "m:f"]).device == CUDA
    assert build_parser().parse_args(["--model", "m:f", "--device", "cpu"]).device == CPU


def test_cuda_without_cuda_exits_2_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        main(["--model", "tests.autotune.digits_model:make", "--device", "cuda"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device" in err and "CUDA is not available" in err and "auto, cpu, cuda" in err


def test_a_factory_with_a_device_parameter_is_called_with_it() -> None:
    SEEN.clear()
    model, _ = build_model(f"{__name__}:recording", CPU)
    assert SEEN == [CPU] and next(model.parameters()).device == CPU


def test_a_factory_without_one_is_called_plainly_and_checked() -> None:
    model, _ = build_model(f"{__name__}:cpu_only", CPU)
    assert next(model.parameters()).device == CPU
    with pytest.raises(
        ValueError, match=r"--device cuda: .* built its model on cpu; give FACTORY a `device`"
    ):
        build_model(f"{__name__}:cpu_only", CUDA)  # e.g. --device auto on a GPU machine
    with pytest.raises(ValueError, match="--device cpu: .* built its model on meta"):
        build_model(f"{__name__}:meta_only", CPU)


def test_a_mismatched_factory_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", f"{__name__}:meta_only", "--device", "cpu", "--quiet"]) == 2
    assert "built its model on meta" in capsys.readouterr().err
