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

**What a CUDA graph can capture** (``torch.compile(mode="reduce-overhead")``). The compiled
steady step reads nothing from the device in Python (no ``.item()``, no ``bool(tensor)``, no tensor
built from a Python list: ``fullgraph=True`` and ``tests/optim/test_compile_refresh.py`` check it).
Three things used to keep inductor from capturing it whole, and are gone once
:meth:`tritonkron.Kron.prepare_capture` has run between two steps
(``tests/optim/test_compile_capture.py`` checks the traced graph for each):

* the initialisation's ``torch.cond`` (inductor runs it as a host branch on ``pred.item()`` and
  disables CUDA graphs for a graph that holds one, ``torch/_inductor/lowering.py``, ``cond``):
  a parameter whose blocks are all initialised gets a Python flag (``ready_known``, one device
  read in ``prepare_capture``) that ``torch.compile`` guards on, and its step is traced without
  the branch (one more graph, once). A parameter with a block that has never had a non-zero
  gradient (an unused embedding row) keeps its branch, and the step's graph stays uncaptured;
* the ``torch.cond`` of a group with fewer blocks than the period: there the one slot is now
  refreshed on every step and discarded when not due (``torch.where``): at most one block's power
  step and QR per such group and step, of the order of that group's own statistics update (which
  runs every step too), where the branch cost a host read per group and step under inductor;
* the parameter's clock, a CPU int64 scalar that the step incremented: the compiled step advances
  a copy on the parameter's device instead (state ``device_clock``, a new tensor each step, so no
  input is mutated), and the host clock catches up on the next eager step
  (:func:`tritonkron.step.unit._due_blocks`).

CUDA graph trees capture in-place updates of static inputs only, and re-record when a static
input's address changes. So the compiled step updates in place only what ``prepare_capture``
marks static and what keeps its address: the parameters and the parameter-level counters and
moments (step counts, AdamW's ``exp_avg``); a block group's state is replaced by new tensors,
never updated in place (the due slots' rows too, :func:`refresh_slots`), and is not marked.
``tests/optim/test_compile_capture.py`` checks both halves on the traced graph. Not checked
without a GPU: that CUDA graph trees then record once and replay (the replaced state comes back
as the graph's own outputs), and the cost of the copies they make of inputs that are not static.
``python -m perf.cudagraph_check`` (a stage of ``perf/gpu_session.sh``) reports what inductor says
on a GPU.
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
    are the blocks in order and nothing is gathered. The slots are computed on every step, due or
    not (no branch: see the module docstring for the cost). The rows are written into a new tensor,
    not in place: under compile a group's state is replaced, never updated in place, so none of it
    needs to be a static input of a CUDA graph (:func:`tritonkron.step.unit.prepare_capture`).
    """
    index, valid = slots.index, slots.valid
    whole = index.shape[0] == active.shape[0]
    due = (active if whole else active.index_select(0, index)) & valid
    gathered = tuple(state[k] if whole else state[k].index_select(0, index) for k in (*keys, *inputs))
    values = fn(*gathered, due)
    if whole:
        state.update(zip(keys, values, strict=True))
        return
    for key, value, before in zip(keys, values, gathered[: len(keys)], strict=True):
        kept = torch.where(valid.reshape(-1, *([1] * (value.dim() - 1))), value, before)
        state[key] = state[key].index_copy(0, index, kept)
