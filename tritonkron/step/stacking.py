"""Equal-shape block groups of different parameters stepped as one batch (one-process eager step).

Every Kronecker parameter is split into block groups ``[B, m, n]`` (:mod:`tritonkron.math.blocking`),
and a transformer has many parameters whose groups share a shape (every 128 × 128 block of every
layer with ``block_size=128``). Stepping them one parameter at a time launches each op once per
parameter; stepping them together launches it once per shape. :class:`BlockStacks` does the latter
for every form: eigenbasis (:func:`tritonkron.step.rotated.rotated_group_step`), the low-rank form
of ``rank=k`` (:func:`tritonkron.step.dense.block_group_step`) and sketched
(:func:`tritonkron.step.sketched.sketch_group_step`), whose momentum M ``[B, m, n]`` is block
state like M̂ and is stacked with it:

* the jobs of one step are bucketed by (settings, form, block shape, dtype, device, state keys), so
  a bucket's groups follow the same mathematics (a group with a diagonal side,
  :mod:`tritonkron.step.diagonal`, only stacks with groups of the same diagonal sides and shape);
* a bucket's state is the concatenation of its members' states along the block dim, and after the
  step each member's state tensors are re-pointed to slices (views) of the bucket's new tensors:
  nothing is copied back. While the membership is the same and every member still holds those
  views (checked by identity each step), the next step reuses the bucket tensors without copying;
  anything else (a loaded ``state_dict``, a parameter without a gradient this step, a new param
  group) rebuilds the bucket once by concatenation;
* each member keeps its own skip flag and refresh schedule: ``ok`` becomes a per-block mask and
  the due blocks are the members' due positions shifted to their place in the stack, so a skipped
  parameter's blocks are untouched and each block refreshes when it would alone.

Every op of the step treats the blocks of a batch independently (batched GEMMs, QR and eigh,
elementwise masks, and reductions written so that their split across threads does not depend on
the batch: row sums before block sums, :func:`tritonkron.step.dense.squared_norms`; weighted
sums as multiply-and-reduce, not batched GEMVs), so on CPU a stacked step gives the same bits as
the per-parameter steps (``tests/optim/test_stacking.py``, ``python -m perf.bench_stacking``),
with two provisos:

* only block shapes whose dims are multiples of 4 are stacked (:func:`stackable`): LAPACK's QR
  rounds differently at other memory alignments, which odd shapes would change;
* the eigh fallback ladder moves a whole batch to float64 when any of its matrices fails in
  float32 (initialisation only, and only on such a failure), so a stacked block may then take the
  float64 result where it alone would not.

On CUDA, cuSOLVER and cuBLAS may choose another algorithm for a larger batch, so there stacked and
per-parameter steps agree to rounding, not bit for bit (``Kron(stack=False)`` steps per parameter).

State dicts hold the member views; ``torch.save`` writes each bucket's storage once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from tritonkron.options import KronSettings
from tritonkron.state import FAILURES, READY
from tritonkron.step.diagonal import diagonal_group_step, diagonal_sides
from tritonkron.step.momentum import advance_momentum
from tritonkron.step.rotated import rotated_group_step
from tritonkron.step.schedule import block_ordinals
from tritonkron.step.traceable import Refresh

__all__ = ["BlockStacks", "GroupJob", "ensure_failure_counts", "run_group", "stackable"]


class GroupJob(NamedTuple):
    """The inputs of one block group's step.

    Attributes:
        state: the group's state dict (updated by the step).
        G: gradient blocks ``[B, m, n]`` in the statistics dtype.
        rotated: the group keeps its momentum rotated (eigenbasis form, stackable).
        settings: the parameter's parsed settings.
        refresh: the blocks refreshed this step (host positions eagerly, the due slots under
            compile; :func:`tritonkron.step.traceable.refresh_blocks`).
        ok: one-element bool tensor, False when the parameter's gradient is not finite.
        step_fn: the step of a group that is not rotated (dense low-rank or sketched form), which
            reads the group's momentum M (``momentum`` in its state).
        ready_known: the host knows every block is initialised (state ``ready_known``).
    """

    state: dict[str, Tensor]
    G: Tensor
    rotated: bool
    settings: KronSettings
    refresh: Refresh
    ok: Tensor
    step_fn: Any = None
    ready_known: bool = False


def run_group(job: GroupJob) -> Tensor:
    """One group's own step; returns its direction ``[B, m, n]``. The gradient blocks of a skipped
    step (``ok`` False, where they may hold NaN/Inf) are zeroed first; a group that is not rotated
    first advances its momentum, M ← β₁ M + (1 − β₁) G where ``ok``
    (:func:`tritonkron.step.momentum.advance_momentum`)."""
    G = torch.where(job.ok.reshape(-1, 1, 1), job.G, 0.0)
    if job.rotated:
        one_sided = any(diagonal_sides(job.state))
        step = diagonal_group_step if one_sided else rotated_group_step
        return step(job.state, G, job.settings, job.refresh, job.ok, job.ready_known)
    M = advance_momentum(job.state, G, job.ok, job.settings.beta1)
    return job.step_fn(job.state, G, M, job.settings, job.refresh, job.ok, job.ready_known)


@dataclass
class _Bucket:
    """A bucket's stacked state and the member views handed out after its last step."""

    members: tuple[int, ...]  # id() of each member's state dict, in order
    counts: tuple[int, ...]
    state: dict[str, Tensor]
    views: list[dict[str, Tensor]]

    def holds(self, jobs: Sequence[GroupJob]) -> bool:
        """Whether ``jobs`` are the same members, each still holding this bucket's views."""
        if tuple(id(j.state) for j in jobs) != self.members:
            return False
        if tuple(j.G.shape[0] for j in jobs) != self.counts:
            return False
        return all(
            job.state.get(key) is view
            for job, views in zip(jobs, self.views, strict=True)
            for key, view in views.items()
        )


