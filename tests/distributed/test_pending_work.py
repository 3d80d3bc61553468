"""No ``torch.distributed`` work of the optimizer outlives a ``step()`` (or a checkpoint gather).

Every collective of ``torch.distributed`` is wrapped, on 2 gloo ranks, to record what it was given
and what it returned. After each ``opt.step()`` (and ``gather_state_dict``) the test requires:

* every ``Work`` handle the optimizer got back was waited on and is gone (a weak reference);
* no tensor handed to a collective is still referenced from outside Python: its use count is back
  to what it was when the collective was called.

The second check is what catches a ``Work`` kept alive by gloo's worker thread, which drops it only
after ``Work.wait()`` has returned. That lag is microseconds and seldom outlasts a step, so the
recorder widens it on purpose: it keeps a view of every tensor (a view holds a C++ reference to its
base, as a ``Work`` does) for ``HOLD_S`` after the collective returns. An optimizer that returns
while its collectives' tensors are still held fails here every time; one that waits for the
release (:mod:`tritonkron.distributed.collectives`) passes.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from torch.distributed.tensor import distribute_tensor

import tritonkron as tk
from tests.distributed._harness import gradients, launch
from tests.distributed.test_fsdp import _sharded_model
from tritonkron.distributed.plan import SPLIT, gather_state_dict

COLLECTIVES = (
    "broadcast",
    "all_reduce",
    "reduce",
    "all_gather",
    "all_gather_into_tensor",
    "gather",
    "scatter",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
)
HOLD_S = 0.05  # how long the recorder keeps each collective's tensors referenced after it returns
STEPS = 3


class _Handle:
    """The ``Work`` given to the caller, remembering whether it was waited on to completion."""

    def __init__(self, work: Any, record: dict) -> None:
        self._work, self._record = work, record

    def wait(self, *args: Any) -> Any:
        result = self._work.wait(*args)
        self._record["completed"] = self._work.is_completed()
        return result

    def is_completed(self) -> bool:
        return self._work.is_completed()


def _tensors(values: list[Any]) -> list[torch.Tensor]:
    found = []
    for value in values:
        found += [
            t for t in (value if isinstance(value, list | tuple) else [value]) if isinstance(t, torch.Tensor)
        ]
    return found


def _release_later(box: list) -> None:
    time.sleep(HOLD_S)
    box.clear()


class _Recorder:
    """Wraps the collectives of ``torch.distributed`` while :meth:`watch` is active."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._given: list[tuple[str, torch.Tensor, int]] = []
        self._handles: list[tuple[weakref.ref, dict]] = []

    def _wrap(self, name: str, original: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tensors = _tensors([*args, *kwargs.values()])
            self.calls[name] += 1
            self._given += [(name, t, t._use_count()) for t in tensors]
            work = original(*args, **kwargs)
            views = [t.view(t.shape) for t in tensors]  # C++ references to the tensors, dropped late
            threading.Thread(target=_release_later, args=(views,), daemon=True).start()
            if work is None:
                return None
            record = {"name": name, "completed": False}
            handle = _Handle(work, record)
            self._handles.append((weakref.ref(handle), record))
            return handle

        return wrapper

    @contextmanager
    def watch(self, what: str, problems: list[str]) -> Iterator[None]:
        """Collectives wrapped inside the block; what outlives it is appended to ``problems``."""
        originals = {name: getattr(dist, name) for name in COLLECTIVES}
        for name, original in originals.items():
            setattr(dist, name, self._wrap(name, original))
            setattr(c10d, name, getattr(dist, name))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(dist, name, original)
                setattr(c10d, name, original)
        problems += [
            f"{what}: a tensor of {name} still held ({t._use_count()} references, {count} before)"
            for name, t, count in self._given
            if t._use_count() > count
        ]
        problems += [
            f"{what}: a {r['name']} handle still alive" for ref, r in self._handles if ref() is not None
        ]
        problems += [
            f"{what}: a {r['name']} handle never waited on" for _, r in self._handles if not r["completed"]
        ]
        self._given.clear()
        self._handles.clear()


def _split_model() -> tuple[torch.nn.Module, tk.Kron]:
    """A weight split by blocks over the ranks (all-gather) and one with an owner (broadcast)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 36), torch.nn.Tanh(), torch.nn.Linear(36, 6))
    return model, tk.Kron(model.parameters(), lr=0.05, precondition_every=2, block_size=8)


def _body(rank: int, world: int) -> dict:
    recorder, problems = _Recorder(), []
    model, opt = _split_model()
    for step, grads in enumerate(gradients([p.shape for p in model.parameters()], STEPS)):
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        with recorder.watch(f"replicated step {step}", problems):
            opt.step()
    split = opt._plan.owner_of(model[0].weight) == SPLIT
    model, mesh = _sharded_model(world, bias=True)  # FSDP2: all-to-alls, sharded biases' finiteness
    opt = tk.Kron(model.parameters(), lr=0.05, precondition_every=2, rank=4)
    for step, grads in enumerate(gradients([p.shape for p in model.parameters()], STEPS)):
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = distribute_tensor(g, mesh, p.placements, src_data_rank=None)
        with recorder.watch(f"sharded step {step}", problems):
            opt.step()
    with recorder.watch("gather_state_dict", problems):
        gather_state_dict(opt, dst=0)
    return {"problems": problems, "calls": dict(recorder.calls), "split": split}


def test_no_work_outlives_a_step(tmp_path: Path) -> None:
    for rank, result in enumerate(launch(_body, 2, tmp_path)):
        assert result["split"], "the first weight should be split by blocks"
        assert not result["problems"], (rank, result["problems"])
        exercised = {"broadcast", "all_reduce", "all_gather_into_tensor", "all_to_all_single", "gather"}
        assert exercised <= set(result["calls"]), (rank, result["calls"])
