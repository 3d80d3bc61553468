"""The ``--device auto|cpu|cuda`` flag of the ``perf`` commands and device-aware timing.

One implementation, :mod:`autotune.device`, serves ``python -m autotune`` and every ``perf``
command (the installable ``autotune`` package cannot import this folder); this module is where
``perf`` takes it from:

- :func:`add_device_argument` adds ``--device`` (default ``auto``: CUDA when available, else the
  CPU; ``cuda`` without CUDA is a usage error naming ``--device`` and its allowed values);
- :func:`resolve_device` turns a name into a ``torch.device``;
- :func:`describe_device` gives the device line of every report (``cuda (NVIDIA H200)``,
  ``cpu (2 threads)``);
- :func:`clock` is ``time.perf_counter()`` after :func:`synchronize`: read it at both ends of a
  timed region, so that CUDA's asynchronous work is inside the interval it is charged to.
"""

from __future__ import annotations

from autotune.device import (
    DEVICE_CHOICES,
    add_device_argument,
    clock,
    describe_device,
    resolve_device,
    synchronize,
)

__all__ = [
    "DEVICE_CHOICES",
    "add_device_argument",
    "clock",
    "describe_device",
    "resolve_device",
    "synchronize",
]