ALIGNMENT = 4


def stackable(job: GroupJob) -> bool:
    """Whether ``job`` may join a bucket: a group whose block dims are multiples of 4.

    LAPACK's QR on CPU rounds a matrix differently depending on its memory alignment, and in a
    stacked tensor a block's address moves by a multiple of its size: with both dims multiples of
    4 every per-block size (m², n², mn in float32 or float64) is a multiple of 64 bytes, so each
    block keeps the alignment it has in its own parameter's tensor and the bits do not change.
    """
    m, n = job.G.shape[-2:]
    return m % ALIGNMENT == 0 and n % ALIGNMENT == 0


def _bucket_key(job: GroupJob) -> tuple:
    state = job.state
    return (
        job.settings,
        job.rotated,
        diagonal_sides(state),
        tuple(job.G.shape[1:]),
        job.G.dtype,
        job.G.device,
        tuple(sorted(state)),
    )


def _per_block(flags: Sequence[Tensor | bool], counts: Sequence[int], device: torch.device) -> Tensor:
    """One bool per block from one flag (bool or one-element tensor) per member."""
    parts = [
        flag.reshape(1).expand(count)
        if isinstance(flag, Tensor)
        else torch.full((count,), flag, dtype=torch.bool, device=device)
        for flag, count in zip(flags, counts, strict=True)
    ]
    return torch.cat(parts)


def _stacked_refresh(flags: Sequence[Refresh], counts: Sequence[int]) -> Refresh:
    """The members' refresh selections as one selection of the stacked blocks: each member's host
    positions (a bool: all or none of its blocks) shifted by its offset in the stack (stacking is
    eager only, so there are no compiled slots here)."""
    offsets = block_ordinals(counts)
    positions = [
        (tuple(range(count)) if flag else ()) if isinstance(flag, bool) else flag
        for flag, count in zip(flags, counts, strict=True)
    ]
    return tuple(start + pos for flag, start in zip(positions, offsets, strict=True) for pos in flag)


class BlockStacks:
    """Buckets of stackable block groups and their stacked state, kept between steps."""

    def __init__(self) -> None:
        self._buckets: dict[tuple, _Bucket] = {}

    def run(self, jobs: Sequence[GroupJob]) -> list[Tensor]:
        """The direction of every job, in order; stackable jobs of one bucket are stepped together,
        when the first of them comes up (the others keep their order)."""
        directions: list[Tensor | None] = [None] * len(jobs)
        keys = [_bucket_key(job) if stackable(job) else None for job in jobs]
        buckets: dict[tuple, list[int]] = {}
        for i, key in enumerate(keys):
            if key is not None:
                buckets.setdefault(key, []).append(i)
        kept: dict[tuple, _Bucket] = {}
        for i, (job, key) in enumerate(zip(jobs, keys, strict=True)):
            if directions[i] is not None:
                continue
            if key is None or len(buckets[key]) == 1:
                directions[i] = run_group(job)
                continue
            indices = buckets[key]
            U, kept[key] = self._stacked_step([jobs[j] for j in indices], self._buckets.get(key))
            start = 0
            for j, count in zip(indices, kept[key].counts, strict=True):
                directions[j] = U[start : start + count]
                start += count
        self._buckets = kept  # buckets not used this step are dropped (their members own their state)
        return directions  # type: ignore[return-value]

    @staticmethod
    def _stacked_step(members: Sequence[GroupJob], bucket: _Bucket | None) -> tuple[Tensor, _Bucket]:
        """Step ``members`` as one batch; returns (stacked direction, the bucket after the step)."""
        counts = tuple(j.G.shape[0] for j in members)
        if bucket is not None and bucket.holds(members):
            state = bucket.state
        else:
            state = {key: torch.cat([j.state[key] for j in members]) for key in members[0].state}
        device = state[READY].device
        G = torch.cat([j.G for j in members])
        ok = _per_block([j.ok for j in members], counts, device)
        refresh = _stacked_refresh([j.refresh for j in members], counts)
        first, known = members[0], all(j.ready_known for j in members)
        U = run_group(GroupJob(state, G, first.rotated, first.settings, refresh, ok, first.step_fn, known))
        views: list[dict[str, Tensor]] = []
        start = 0
        for job, count in zip(members, counts, strict=True):
            member_views = {key: value[start : start + count] for key, value in state.items()}
            job.state.update(member_views)
            views.append(member_views)
            start += count
        members_ids = tuple(id(j.state) for j in members)
        return U, _Bucket(members_ids, counts, state, views)


def ensure_failure_counts(state: dict[str, Tensor]) -> None:
    """Give state written before refresh-failure counting its (zero) counts, so buckets agree on keys."""
    if FAILURES not in state:
        ready = state[READY]
        state[FAILURES] = torch.zeros(ready.shape, dtype=torch.int32, device=ready.device)
