"""Helpers that keep the optimizer step one ``torch.compile`` graph (no host-side decisions).

The step makes two decisions per block group: whether a block is initialised this step (its first
non-zero gradient, a device fact) and which blocks refresh their bases (a host schedule,
:mod:`tritonkron.step.schedule`). Eagerly the first is an ordinary ``if`` (one host read, until the
host knows every block is ready) and the second selects the due blocks by host-known positions.
Under ``torch.compile`` the initialisation is a ``torch.cond`` on a device predicate, and the
refresh computes the S = ⌈B/T⌉ slots of :class:`~tritonkron.step.schedule.DueSlots` (static
shapes: the due blocks and, where fewer are due, blocks that keep their values), so the traced step
is the same graph whatever the clock and does ⌈B/T⌉ blocks' refresh work, not B. The fallback
eigendecomposition, whose retries are host-side ``try``/``except``, is a custom op that the
compiler treats as one opaque node.

**What a CUDA graph could capture** (``torch.compile(mode="reduce-overhead")``). The compiled
steady step reads nothing from the device in Python (no ``.item()``, no ``bool(tensor)``, no tensor
built from a Python list: ``fullgraph=True`` and ``tests/optim/test_compile_refresh.py`` check it).
Three things in it still stop inductor from capturing the graph whole:

* the initialisation's ``torch.cond``: inductor runs it as a host branch on ``pred.item()`` and
  disables CUDA graphs for a graph that holds one (``torch/_inductor/lowering.py``, ``cond``);
  it stays while blocks may still meet their first non-zero gradient (unused embedding rows);
* the ``torch.cond`` of a group with fewer blocks than the period (``DueSlots.skip_idle``): most
  steps refresh nothing there, and the branch saves the refresh of one block on T − B of T steps;
* the parameter's clock, a CPU int64 scalar that the step increments and copies to the device
  (one scalar per block group) for the slots: a mutated CPU input, which CUDA graph trees skip
  (with inductor's graph partition the CPU ops run outside the captured partitions instead).

The refresh of a group of B ≥ T blocks is capturable: gathers, batched QR or CholeskyQR3,
``torch.where`` and ``index_copy_`` on device tensors of fixed shape, its slots computed on the
device from the clock's copy. ``python -m perf.cudagraph_check`` (a stage of ``perf/gpu_session.sh``)
reports what inductor says on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tritonkron.state import FACTOR_A, FACTOR_B
from tritonkron.step.schedule import DueSlots, index_tensor

Refresh = tuple[int, ...] | bool | DueSlots
"""The blocks of a group refreshed this step: host positions, all/none, or the due slots computed
from a traced clock (:func:`tritonkron.step.schedule.due_mask`)."""


def run_if(
    pred: Tensor,
    fn: Callable[..., tuple[Tensor, ...]],
    updated: tuple[Tensor, ...],
    extra: tuple[Tensor, ...] = (),
) -> tuple[Tensor, ...]:
    """``fn(*updated, *extra)`` when the one-element bool tensor ``pred`` holds, else ``updated``.

    ``fn`` must return new values for ``updated`` with the same shapes and dtypes, and must not
    mutate its inputs (the ``torch.cond`` contract).
    """
    if torch.compiler.is_compiling():

        def true_fn(*xs: Tensor) -> tuple[Tensor, ...]:
            return tuple(t.contiguous() for t in fn(*xs))

        def false_fn(*xs: Tensor) -> tuple[Tensor, ...]:
            return tuple(x.clone(memory_format=torch.contiguous_format) for x in xs[: len(updated)])

        return tuple(torch.cond(pred.reshape(()), true_fn, false_fn, (*updated, *extra)))
    return tuple(fn(*updated, *extra)) if bool(pred) else updated


def refresh_blocks(
    state: dict[str, Tensor],
    keys: tuple[str, ...],
    fn: Callable[..., tuple[Tensor, ...]],
    refresh: Refresh,
    active: Tensor,
    inputs: tuple[str, ...] = (FACTOR_A, FACTOR_B),
) -> None:
    """New ``state[keys]`` from ``fn(*state[keys], *state[inputs], due)`` for the blocks ``refresh``
    selects, ``due`` being ``active [B]`` on them (``fn`` leaves blocks that are not due as they were).

    * a tuple of positions: those blocks alone are gathered, computed and written back in place
      (all blocks: computed whole); the empty tuple does nothing;
    * ``True``/``False``: every block / none;
    * :class:`~tritonkron.step.schedule.DueSlots` (under compile): the S slots are gathered,
      computed and written back (:func:`refresh_slots`).
    """
    if isinstance(refresh, DueSlots):
        refresh_slots(state, keys, fn, refresh, active, inputs)
        return
    if refresh is False or (isinstance(refresh, tuple) and not refresh):
        return
    if isinstance(refresh, tuple) and len(refresh) < active.shape[0]:
        index = index_tensor(refresh, active.device)
        values = fn(
            *(state[k].index_select(0, index) for k in (*keys, *inputs)), active.index_select(0, index)
        )
        for key, value in zip(keys, values, strict=True):
            state[key].index_copy_(0, index, value)
        return
    values = fn(*(state[k] for k in (*keys, *inputs)), active)
    state.update(zip(keys, values, strict=True))


def refresh_slots(
    state: dict[str, Tensor],
    keys: tuple[str, ...],
    fn: Callable[..., tuple[Tensor, ...]],
    slots: DueSlots,
    active: Tensor,
    inputs: tuple[str, ...] = (FACTOR_A, FACTOR_B),
) -> None:
    """:func:`refresh_blocks` of the S slots: X[i] ← where(v, fn(X[i], …, due), X[i]) for
    i = ``slots.index``, v = ``slots.valid``, due = ``active[i]`` ∧ v (static shapes, traceable).

    A free slot writes back the values it gathered, so the block it names (never a due one, and the
    same block for every free slot) is unchanged whatever ``fn`` returns there. With S = B the slots
    are the blocks in order and nothing is gathered. Under ``skip_idle`` the computation runs only
    when some slot is due (:func:`run_if`).
    """
    index, valid = slots.index, slots.valid
    whole = index.shape[0] == active.shape[0]
    due = (active if whole else active.index_select(0, index)) & valid
    gathered = tuple(state[k] if whole else state[k].index_select(0, index) for k in (*keys, *inputs))
    old, extra = gathered[: len(keys)], (*gathered[len(keys) :], due)
    values = run_if(due.any(), fn, old, extra) if slots.skip_idle else fn(*old, *extra)
    if whole:
        state.update(zip(keys, values, strict=True))
        return
    for key, value, before in zip(keys, values, old, strict=True):
        kept = torch.where(valid.reshape(-1, *([1] * (value.dim() - 1))), value, before)
        state[key].index_copy_(0, index, kept)
