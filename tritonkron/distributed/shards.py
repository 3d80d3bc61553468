"""DTensor parameters on the elementwise paths: local shards, one global finiteness decision, loading.

FSDP2 (``fully_shard``) turns every parameter into a DTensor, including the biases and norm weights
that take :class:`tritonkron.Kron`'s AdamW path. AdamW is elementwise, so each rank updates its own
shard: the moments are DTensors laid out like the parameter (``zeros_like`` of it), and the step
works on ``to_local()`` views of parameter, gradient and moments, which write through to the shards.

What is not elementwise is the non-finite decision: a NaN in one rank's shard must skip the whole
parameter on every rank, as in one process. :func:`finite_flags` therefore reduces each DTensor
gradient's local "all finite" flag with a MIN over every dimension of its mesh, one ``all_reduce``
per mesh dimension for all of a step's DTensor gradients together. Plain tensors need no message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor

from tritonkron.distributed.collectives import collective

__all__ = ["finite_flags", "like_param", "local"]


def local(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (a view: in-place writes reach the DTensor), or ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def finite_flags(grads: Sequence[Tensor]) -> list[Tensor]:
    """For each gradient, a 0-dim bool tensor: True when every element, on every rank, is finite.

    A DTensor's flag is the MIN of the local flags over all ranks of its mesh (every rank that holds
    a shard must call this with the same DTensors in the same order); a plain tensor's is local.
    """
    flags = [torch.isfinite(local(g)).all() for g in grads]
    by_mesh: dict[Any, list[int]] = {}
    for i, g in enumerate(grads):
        if isinstance(g, DTensor):
            by_mesh.setdefault(g.device_mesh, []).append(i)
    for mesh, indices in by_mesh.items():
        stacked = torch.stack([flags[i] for i in indices]).to(torch.int32)
        for dim in range(mesh.ndim):
            collective(dist.all_reduce, stacked, op=dist.ReduceOp.MIN, group=mesh.get_group(dim))
        for i, flag in zip(indices, stacked.bool().unbind(), strict=True):
            flags[i] = flag
    return flags


def like_param(value: Any, p: Tensor) -> Any:
    """Loaded state ``value`` laid out like a DTensor parameter ``p``.

    A plain tensor of ``p``'s full shape (from a gathered or single-process checkpoint) becomes a
    DTensor with ``p``'s mesh and placements, each rank keeping its own slice (no communication); a
    DTensor, a tensor of another shape (a 0-dim step count) or a non-tensor is returned unchanged.
    """
    if (
        isinstance(p, DTensor)
        and isinstance(value, Tensor)
        and not isinstance(value, DTensor)
        and value.shape == p.shape
        and value.dim() > 0
    ):
        return distribute_tensor(value.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
    return value
