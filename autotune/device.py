"""The ``--device auto|cpu|cuda`` flag of ``python -m autotune`` and the ``perf`` commands, and device-aware timing.

- ``auto`` (the default): CUDA when ``torch.cuda.is_available()``, else the CPU;
- ``cpu``: the CPU, even when a GPU is present;
- ``cuda``: the current CUDA device; an error naming ``--device`` when CUDA is unavailable.

:func:`describe_device` is the line every report states (``cuda (NVIDIA H200)``,
``cpu (2 threads)``). CUDA runs asynchronously, so a wall-clock timer must wait for the queued
work at both ends of the timed region: :func:`clock` is ``time.perf_counter()`` after
:func:`synchronize`. The ``perf`` commands import these names from :mod:`perf.device`; they live
here because the installable ``autotune`` package cannot import the repository's ``perf`` folder.
"""

from __future__ import annotations

import argparse
import time

import torch

__all__ = [
    "DEVICE_CHOICES",
    "add_device_argument",
    "clock",
    "describe_device",
    "resolve_device",
    "synchronize",
]

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""The values ``--device`` accepts."""

_ALLOWED = ", ".join(DEVICE_CHOICES)


class _DeviceError(ValueError):
    """An unusable ``--device`` value; ``reason`` is the message without the ``--device NAME:`` prefix."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"--device {name}: {reason}")
        self.reason = reason


def resolve_device(name: str) -> torch.device:
    """The device ``--device name`` selects (rules in the module docstring).

    Raises:
        ValueError: ``name`` is not one of :data:`DEVICE_CHOICES`, or is ``"cuda"`` without CUDA;
            the message names ``--device`` and the allowed values.
    """
    if name not in DEVICE_CHOICES:
        raise _DeviceError(name, f"unknown device; allowed values: {_ALLOWED}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise _DeviceError(
            name,
            "CUDA is not available here (torch.cuda.is_available() is False: no GPU, or a CPU-only "
            f"torch build); use --device auto or --device cpu (allowed values: {_ALLOWED})",
        )
    return torch.device(name)


def _device_argument(text: str) -> torch.device:
    """argparse type of ``--device``: :func:`resolve_device`, its error as a usage error."""
    try:
        return resolve_device(text)
    except _DeviceError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error.reason}") from None


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--device {auto,cpu,cuda}`` (default auto) to ``parser``; ``args.device`` is a ``torch.device``."""
    parser.add_argument(
        "--device",
        type=_device_argument,
        default="auto",
        metavar="{" + ",".join(DEVICE_CHOICES) + "}",
        help="where models, batches and optimizer state live: auto = CUDA when available, else the CPU (default auto)",
    )


def describe_device(device: torch.device | str) -> str:
    """``"cuda (NVIDIA H200)"`` or ``"cpu (2 threads)"``: the device line of the reports."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"{device.type} ({threads} thread{'' if threads == 1 else 's'})"


def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on ``device`` has finished (CUDA; a no-op elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device | str) -> float:
    """``time.perf_counter()`` once ``device``'s queued work has finished: read it at both ends of a timed region."""
    synchronize(device)
    return time.perf_counter()
