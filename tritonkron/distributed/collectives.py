"""Collectives that leave nothing behind: waited on, handle dropped, tensors released by the backend.

On gloo a collective runs on one of the process group's worker threads, and ``Work.wait()`` returns
as soon as the result is in place, *before* that thread drops its own reference to the ``Work`` and,
through it, to the tensors of the collective. When the caller's last Python reference to such a
tensor goes first, the worker thread is left to free the tensor's Python object, for which it must
take the GIL. If the main thread cannot hand the GIL over at that moment, the process breaks:

* the group's destructor (``destroy_process_group``, or the last reference to the group) joins its
  worker threads while holding the GIL: a deadlock at exit;
* an interpreter that starts finalizing while the worker waits for the GIL ends that thread with
  ``pthread_exit``, whose unwinding through a ``noexcept`` destructor aborts the process
  ("terminate called without an active exception", SIGABRT).

:func:`collective` therefore issues a collective with ``async_op=True``, waits on the handle and
drops it, also when the wait raises, and, where the backend is gloo, returns only once the backend
holds no reference to the tensors any more (their use count is back to what it was before the
call): no ``Work`` of the optimizer outlives the call, let alone a ``step()``. Every tensor the
caller hands over stays referenced by the caller for the whole call, so nothing is freed off the
main thread. Other backends (NCCL) release their work from their own watchdog, on its schedule;
there only the handle is waited on and dropped.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["RELEASE_TIMEOUT_S", "collective"]

RELEASE_TIMEOUT_S = 10.0  # after a successful wait: the worker thread only has to drop its reference
_AFTER_ERROR_S = 1.0  # after a failed wait: a short grace period, then the error propagates
_LONGEST_PAUSE_S = 1e-3
_GAVE_UP: list[str] = []  # a collective whose tensors were never released: no more waiting (see collective)


def _tensors(values: Iterable[Any]) -> list[Tensor]:
    """The tensors among ``values`` and inside list/tuple ``values`` (a gather list), each once."""
    found: dict[int, Tensor] = {}
    for value in values:
        for t in value if isinstance(value, list | tuple) else (value,):
            if isinstance(t, Tensor):
                found.setdefault(id(t), t)
    return list(found.values())


def _backend(group: Any, device: torch.device) -> str:
    """The backend name serving ``device`` in ``group`` ("gloo", "nccl", …; "" when unknown)."""
    try:
        name = str(dist.get_backend(group))
    except (RuntimeError, ValueError):
        return ""
    if ":" not in name:  # one backend for every device
        return name
    per_device = dict(part.split(":", 1) for part in name.split(",") if ":" in part)
    return per_device.get(device.type, "")


def _use_counts(tensors: list[Tensor]) -> list[int] | None:
    """Each tensor's reference count (Python and C++ holders together); None where torch lacks it."""
    if not all(hasattr(t, "_use_count") for t in tensors):
        return None
    return [t._use_count() for t in tensors]


def _await_release(tensors: list[Tensor], before: list[int], timeout: float) -> bool:
    """Sleep (the GIL released) until no tensor has more references than ``before``; False on timeout."""
    deadline = time.monotonic() + timeout
    pause = 1e-5
    while any(t._use_count() > n for t, n in zip(tensors, before, strict=True)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(2 * pause, _LONGEST_PAUSE_S)
    return True


@torch.compiler.disable
def collective(function: Callable[..., Any], /, *args: Any, group: Any = None, **kwargs: Any) -> None:
    """Run ``function(*args, group=group, async_op=True, **kwargs)`` (a ``torch.distributed``
    collective) to completion, leaving no ``Work`` behind.

    The handle is waited on and dropped, also when the wait raises; on gloo the call then returns
    only once the backend's worker thread has released the collective's tensors (see module doc).
    The tensors in ``args``/``kwargs`` (and in list arguments, such as a gather list) are the ones
    watched; pass real tensors (a complex or fp8 tensor would be viewed anew inside ``function``).
    Should a backend keep them beyond :data:`RELEASE_TIMEOUT_S`, a warning says so once and later
    calls no longer wait for the release.

    Raises:
        whatever ``function`` or ``Work.wait()`` raises (a timeout, a failed peer).
    """
    tensors = _tensors([*args, *kwargs.values()])
    watch = bool(tensors) and not _GAVE_UP and _backend(group, tensors[0].device) == "gloo"
    before = _use_counts(tensors) if watch else None
    waited = False
    work = function(*args, group=group, async_op=True, **kwargs)
    try:
        if work is not None:
            work.wait()
        waited = True
    finally:
        del work
        if before is not None:
            released = _await_release(tensors, before, RELEASE_TIMEOUT_S if waited else _AFTER_ERROR_S)
            if waited and not released:
                _give_up(getattr(function, "__name__", str(function)))


def _give_up(name: str) -> None:
    """Warn that the backend kept a finished collective's tensors; stop waiting for releases."""
    _GAVE_UP.append(name)
    warnings.warn(
        f"torch.distributed still holds the tensors of a finished {name} after {RELEASE_TIMEOUT_S:.0f} s; "
        "tritonkron no longer waits for the backend to release its collectives' tensors",
        RuntimeWarning,
        stacklevel=3,
    )
