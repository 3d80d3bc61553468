"""Helpers that keep the optimizer step one ``torch.compile`` graph (no host-side decisions).

The step needs two data-dependent decisions: whether a block is initialised this step (its first
non-zero gradient) and whether the bases are refreshed (every T steps, counted on the device).
Eagerly these are ordinary ``if`` statements (one host read each); under ``torch.compile`` they
become ``torch.cond``, so the traced step is the same graph whatever the predicate. The fallback
eigendecomposition, whose retries are host-side ``try``/``except``, is a custom op that the
compiler treats as one opaque node.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


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
