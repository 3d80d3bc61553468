"""Checkpoints of a distributed :class:`tritonkron.Kron`: what each rank keeps, DCP loading on any
world size, and single-file gathered state dicts.

``opt.state_dict()`` on a rank holds the state of the Kronecker parameters it owns and of the
AdamW-path parameters (replicated; DTensor moments for FSDP2 parameters).
``torch.distributed.checkpoint.save`` of it writes each entry once; :func:`load_checkpoint` reads
back what this rank owns under the *current* world size, so a checkpoint resumes on any number of
ranks. :func:`gather_state_dict` collects the full state on one rank (for ``torch.save``), and
:func:`load_full_state_dict` keeps this rank's share of one.

The gathering collectives go through :func:`tritonkron.distributed.collectives.collective`, so none of them is
still held by a gloo worker thread when the function returns (a checkpoint is often the last thing
a job does before it exits).
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.tensor import DTensor, Shard

from tritonkron.distributed.block_split import SPLIT
from tritonkron.distributed.collectives import collective

__all__ = ["gather_state_dict", "kept_state_ids", "load_checkpoint", "load_full_state_dict"]


def _plan(opt: Any) -> Any:
    """``opt``'s :class:`~tritonkron.distributed.plan.DistributedPlan` with owners assigned, or None."""
    plan = getattr(opt, "_plan", None)
    if plan is not None:
        plan.assign_optimizer(opt)
    return plan


def kept_state_ids(opt: Any) -> set[int]:
    """``state_dict`` ids (0, 1, … over the param groups) of the parameters whose state this rank keeps.

    That is every parameter without distribution; with it, the Kronecker parameters this rank owns
    or holds a chunk of (split, owner -1) plus every AdamW-path parameter (replicated).
    """
    plan = _plan(opt)
    ids: set[int] = set()
    index = 0
    for group in opt.param_groups:
        for p in group["params"]:
            if plan is None or not opt.uses_kron(p, group) or plan.owner_of(p) in (plan.rank, SPLIT):
                ids.add(index)
            index += 1
    return ids


