"""Input and failure checks of :class:`tritonkron.Kron` that raise errors naming the parameter.

Each check makes at most one host read per device for the whole optimizer (flags are stacked on the
device first), so the eager step does not synchronise once per parameter; the refresh-failure
check of a one-process step makes none (:class:`FailureWatch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from tritonkron.distributed.shards import finite_flags
from tritonkron.math.blocking import BlockLayout
from tritonkron.state import BASIS_A, BASIS_B, BLOCKS, DIAG_A, DIAG_B, FAILURES, MOMENTUM
from tritonkron.step.diagonal import diagonal_sides
from tritonkron.step.schedule import HostCopy
from tritonkron.step.sketched import is_sketch_state


def param_name(groups: Sequence[dict[str, Any]], group_index: int, param_index: int) -> str:
    """``named_parameters()`` name of a parameter, else its position and shape."""
    group = groups[group_index]
    names = group.get("param_names")
    if names is not None and param_index < len(names):
        return repr(names[param_index])
    shape = tuple(group["params"][param_index].shape)
    return f"param_groups[{group_index}]['params'][{param_index}] (shape {shape})"


def first_true(flags: Sequence[Tensor]) -> int | None:
    """Index of the first one-element bool tensor that holds, with one host read per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, flag in enumerate(flags):
        by_device.setdefault(flag.device, []).append(i)
    hits = []
    for indices in by_device.values():
        stacked = torch.stack([flags[i].reshape(()) for i in indices])
        if bool(stacked.any()):
            hits.append(indices[int(stacked.nonzero()[0])])
    return min(hits) if hits else None


def check_gradients(groups: Sequence[dict[str, Any]]) -> None:
    """Reject sparse and complex gradients, and non-finite ones in ``nonfinite="raise"`` groups.

    Runs before any update, so a raise leaves parameters and state untouched.
    """
    watched, where = [], []
    for gi, group in enumerate(groups):
        for pi, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            if grad.layout != torch.strided:
                raise ValueError(
                    f"Kron does not support sparse gradients; parameter {param_name(groups, gi, pi)} has a "
                    f"{grad.layout} gradient (use a dense embedding, or a separate sparse optimizer)"
                )
            if p.is_complex() or grad.is_complex():
                raise ValueError(
                    f"Kron does not support complex parameters; parameter {param_name(groups, gi, pi)} is "
                    f"{p.dtype} (optimise torch.view_as_real(p) instead)"
                )
            if group["nonfinite"] == "raise":
                watched.append(grad)
                where.append((gi, pi))
    bad = first_true([~ok for ok in finite_flags(watched)]) if watched else None
    if bad is not None:
        raise FloatingPointError(
            f"non-finite gradient (NaN or Inf) for parameter {param_name(groups, *where[bad])}; nothing was "
            "updated (nonfinite='raise'; use nonfinite='skip' to skip such steps)"
        )


def _failure_counts(
    groups: Sequence[dict[str, Any]], state: dict[Tensor, dict[str, Any]]
) -> tuple[list[tuple[Tensor, int, int]], list[tuple[int, int]]]:
    """((consecutive-failure counts of a block group, its group's limit, the parameter index) for
    every group with counts; (group, param) of every parameter index)."""
    counts: list[tuple[Tensor, int, int]] = []
    position: list[tuple[int, int]] = []
    for gi, group in enumerate(groups):
        for pi, p in enumerate(group["params"]):
            position.append((gi, pi))
            for blocks in state.get(p, {}).get(BLOCKS, []):
                if FAILURES in blocks:
                    counts.append((blocks[FAILURES], group["max_refresh_failures"], len(position) - 1))
    return counts, position


def _raise_failure(groups: Sequence[dict[str, Any]], gi: int, pi: int) -> None:
    raise RuntimeError(
        f"the preconditioner basis of parameter {param_name(groups, gi, pi)} failed "
        f"{groups[gi]['max_refresh_failures']} consecutive refreshes or initialisations (non-finite "
        "factors or eigenvalues, or an eigendecomposition that failed in every attempt); the last good "
        "basis is still in use (a block never initialised takes no step) and the step was applied. Lower "
        "the learning rate, raise eps/eig_floor, or raise max_refresh_failures to continue"
    )


def check_refresh_failures(
    groups: Sequence[dict[str, Any]],
    state: dict[Tensor, dict[str, Any]],
    agree: Callable[[int | None, int], int | None] | None = None,
) -> None:
    """Raise ``RuntimeError`` naming a parameter one of whose blocks failed ``max_refresh_failures``
    consecutive basis computations (``refresh_failures``: basis refreshes with a non-finite result,
    initialisations or sketch updates whose factorisation failed, :mod:`tritonkron.math.safe_linalg`).
    One host read per device (the distributed step; one process uses :class:`FailureWatch`).

    ``agree(index, count)`` makes the decision collective when the state is split over ranks: it
    takes this rank's first failing parameter index (over all groups, None for none) and the number
    of parameters, and returns the first over every rank, so that every rank raises together.
    """
    counts, position = _failure_counts(groups, state)
    bad = first_true([(c >= limit).any() for c, limit, _ in counts]) if counts else None
    index = None if bad is None else counts[bad][2]
    if agree is not None:
        index = agree(index, len(position))
    if index is not None:
        _raise_failure(groups, *position[index])


