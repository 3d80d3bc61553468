"""One Kronecker parameter's step around its block groups: before them (state, skip flag, step
count, clock, the blocks due for a refresh, one job per group) and after them (the update shaped like the
parameter, optionally RMS-capped). Between the two, :mod:`tritonkron.step.stacking` steps the groups,
alone or stacked with equal-shape groups of other parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from tritonkron.math.blocking import BlockLayout
from tritonkron.options import KronSettings, statistics_dtype
from tritonkron.state import BLOCKS, CLOCK, DEVICE_CLOCK, MOMENTUM, READY, READY_KNOWN, SKIPPED, STEP
from tritonkron.step.adamw import count_nonfinite, count_nonfinite_all
from tritonkron.step.bounds import adam_bound, bias_correction, bias_corrections
from tritonkron.step.dense import block_group_step, new_group_state
from tritonkron.step.diagonal import new_diagonal_state
from tritonkron.step.guards import check_state
from tritonkron.step.momentum import convert_momentum
from tritonkron.step.rotated import uses_rotated_momentum
from tritonkron.step.schedule import advance_clock, due_mask, due_positions
from tritonkron.step.sketched import new_sketch_state, sketch_group_step
from tritonkron.step.stacking import GroupJob, ensure_failure_counts
from tritonkron.step.traceable import Refresh

__all__ = [
    "PreparedUnit",
    "ensure_state",
    "finish_unit",
    "limit_rms",
    "prepare_capture",
    "prepare_unit",
    "prepare_units",
]


class PreparedUnit(NamedTuple):
    """A Kronecker parameter between :func:`prepare_unit` and :func:`finish_unit`."""

    param: Tensor
    layout: BlockLayout
    chunks: list[slice] | None
    ok: Tensor
    grad: Tensor
    jobs: list[GroupJob]
    max_update_rms: float | None
    step: Tensor | None = None
    correction: Tensor | None = None  # 1/(1 − β₁ᵗ) when computed with others' (prepare_units)


def limit_rms(update: Tensor, max_rms: float) -> Tensor:
    """U · min(1, c / RMS(U)) with RMS(U) = ‖U‖_F/√(numel U): the direction's RMS capped at c (no host read)."""
    rms = update.square().mean().sqrt()
    return update * torch.clamp(max_rms / rms.clamp_min(torch.finfo(rms.dtype).tiny), max=1.0)


def prepare_unit(
    p: Tensor,
    group: dict[str, Any],
    settings: KronSettings,
    layout: BlockLayout,
    state: dict[str, Any],
    chunks: list[slice] | None,
    first: int = 0,
) -> PreparedUnit:
    """Everything of ``p``'s step before its block groups are stepped: state creation or checks,
    the skip flag, step count and clock, the blocks due for a
    basis refresh (:mod:`tritonkron.step.schedule`; ``first`` is the ordinal of ``p``'s first block),
    and one :class:`~tritonkron.step.stacking.GroupJob` per block group (``chunks``: this rank's
    blocks of a split parameter)."""
    rotated = ensure_state(p, settings, layout, state, chunks)
    grad = p.grad.to(statistics_dtype(p)).reshape(layout.matrix)
    ok = count_nonfinite(grad, state)
    state[STEP].add_(ok.to(state[STEP].dtype))
    return _prepared(p, group, settings, layout, state, chunks, first, rotated, grad, ok)


def prepare_units(
    units: list[tuple[Tensor, dict[str, Any], KronSettings, BlockLayout, dict[str, Any], int]],
) -> list[PreparedUnit]:
    """:func:`prepare_unit` of whole parameters ``(p, group, settings, layout, state, first)`` with
    the skip flags and the step and skip counts of all of them at once
    (:func:`~tritonkron.step.adamw.count_nonfinite_all`: a few ops, however many parameters)."""
    rotated = [ensure_state(p, settings, layout, state, None) for p, _, settings, layout, state, _ in units]
    grads = [p.grad.to(statistics_dtype(p)).reshape(layout.matrix) for p, _, _, layout, _, _ in units]
    oks = count_nonfinite_all(grads, [state for *_, state, _ in units])
    return _corrected(
        [
            _prepared(p, group, settings, layout, state, None, first, r, grad, ok)
            for (p, group, settings, layout, state, first), r, grad, ok in zip(
                units, rotated, grads, oks, strict=True
            )
        ]
    )


