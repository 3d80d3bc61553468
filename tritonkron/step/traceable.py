"""Helpers that keep the optimizer step one ``torch.compile`` graph (no host-side decisions).

The step makes two decisions per block group: whether a block is initialised this step (its first
non-zero gradient, a device fact) and which blocks refresh their bases (a host schedule,
:mod:`tritonkron.step.schedule`). Eagerly the first is an ordinary ``if`` (one host read, until the
host knows every block is ready) and the second selects the due blocks by host-known positions;
under ``torch.compile`` both become ``torch.cond`` on device predicates, so the traced step is the
same graph whatever the predicate. The fallback
eigendecomposition, whose retries are host-side ``try``/``except``, is a custom op that the
compiler treats as one opaque node.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tritonkron.state import FACTOR_A, FACTOR_B
from tritonkron.step.schedule import index_tensor

Refresh = tuple[int, ...] | bool | Tensor
"""The blocks of a group refreshed this step: host positions, all/none, or a ``[B]`` bool mask."""


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
    * a ``[B]`` bool tensor: every block is computed when any is due and active (:func:`run_if`).
    """
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
    updated = tuple(state[k] for k in keys)
    if isinstance(refresh, Tensor):
        due = active & refresh
        values = run_if(due.any(), fn, updated, (*(state[k] for k in inputs), due))
    else:
        values = fn(*updated, *(state[k] for k in inputs), active)
    state.update(zip(keys, values, strict=True))
