"""One Kronecker parameter's step around its block groups: before them (state, skip flag, step
count, momentum, refresh decision, one job per group) and after them (the update shaped like the
parameter, optionally RMS-capped). Between the two, :mod:`tritonkron.step.stacking` steps the groups,
alone or stacked with equal-shape groups of other parameters."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from tritonkron.math.blocking import BlockLayout
from tritonkron.options import KronSettings, statistics_dtype
from tritonkron.state import BLOCKS, MOMENTUM, SKIPPED, STEP
from tritonkron.step.adamw import count_nonfinite
from tritonkron.step.dense import block_group_step, new_group_state
from tritonkron.step.guards import check_state
from tritonkron.step.momentum import convert_momentum
from tritonkron.step.rotated import uses_rotated_momentum
from tritonkron.step.sketched import new_sketch_state, sketch_group_step
from tritonkron.step.stacking import GroupJob, ensure_failure_counts

__all__ = ["PreparedUnit", "finish_unit", "limit_rms", "prepare_unit"]


class PreparedUnit(NamedTuple):
    """A Kronecker parameter between :func:`prepare_unit` and :func:`finish_unit`."""

    param: Tensor
    layout: BlockLayout
    chunks: list[slice] | None
    ok: Tensor
    grad: Tensor
    jobs: list[GroupJob]
    max_update_rms: float | None


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
) -> PreparedUnit:
    """Everything of ``p``'s step before its block groups are stepped: state creation or checks,
    the skip flag and step count, the momentum of non-rotated groups, the refresh decision, and
    one :class:`~tritonkron.step.stacking.GroupJob` per block group (``chunks``: this rank's blocks of
    a split parameter)."""
    m, n = layout.matrix
    dtype = statistics_dtype(p)
    rotated = [uses_rotated_momentum(settings, *g.shape) for g in layout.groups]
    counts = [len(g.offsets) for g in layout.groups] if chunks is None else [c.stop - c.start for c in chunks]
    if not state:
        state[STEP] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
        state[SKIPPED] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
        if not all(rotated):
            state[MOMENTUM] = torch.zeros(m, n, dtype=dtype, device=p.device)
        state[BLOCKS] = [
            new_sketch_state(count, *g.shape, settings.sketch_rank, dtype=dtype, device=p.device)
            if settings.sketch
            else new_group_state(count, *g.shape, dtype=dtype, device=p.device, rotated=r)
            for g, r, count in zip(layout.groups, rotated, counts, strict=True)
        ]
    else:
        check_state(p, state, layout, settings.sketch, counts)
        convert_momentum(state, layout, rotated, chunks)
    for block_state, r in zip(state[BLOCKS], rotated, strict=True):
        if r:
            ensure_failure_counts(block_state)
    grad = p.grad.to(dtype).reshape(m, n)
    ok = count_nonfinite(grad, state)
    state[STEP].add_(ok.to(state[STEP].dtype))
    grad = torch.where(ok, grad, torch.zeros_like(grad))
    momentum = state.get(MOMENTUM)
    if momentum is not None:
        momentum.copy_(torch.where(ok, momentum.lerp(grad, 1 - group["betas"][0]), momentum))
    refresh = state[STEP] % group["precondition_every"] == 0
    if not torch.compiler.is_compiling():
        refresh = bool(refresh)  # one host read per parameter; non-refresh steps then skip the refresh test
    group_step = sketch_group_step if settings.sketch else block_group_step
    grads = layout.gather(grad)
    moments = layout.gather(momentum) if momentum is not None else [None] * len(rotated)
    if chunks is not None:
        grads = [G[c] for G, c in zip(grads, chunks, strict=True)]
        moments = [None if M is None else M[c] for M, c in zip(moments, chunks, strict=True)]
    jobs = [
        GroupJob(block_state, G, M, r, settings, refresh, ok, group_step)
        for block_state, G, M, r in zip(state[BLOCKS], grads, moments, rotated, strict=True)
    ]
    return PreparedUnit(p, layout, chunks, ok, grad, jobs, group["max_update_rms"])


def finish_unit(prepared: PreparedUnit, directions: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(update shaped like p, ok) from the (gathered, for a split parameter) group directions;
    the update's RMS is capped at ``max_update_rms`` when the group sets it."""
    p, layout, _, ok, grad, _, max_rms = prepared
    update = layout.scatter(directions, torch.empty_like(grad)).reshape(p.shape)
    if max_rms is not None:
        update = limit_rms(update, max_rms)
    return update, ok