def _corrected(prepared: list[PreparedUnit]) -> list[PreparedUnit]:
    """``prepared`` with the bias correction 1/(1 − β₁ᵗ) of each unit that takes one, computed
    for all of them at once per (β₁, dtype, device) of their step counts
    (:func:`~tritonkron.step.bounds.bias_corrections`, the same bits as one by one): a handful of
    ops per step, and one multiplication per parameter in :func:`finish_unit`, instead of about six."""
    batches: dict[tuple, list[int]] = {}
    for i, unit in enumerate(prepared):
        settings = unit.jobs[0].settings if unit.jobs else None
        if settings is not None and settings.bias_correction and unit.step is not None:
            batches.setdefault((settings.beta1, unit.step.dtype, unit.step.device), []).append(i)
    out = list(prepared)
    for (beta1, _, _), indices in batches.items():
        factors = bias_corrections([prepared[i].step for i in indices], beta1)
        for i, factor in zip(indices, factors, strict=True):
            out[i] = prepared[i]._replace(correction=factor)
    return out


def ensure_state(
    p: Tensor, settings: KronSettings, layout: BlockLayout, state: dict[str, Any], chunks: list[slice] | None
) -> list[bool]:
    """Create ``p``'s state, or check it and convert its momentum's form; returns which block groups
    keep their momentum rotated (every group with a diagonal side does, :mod:`tritonkron.step.diagonal`)."""
    one_sided = any(layout.diagonal)
    rotated = [one_sided or uses_rotated_momentum(settings, *g.shape) for g in layout.groups]
    counts = [len(g.offsets) for g in layout.groups] if chunks is None else [c.stop - c.start for c in chunks]
    if not state:
        _new_state(p, state, layout, settings, rotated, counts, statistics_dtype(p))
    else:
        check_state(p, state, layout, settings.sketch, counts)
        convert_momentum(state, layout, rotated, chunks)
    for block_state, r in zip(state[BLOCKS], rotated, strict=True):
        if r:
            ensure_failure_counts(block_state)
    return rotated


def _prepared(
    p: Tensor,
    group: dict[str, Any],
    settings: KronSettings,
    layout: BlockLayout,
    state: dict[str, Any],
    chunks: list[slice] | None,
    first: int,
    rotated: list[bool],
    grad: Tensor,
    ok: Tensor,
) -> PreparedUnit:
    """The due blocks and the jobs of a counted parameter (``grad`` may hold NaN/Inf where ``ok``
    is False: each group zeroes its blocks and keeps its momentum, run_group)."""
    refresh = _due_blocks(state, layout, chunks, first, group["precondition_every"], p.device)
    group_step = sketch_group_step if settings.sketch else block_group_step
    grads = layout.gather(grad)
    if chunks is not None:
        grads = [G[c] for G, c in zip(grads, chunks, strict=True)]
    jobs = [
        GroupJob(block_state, G, r, settings, due, ok, group_step, state.get(READY_KNOWN, False))
        for block_state, G, r, due in zip(state[BLOCKS], grads, rotated, refresh, strict=True)
    ]
    return PreparedUnit(p, layout, chunks, ok, grad, jobs, group["max_update_rms"], state[STEP])


def _new_state(
    p: Tensor,
    state: dict[str, Any],
    layout: BlockLayout,
    settings: KronSettings,
    rotated: list[bool],
    counts: list[int],
    dtype: torch.dtype,
) -> None:
    """Fill the empty ``state`` of ``p``: counters and block states (a non-rotated group with its
    zero momentum M ``[B, m, n]``, :mod:`tritonkron.step.momentum`)."""
    state[STEP] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
    state[SKIPPED] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
    state[CLOCK] = torch.tensor(0, dtype=torch.int64)
    state[BLOCKS] = [
        new_sketch_state(count, *g.shape, settings.sketch_rank, dtype=dtype, device=p.device)
        if settings.sketch
        else new_diagonal_state(count, *g.shape, layout.diagonal, dtype, p.device)
        if any(layout.diagonal)
        else new_group_state(count, *g.shape, dtype=dtype, device=p.device, rotated=r)
        for g, r, count in zip(layout.groups, rotated, counts, strict=True)
    ]
    for block_state, g, r, count in zip(state[BLOCKS], layout.groups, rotated, counts, strict=True):
        if not r:
            block_state[MOMENTUM] = torch.zeros(count, *g.shape, dtype=dtype, device=p.device)


