""":func:`tritonkron.distributed.collectives.collective` in one process, with stand-ins for the collective and its ``Work``:
the handle is always dropped, errors propagate, and the wait for the backend's release is bounded."""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

import pytest
import torch

from tritonkron.distributed import collectives


class _Work:
    """A stand-in ``Work``; ``fail``: its wait raises, as on a timed-out collective."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.waited = fail, False

    def wait(self) -> bool:
        self.waited = True
        if self.fail:
            raise RuntimeError("peer went away")
        return True


class _Collective:
    """A stand-in collective: returns a fresh :class:`_Work` and may keep a view of its tensor."""

    __name__ = "fake_collective"

    def __init__(self, fail: bool = False, hold_s: float | None = 0.0) -> None:
        self.fail, self.hold_s = fail, hold_s
        self.works: list[weakref.ref] = []
        self.kwargs: dict[str, Any] = {}
        self.held: list[torch.Tensor] = []

    def __call__(self, tensor: torch.Tensor, **kwargs: Any) -> _Work:
        self.kwargs = kwargs
        self.held = [tensor.view(tensor.shape)]  # a C++ reference to the tensor, as a Work holds
        if self.hold_s is not None:  # released by another thread after hold_s; None: never
            threading.Timer(self.hold_s, self.held.clear).start()
        work = _Work(self.fail)
        self.works.append(weakref.ref(work))
        return work


@pytest.fixture
def gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every group is served by gloo, and no earlier give-up is remembered."""
    monkeypatch.setattr(collectives, "_backend", lambda group, device: "gloo")
    monkeypatch.setattr(collectives, "_GAVE_UP", [])


def test_waits_for_the_release_and_drops_the_handle(gloo: None) -> None:
    op, t = _Collective(hold_s=0.2), torch.zeros(4)
    start = time.monotonic()
    collectives.collective(op, t, group="g")
    assert time.monotonic() - start >= 0.2  # returned only once the stand-in let go of the tensor
    assert t._use_count() == 1 and op.works[0]() is None
    assert op.kwargs == {"group": "g", "async_op": True}


def test_a_failed_wait_raises_and_drops_the_handle(gloo: None) -> None:
    op = _Collective(fail=True, hold_s=0.05)
    with pytest.raises(RuntimeError, match="peer went away"):
        collectives.collective(op, torch.zeros(4))
    assert op.works[0]() is None


def test_a_backend_that_never_releases_is_waited_for_once(
    gloo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collectives, "RELEASE_TIMEOUT_S", 0.1)
    op = _Collective(hold_s=None)
    with pytest.warns(RuntimeWarning, match="still holds the tensors of a finished fake_collective"):
        collectives.collective(op, torch.zeros(4))
    start = time.monotonic()
    collectives.collective(op, torch.zeros(4))  # no second wait, no second warning
    assert time.monotonic() - start < 0.1


def test_other_backends_only_wait_on_the_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collectives, "_backend", lambda group, device: "nccl")
    op = _Collective(hold_s=None)
    collectives.collective(op, torch.zeros(4))
    assert op.works[0]() is None and op.held  # not waited for: the stand-in still holds the tensor


@pytest.mark.parametrize(
    ("name", "device", "expected"),
    [("gloo", "cpu", "gloo"), ("cpu:gloo,cuda:nccl", "cpu", "gloo"), ("cpu:gloo,cuda:nccl", "cuda", "nccl")],
)
def test_backend_per_device(monkeypatch: pytest.MonkeyPatch, name: str, device: str, expected: str) -> None:
    monkeypatch.setattr(collectives.dist, "get_backend", lambda group: name)
    assert collectives._backend(None, torch.device(device)) == expected