class FailureWatch:
    """:func:`check_refresh_failures` for one process without waiting for the device.

    Each step, every block's count is compared with its group's limit in three ops per device
    (one concatenation, one comparison, one asynchronous copy to the host,
    :class:`~tritonkron.step.schedule.HostCopy`); a step raises for the first failing parameter of
    the flags that have arrived. On CPU they arrive at once (the step that reaches the limit
    raises); on CUDA usually by the next step.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[list[tuple[HostCopy, list[int]]], list[tuple[int, int]]]] = []

    def check(self, groups: Sequence[dict[str, Any]], state: dict[Tensor, dict[str, Any]]) -> None:
        """Queue this step's flags, then raise for the oldest arrived step that has a failure."""
        by_device: dict[torch.device, tuple[list[Tensor], list[tuple[int, int]], list[int]]] = {}
        counted, position = _failure_counts(groups, state)
        for counts, limit, index in counted:
            entry = by_device.setdefault(counts.device, ([], [], []))
            entry[0].append(counts)
            entry[1].append((counts.numel(), limit))
            entry[2].extend([index] * counts.numel())
        copies = [
            (HostCopy(torch.cat(counts) >= _limits(tuple(limits), device)), owners)
            for device, (counts, limits, owners) in by_device.items()
        ]
        if copies:
            self._pending.append((copies, position))
        while self._pending:
            copies, position = self._pending[0]
            values = [copy.value() for copy, _ in copies]
            if any(v is None for v in values):
                return
            self._pending.pop(0)
            hits = [owners[int(v.argmax())] for v, (_, owners) in zip(values, copies, strict=True) if v.any()]
            if hits:
                self._pending.clear()
                _raise_failure(groups, *position[min(hits)])


_LIMITS: dict[tuple[tuple[tuple[int, int], ...], torch.device], Tensor] = {}


def _limits(limits: tuple[tuple[int, int], ...], device: torch.device) -> Tensor:
    """Each block's ``max_refresh_failures`` from (block count, limit) per group, cached on ``device``."""
    key = (limits, device)
    if key not in _LIMITS:
        values = [limit for count, limit in limits for _ in range(count)]
        _LIMITS[key] = torch.tensor(values, dtype=torch.int32, device=device)
    return _LIMITS[key]


def _block_dims(block: dict[str, Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """((B, m), (B, n)) of a block group's state, from its bases or diagonal factors."""
    left = block[BASIS_A] if BASIS_A in block else block[DIAG_A]
    right = block[BASIS_B] if BASIS_B in block else block[DIAG_B]
    return tuple(left.shape[:2]), tuple(right.shape[:2])


def check_state(
    p: Tensor, state: dict[str, Any], layout: BlockLayout, sketch: bool, counts: list[int]
) -> None:
    """Raise ``ValueError`` when loaded state does not fit ``p``'s block layout (with its diagonal
    sides, ``max_precond_dim``; a group's momentum M must be ``[B, m, n]``, an older state's
    parameter-level M ``[rows, cols]``) or sketch mode
    (``counts``: the blocks this rank keeps per group, fewer than the layout's for a split parameter)."""
    momentum = state.get(MOMENTUM)
    wrong_matrix = momentum is not None and tuple(momentum.shape) != layout.matrix
    wrong_blocks = len(state[BLOCKS]) != len(layout.groups) or any(
        _block_dims(b) != ((count, g.shape[0]), (count, g.shape[1]))
        or (MOMENTUM in b and tuple(b[MOMENTUM].shape) != (count, *g.shape))
        for b, g, count in zip(state[BLOCKS], layout.groups, counts, strict=False)
    )
    if wrong_matrix or wrong_blocks:
        raise ValueError(
            f"optimizer state of a parameter of shape {tuple(p.shape)} does not match its block layout "
            f"({len(layout.groups)} block group(s) of a {layout.matrix[0]} × {layout.matrix[1]} matrix); "
            "was the state loaded from another model, block_size or max_precond_dim?"
        )
    if not sketch and any(diagonal_sides(b) != layout.diagonal for b in state[BLOCKS]):
        raise ValueError(
            f"optimizer state of a parameter of shape {tuple(p.shape)} has diagonal factors on sides "
            f"{diagonal_sides(state[BLOCKS][0])} (left, right), but its group's max_precond_dim gives "
            f"{layout.diagonal}; was the state created with another max_precond_dim?"
        )
    if any(is_sketch_state(b) != sketch for b in state[BLOCKS]):
        raise ValueError(
            f"optimizer state of a parameter of shape {tuple(p.shape)} was created with "
            f"sketch={not sketch}, but its group now has sketch={sketch}"
        )