def _due_blocks(
    state: dict[str, Any],
    layout: BlockLayout,
    chunks: list[slice] | None,
    first: int,
    period: int,
    device: torch.device,
) -> list[Refresh]:
    """Advance the clock; per block group, the blocks due for a basis refresh: host positions
    eagerly, the ⌈B/T⌉ slots computed on the device from the clock under ``torch.compile``
    (:class:`~tritonkron.step.schedule.DueSlots`, :mod:`tritonkron.step.schedule`).

    Eagerly the host clock c advances (after taking the device clock's count, one read, where a
    compiled step left one: it is dropped). Under compile the device clock does, c_dev ← c_dev + 1
    as a new tensor (created from the host clock when absent): the graph neither reads nor mutates
    a CPU tensor, and the clock, replaced rather than updated in place, need not be a static input.
    """
    compiling = torch.compiler.is_compiling()
    if compiling:
        if DEVICE_CLOCK not in state:  # state written before the host clock starts from the step count
            origin = state[CLOCK] if CLOCK in state else state[STEP]
            state[DEVICE_CLOCK] = origin.to(device=device, dtype=torch.int64)
        clock = state[DEVICE_CLOCK] = state[DEVICE_CLOCK] + 1
    else:
        if DEVICE_CLOCK in state:
            state[CLOCK] = state.pop(DEVICE_CLOCK).to("cpu", torch.int64, copy=True)
        elif CLOCK not in state:
            state[CLOCK] = torch.tensor(int(state[STEP]), dtype=torch.int64)
        now = advance_clock(state[CLOCK])
    due: list[Refresh] = []
    start = first
    for i, g in enumerate(layout.groups):
        lo, hi = (0, len(g.offsets)) if chunks is None else (chunks[i].start, chunks[i].stop)
        if compiling:
            due.append(due_mask(clock, start + lo, hi - lo, period, device))
        else:
            due.append(due_positions(now, start + lo, hi - lo, period))
        start += len(g.offsets)
    return due


def finish_unit(prepared: PreparedUnit, directions: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(update shaped like p, ok) from the (gathered, for a split parameter) group directions.

    With ``bias_correction`` the update is U/(1 − β₁ᵗ), t = the parameter's step count (the
    directions are linear in the momentum, so this is the direction of the corrected momentum);
    with ``bound="adam"`` its RMS is then capped at Adam's worst case B, which the uncorrected
    directions already respect (docs/maths.md §5.5); last, the RMS is capped at ``max_update_rms``
    when the group sets it. 1/(1 − β₁ᵗ) is ``prepared.correction`` where :func:`prepare_units`
    computed it, else computed here.
    """
    p, layout, _, ok, _, jobs, max_rms, step, correction = prepared
    update = layout.scatter(directions).reshape(p.shape)
    settings = jobs[0].settings if jobs else None
    if settings is not None and settings.bias_correction and step is not None:
        if correction is None:
            correction = bias_correction(step, settings.beta1)
        update = update * correction.to(update.dtype)
        if settings.bound is not None:
            update = limit_rms(update, adam_bound(settings.beta1, settings.beta2))
    if max_rms is not None:
        update = limit_rms(update, max_rms)
    return update, ok


def prepare_capture(states: Iterable[dict[str, Any]]) -> bool:
    """Ready Kronecker parameters' ``states`` for compiled steps that CUDA graphs can capture;
    True when every block of every one is initialised.

    Each state gets its device clock (a copy of the host clock, where it has none: the compiled
    step's first graph need not read the CPU clock) and, where every block is initialised (one
    device read per parameter), ``ready_known``: the compiled step is then traced without the
    initialisation's ``torch.cond`` (one more graph, once). Readiness only grows, and the flag is
    saved and loaded with the ``ready`` flags it describes, so it is never stale. A block that has
    never had a non-zero gradient (an unused embedding row) keeps its parameter's branch.

    The parameter-level tensors that the step updates in place (step counts, AdamW-path moments)
    are marked static inputs (unguarded ``torch._dynamo.mark_static_address``), as ``torch.optim``'s
    optimizers have theirs marked: CUDA graph trees capture in-place updates of static inputs only.
    The clocks and the block groups' state, which a compiled step replaces rather than updates,
    are not (a static input whose address changes would be re-recorded).
    """
    every = True
    for state in states:
        for key, value in state.items():
            if isinstance(value, Tensor) and key not in (CLOCK, DEVICE_CLOCK):
                torch._dynamo.mark_static_address(value, guard=False)
        blocks = state.get(BLOCKS, [])
        if not blocks:
            continue
        if DEVICE_CLOCK not in state:
            origin = state[CLOCK] if CLOCK in state else state[STEP]
            state[DEVICE_CLOCK] = origin.to(device=state[STEP].device, dtype=torch.int64, copy=True)
        if bool(torch.stack([b[READY].all() for b in blocks]).all()):
            state[READY_KNOWN] = True
        every = every and state.get(READY_KNOWN, False)
    return every