def _full_tensor(value: DTensor) -> Tensor:
    """The whole tensor of a DTensor: for ``Shard(0)`` over a 1-D mesh (FSDP2) one all-gather of the
    rows padded to equal shards; other layouts through ``DTensor.full_tensor``."""
    mesh = value.device_mesh
    if mesh.ndim != 1 or tuple(value.placements) != (Shard(0),):
        return value.full_tensor()
    local = value.to_local()
    rows = -(-value.shape[0] // mesh.size())
    send = local.new_zeros((rows, *value.shape[1:]))
    send[: local.shape[0]] = local
    received = send.new_empty((mesh.size() * rows, *value.shape[1:]))
    collective(dist.all_gather_into_tensor, received, send, group=mesh.get_group())
    return received[: value.shape[0]]


def _to_cpu(value: Any) -> Any:
    """A CPU copy of ``value``; DTensors (AdamW-path state of FSDP2 parameters) are gathered whole,
    a collective, so every rank must convert the same DTensors in the same order."""
    if isinstance(value, DTensor):
        return _full_tensor(value).detach().cpu()
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def gather_state_dict(opt: Any, dst: int = 0) -> dict[str, Any] | None:
    """The full, single-process-equivalent ``state_dict`` of ``opt`` on rank ``dst`` (None elsewhere).

    Every rank must call it. Communication: each rank's owned state, moved to the CPU and serialized
    (``torch.save``), is gathered to ``dst``; sharded AdamW-path state (DTensors) is first gathered whole. The result
    loads into a single-process :class:`tritonkron.Kron`, or into a distributed one of any world
    size with :func:`load_full_state_dict`.
    """
    sd = opt.state_dict()
    plan = _plan(opt)
    if plan is None:
        return sd
    kept = kept_state_ids(opt)
    mine = {i: _to_cpu(sd["state"][i]) for i in sorted(sd["state"]) if i in kept}
    parts = _gather_object(mine, dst, plan.rank, plan.world_size)
    if parts is None:
        return None
    full: dict[int, Any] = {}
    for part in parts:
        full.update(part)
    return {"state": dict(sorted(full.items())), "param_groups": sd["param_groups"]}


def _gather_object(obj: Any, dst: int, rank: int, world_size: int) -> list[Any] | None:
    """Every rank's ``obj`` on rank ``dst`` (None elsewhere), like ``dist.gather_object``: each
    serialized with ``torch.save``, the sizes all-gathered, the padded bytes gathered to ``dst``."""
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = torch.frombuffer(bytearray(buffer.getbuffer()), dtype=torch.uint8).to(device)
    sizes = torch.empty(world_size, dtype=torch.int64, device=device)
    collective(dist.all_gather_into_tensor, sizes, torch.tensor([data.numel()], device=device))
    padded = data.new_zeros(int(sizes.max()))
    padded[: data.numel()] = data
    gathered = [torch.empty_like(padded) for _ in range(world_size)] if rank == dst else None
    collective(dist.gather, padded, gather_list=gathered, dst=dst)
    if gathered is None:
        return None
    return [
        torch.load(io.BytesIO(part[:size].cpu().numpy().tobytes()), weights_only=False)
        for part, size in zip(gathered, sizes.tolist(), strict=True)
    ]


def load_full_state_dict(opt: Any, state_dict: dict[str, Any]) -> None:
    """Load a full state dict (e.g. from :func:`gather_state_dict`), keeping only this rank's share."""
    kept = kept_state_ids(opt)
    opt.load_state_dict({**state_dict, "state": {i: v for i, v in state_dict["state"].items() if i in kept}})


def _child(node: Any, key: Any, empty: Any) -> Any:
    """``node[key]``, created as ``empty`` when missing (``node`` a dict, or a list grown with None)."""
    if isinstance(node, list):
        node.extend([None] * (key + 1 - len(node)))
        if node[key] is None:
            node[key] = empty
        return node[key]
    return node.setdefault(key, empty)


def _nest(items: dict[tuple, Any]) -> dict[str, Any]:
    """Rebuild a nested value from ``path → leaf`` (str path items are dict keys, int items list indices)."""
    root: dict[str, Any] = {}
    for path, value in items.items():
        node: Any = root
        for key, nxt in zip(path[:-1], path[1:], strict=True):
            node = _child(node, key, [] if isinstance(nxt, int) else {})
        _child(node, path[-1], None)
        node[path[-1]] = value
    return root


def load_checkpoint(opt: Any, checkpoint_id: str | os.PathLike[str], key: str = "optim") -> None:
    """Load ``opt``'s state from a ``torch.distributed.checkpoint`` directory saved with
    ``dcp.save({..., key: opt.state_dict()}, checkpoint_id=...)`` on any number of ranks.

    Each rank reads only the entries it keeps under the current world size and owners
    (:func:`kept_state_ids`), so the checkpoint re-shards to a different world size, or loads in a
    single process. Every rank of the current group must call it.

    Raises:
        ValueError: the checkpoint has no entry under ``key``.
    """
    reader = dcp.FileSystemReader(checkpoint_id)
    metadata = reader.read_metadata()
    kept = {str(i) for i in kept_state_ids(opt)}
    template: dict[str, Any] = {}
    paths: dict[str, tuple] = {}
    for fqn, meta in metadata.state_dict_metadata.items():
        path = tuple(metadata.planner_data.get(fqn, (fqn,)))
        if path[0] != key or (len(path) > 2 and path[1] == "state" and path[2] not in kept):
            continue
        paths[fqn] = path[1:]
        is_tensor = isinstance(meta, TensorStorageMetadata)
        template[fqn] = torch.empty(meta.size, dtype=meta.properties.dtype) if is_tensor else None
    if not paths:
        raise ValueError(f"checkpoint {checkpoint_id!s} has no entry under key={key!r}")
    dcp.load(template, storage_reader=reader, no_dist=not dist.is_initialized())
    loaded = _nest({paths[fqn]: value for fqn, value in template.items()})
    loaded["state"] = {int(i): v for i, v in loaded.get("state", {}).items()}
    opt.load_state_dict(loaded)
