"""The host side of the Kronecker step: which blocks refresh their bases now, and what the host
already knows about the device state, so that a steady eager step reads nothing from the device.

**Refresh spread over T steps** (docs/maths.md §2.4). Every Kronecker block of the optimizer has an
ordinal g, its position among all blocks in parameter order (:func:`block_ordinals`). Each
parameter keeps a clock c, the number of steps it has been given a gradient (state key ``clock``, a
CPU int64 scalar, so reading it never waits for a device). Block g refreshes its bases at the steps

    (c + g) ≡ 0 (mod T),

so every block still refreshes once per T steps, and a step refreshes ⌈N/T⌉ or ⌊N/T⌋ of the N
blocks instead of all of them every T-th step. A step skipped for a non-finite gradient still
advances the clock; its due blocks then wait one period.

**Under ``torch.compile``** the clock is a traced tensor, a copy on the parameter's device (state
``device_clock``, :func:`tritonkron.step.unit._due_blocks`: the graph then holds no CPU tensor),
so the due blocks are not known when the step is traced. Within a group of B blocks with ordinals g0 … g0 + B − 1 the due ones are
r, r + T, r + 2T, … with r = (−(c + g0)) mod T: at most S = ⌈B/T⌉ of them. :func:`due_mask` gives
those S slots (:class:`DueSlots`, static shapes, computed on the device), and the refresh computes
S blocks instead of B (:func:`tritonkron.step.traceable.refresh_blocks`).

**Readiness known on the host.** A block is initialised by its first non-zero gradient; until
every block of a group is ready, the step tests on the device whether any block needs
initialising (one host read). Once a group's ``ready`` flags are all set, :data:`KNOWN_READY`
learns it from an asynchronous copy (:class:`HostCopy`, no wait) and the step skips that test.
A compiled step reads nothing, so it learns it only from :meth:`tritonkron.Kron.prepare_capture`
(a Python flag per parameter, :func:`known_ready`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "KNOWN_READY",
    "DueSlots",
    "HostCopy",
    "KnownReady",
    "advance_clock",
    "block_ordinals",
    "due_mask",
    "due_positions",
    "index_tensor",
    "known_ready",
    "slot_count",
]


def due_positions(clock: int, first: int, count: int, period: int) -> tuple[int, ...]:
    """Blocks b ∈ [0, count) with (clock + first + b) ≡ 0 (mod period): those due for a refresh."""
    return tuple(range((-(clock + first)) % period, count, period))


class DueSlots(NamedTuple):
    """The due blocks of a group of B blocks under ``torch.compile``, in S = ⌈B/T⌉ static slots.

    Attributes:
        index: ``[S]`` int64 block positions on the device: r + jT where that is < B (a due block,
            in the order of :func:`due_positions`), elsewhere one block that is not due this step
            (several free slots may name it; they carry its unchanged values).
        valid: ``[S]`` bool, True on the slots that name a due block.

    A group of B < T blocks has no due block on most steps; its one slot is still computed (and
    discarded): a branch on a device predicate would be a host read under inductor and keep the
    step out of CUDA graphs (:mod:`tritonkron.step.traceable`).
    """

    index: Tensor
    valid: Tensor


def slot_count(count: int, period: int) -> int:
    """S = ⌈B/T⌉: the most blocks of a group of B consecutive ordinals due at one step."""
    return math.ceil(count / period)


def due_mask(clock: Tensor, first: int, count: int, period: int, device: torch.device) -> DueSlots:
    """:func:`due_positions` as :class:`DueSlots` on ``device`` from the clock tensor (traceable,
    no host read, shapes fixed by ``count`` and ``period``).

    r = (−(c + first)) mod T; slot j names r + jT, valid where r + jT < B. A free slot names
    r − 1 (r ≥ 1) or 1 (r = 0), clamped to B − 1: never due when T ≥ 2 and B ≥ 2, and when
    S = B (T = 1 or B = 1) the slots are 0 … B − 1 in order.
    """
    slots = slot_count(count, period)
    c = clock.to(device=device, dtype=torch.int64)
    r = torch.remainder(-(c + first), period)
    position = r + period * torch.arange(slots, dtype=torch.int64, device=device)
    valid = position < count
    free = torch.where(r >= 1, r - 1, torch.ones_like(r)).clamp(max=count - 1)
    return DueSlots(torch.where(valid, position, free), valid)


def advance_clock(clock: Tensor) -> int:
    """c ← c + 1 on the CPU clock tensor, through its NumPy view (host memory, no op dispatched);
    returns the new value."""
    host = clock.numpy()
    host[()] = host + 1
    return int(host)


def block_ordinals(counts: Sequence[int]) -> list[int]:
    """The ordinal of each parameter's first block: the running sum of the block counts before it."""
    firsts, total = [], 0
    for count in counts:
        firsts.append(total)
        total += count
    return firsts


_INDICES: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}


def index_tensor(positions: tuple[int, ...], device: torch.device) -> Tensor:
    """``positions`` as an int64 tensor on ``device``, cached: a schedule repeats every T steps, so
    each index set is copied to the device once."""
    key = (positions, device)
    if key not in _INDICES:
        _INDICES[key] = torch.tensor(positions, dtype=torch.int64, device=device)
    return _INDICES[key]


class HostCopy:
    """A small device tensor copied to host memory without waiting for the device.

    On CUDA the copy goes to pinned memory on the current stream and an event marks its arrival;
    :meth:`value` is None until then. On other devices the copy is immediate.
    """

    def __init__(self, tensor: Tensor) -> None:
        self._event = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor.to("cpu", copy=True)

    def value(self) -> np.ndarray | None:
        """The values once they have arrived on the host, else None (never waits)."""
        if self._event is not None and not self._event.query():
            return None
        return self._host.numpy()


class KnownReady:
    """Host knowledge that every block of a group is ready, keyed by the group's ``ready`` tensor.

    The step replaces ``ready`` by a new tensor exactly when it initialises blocks (and a loaded
    state dict or a rebuilt stack brings new tensors), so a flag about one tensor object stays
    true for as long as the group keeps that object.
    """

    def __init__(self) -> None:
        self._flags: dict[int, tuple[weakref.ref, HostCopy]] = {}

    def all_ready(self, ready: Tensor) -> bool:
        """True when the host has learnt that every entry of ``ready`` holds; never waits."""
        entry = self._flags.get(id(ready))
        if entry is None or entry[0]() is not ready:
            return False
        value = entry[1].value()
        return value is not None and bool(value)

    def watch(self, ready: Tensor) -> None:
        """Start learning whether every entry of ``ready`` holds (once per tensor object)."""
        key = id(ready)
        entry = self._flags.get(key)
        if entry is not None and entry[0]() is ready:
            return
        flags = self._flags
        self._flags[key] = (weakref.ref(ready, lambda _: flags.pop(key, None)), HostCopy(ready.all()))


KNOWN_READY = KnownReady()


def known_ready(ready: Tensor, told: bool) -> bool:
    """Whether a group's step may take every block as initialised: the host was ``told`` so
    (:meth:`tritonkron.Kron.prepare_capture`, which read it: a Python bool that ``torch.compile``
    guards on), or, eagerly, :data:`KNOWN_READY` has learnt it (never under compile: no read)."""
    return told or (not torch.compiler.is_compiling() and KNOWN_READY.all_ready(ready))
