"""Splitting one heavy parameter's blocks over all ranks (data parallelism).

Whole-parameter ownership balances badly when one parameter costs more than a rank's fair share
(a token embedding split into 50 blocks). Such a parameter is **split**: every rank keeps the state
of, and computes the directions for, a contiguous chunk of each of its block groups, the chunks
following ``torch.chunk``/DTensor ``Shard(0)`` (chunk size ⌈B/W⌉, the last ones shorter or empty).
One ``all_gather_into_tensor`` per step then gives every rank all directions (each chunk padded to
⌈B/W⌉ blocks, in ``comm_dtype``). A block's state is self-contained (factors, bases, eigenvalues and
its momentum: rotated in eigenbasis form, M itself in the low-rank and sketched forms), so nothing
else moves; the step count is kept on every rank, from the replicated gradient.

Checkpoints: ``state_dict()`` presents each chunked block tensor as a DTensor sharded on dim 0 over
all ranks (so ``torch.distributed.checkpoint`` writes each block once and re-shards on load), and
loading keeps this rank's chunk of a DTensor or of a full tensor.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from tritonkron.distributed.collectives import collective
from tritonkron.math.blocking import BlockLayout
from tritonkron.options import KronSettings, kron_settings
from tritonkron.state import BLOCKS

__all__ = ["SPLIT", "chunk_of", "gather_directions", "localize_split_state", "shard_split_state"]

SPLIT = -1  # the owner recorded for a split parameter: every rank holds a chunk


class KronOptimizer(Protocol):
    """What the checkpoint helpers read of a :class:`tritonkron.Kron` (which this layer cannot import)."""

    param_groups: list[dict[str, Any]]
    state: dict[Tensor, dict[str, Any]]

    def _resolve(
        self, p: Tensor, group: dict[str, Any], settings: KronSettings
    ) -> tuple[KronSettings, BlockLayout]:
        """The settings and block layout of ``p``."""


class OwnershipPlan(Protocol):
    """What they read of a :class:`tritonkron.distributed.plan.DistributedPlan` (which imports this module)."""

    owners: dict[Tensor, int]
    world_size: int

    def assign_optimizer(self, opt: KronOptimizer) -> None:
        """Record an owner (or :data:`SPLIT`) for each of ``opt``'s Kronecker parameters."""

    def block_chunks(self, p: Tensor, layout: BlockLayout) -> list[slice] | None:
        """This rank's chunk of each block group of a split parameter."""


def chunk_of(count: int, world_size: int, rank: int) -> slice:
    """This rank's contiguous chunk of ``count`` blocks: ⌈count/W⌉ each, in rank order (``Shard(0)``)."""
    size = -(-count // world_size)
    return slice(min(rank * size, count), min((rank + 1) * size, count))


def gather_directions(
    local: list[Tensor], counts: list[int], world_size: int, dtype: torch.dtype
) -> tuple[list[Tensor], int]:
    """All directions of a split parameter from every rank's chunks (one ``all_gather_into_tensor``).

    Args:
        local: this rank's directions per block group ``[b_r, m, n]``.
        counts: the groups' full block counts B.
        dtype: communication dtype.

    Returns:
        (the full directions per group ``[B, m, n]`` in the statistics dtype, bytes this rank sent).
    """
    sizes = [-(-count // world_size) for count in counts]
    padded = []
    for directions, size in zip(local, sizes, strict=True):
        pad = directions.new_zeros((size, *directions.shape[1:]))
        pad[: directions.shape[0]] = directions
        padded.append(pad.reshape(-1).to(dtype))
    send = torch.cat(padded)
    received = send.new_empty(world_size * send.numel())
    collective(dist.all_gather_into_tensor, received, send)
    by_rank = received.reshape(world_size, -1)
    full = []
    offset = 0
    for directions, size, count in zip(local, sizes, counts, strict=True):
        numel = size * _block_numel(directions)
        part = by_rank[:, offset : offset + numel].reshape(world_size * size, *directions.shape[1:])
        full.append(part[:count].to(directions.dtype))
        offset += numel
    return full, send.numel() * send.element_size()


def _block_numel(t: Tensor) -> int:
    """Elements of one block of a stack ``[B, m, n]`` (also when B = 0)."""
    return int(torch.Size(t.shape[1:]).numel())


def shard_blocks(entry: dict[str, Any], counts: list[int], mesh: DeviceMesh) -> dict[str, Any]:
    """A copy of a split parameter's state entry whose block tensors are ``Shard(0)`` DTensors on ``mesh``."""
    groups = []
    for blocks, count in zip(entry[BLOCKS], counts, strict=True):
        wrapped = {}
        for key, t in blocks.items():
            shape = (count, *t.shape[1:])
            stride = torch.empty(shape, device="meta").stride()
            wrapped[key] = DTensor.from_local(
                t, mesh, [Shard(0)], run_check=False, shape=shape, stride=stride
            )
        groups.append(wrapped)
    return {**entry, BLOCKS: groups}


def localize(entry: dict[str, Any], chunks: list[slice]) -> dict[str, Any]:
    """This rank's chunks of a loaded split parameter's block tensors.

    A plain tensor is the full stack (a gathered or single-process checkpoint, or
    :func:`tritonkron.distributed.plan.load_checkpoint`); a DTensor must be sharded like this run (a
    per-rank ``torch.save`` file of the same world size).

    Raises:
        ValueError: a DTensor whose local chunk is not this rank's chunk.
    """
    groups = []
    for blocks, chunk in zip(entry[BLOCKS], chunks, strict=True):
        local = {}
        for key, t in blocks.items():
            if isinstance(t, DTensor):
                t = t.to_local()
                if t.shape[0] != chunk.stop - chunk.start:
                    raise ValueError(
                        f"a split parameter's state '{key}' holds {t.shape[0]} blocks on this rank, but this "
                        f"world size gives it {chunk.stop - chunk.start}; load it with "
                        "tritonkron.distributed.plan.load_checkpoint or from a gathered state dict"
                    )
                local[key] = t.clone()
            else:
                local[key] = t[chunk].clone()
        groups.append(local)
    return {**entry, BLOCKS: groups}


def _split_params(plan: OwnershipPlan, opt: KronOptimizer) -> list[tuple[int, Tensor, BlockLayout]]:
    """(state_dict id, parameter, layout) of ``opt``'s split parameters under ``plan``."""
    plan.assign_optimizer(opt)
    found, index = [], 0
    for group in opt.param_groups:
        for p in group["params"]:
            if plan.owners.get(p) == SPLIT:
                found.append((index, p, opt._resolve(p, group, kron_settings(group))[1]))
            index += 1
    return found


def shard_split_state(plan: OwnershipPlan, opt: KronOptimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with each split parameter's chunked block tensors as ``Shard(0)`` DTensors."""
    for index, p, layout in _split_params(plan, opt):
        if index in state_dict["state"]:
            counts = [len(g.offsets) for g in layout.groups]
            mesh = init_device_mesh(p.device.type, (plan.world_size,))
            state_dict["state"][index] = shard_blocks(state_dict["state"][index], counts, mesh)
    return state_dict


def localize_split_state(plan: OwnershipPlan, opt: KronOptimizer) -> None:
    """Keep this rank's chunk of each split parameter's loaded block state."""
    for _, p, layout in _split_params(plan, opt):
        if BLOCKS in opt.state.get(p, {}):
            opt.state[p] = localize(opt.state[p], plan.block_chunks(p, layout))
