"""Preconditioning on ``torch.distributed``: each Kronecker parameter has one owner rank.

Under data parallelism (DDP) every rank holds the same parameters and, after the gradient
all-reduce, the same gradients; recomputing every preconditioner on every rank repeats the
expensive work world-size times. Here each Kronecker parameter gets one **owner** rank, except a
replicated parameter heavier than a rank's fair share, which is **split** (:data:`SPLIT`): every
rank keeps and computes a chunk of its blocks (:mod:`tritonkron.distributed.block_split`). On each step:

1. every rank runs the AdamW path for its non-matrix parameters (cheap: replicated, or on its own
   shard of FSDP2 DTensors, whose skip decision is agreed by one ``all_reduce``; see
   :mod:`tritonkron.distributed.shards`);
2. each rank advances the statistics and computes the search direction of the parameters it owns
   (only the owner holds their optimizer state, so the preconditioner memory is split too);
3. split parameters: one ``all_gather_into_tensor`` of the chunks' directions each;
   other replicated parameters: each rank broadcasts the directions it computed, packed into one flat
   buffer in ``comm_dtype`` (one collective per rank and step); every rank applies every update,
   so the parameters stay equal;
4. FSDP2 parameters (``fully_shard``: DTensors sharded on dim 0 of a 1-D mesh), lossless: the
   gradient rows of every such parameter go to its owner only, the owner preconditions the full
   matrix, and the update rows go back to the ranks that hold them, so every rank applies its
   own rows. Both exchanges are one ``all_to_all_single`` each per step (per dtype), whatever the
   number of parameters. Parameters stay sharded; an owner briefly holds the full gradients and
   updates of the parameters it owns.

Owners are chosen by greedy longest-processing-time over a cost model: a parameter with blocks of
shapes m_b × n_b costs

    c(p) = Σ_b [ 10 m_b n_b (m_b + n_b)  +  10 (m_b³ + n_b³) / T ]

(the per-step products of direction, statistics and eigenvalue tracking, at most five m·n·(m+n)
multiply-adds — 3mn(m+n) + mn·min(m,n) with the rotated momentum of :mod:`tritonkron.step.rotated`; a
relative cost, so the upper bound serves — plus the power step, QR and Rayleigh quotients of each
refresh amortised over the period T; a diagonal side, ``max_precond_dim``, contributes neither its
d in the sum nor its d³, only the O(mn) element-wise work, counted as 10 m_b n_b), and the heaviest unassigned parameter goes to the least-loaded rank. The assignment depends only on the
parameter shapes, their order and options, and the world size, so every rank computes the same one.

Every collective goes through :func:`tritonkron.distributed.collectives.collective`: waited on, its handle
dropped, and on gloo released by the backend's worker thread before the call returns, so no
``torch.distributed`` work outlives a step.

Checkpoints (each rank keeps its owned state; DCP resumes on any world size; gathered single
files) are in :mod:`tritonkron.distributed.checkpoint`, whose functions are importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Shard

from tritonkron.distributed.block_split import SPLIT, chunk_of, gather_directions
from tritonkron.distributed.checkpoint import (  # re-exported: the checkpoint API of this module
    gather_state_dict,
    kept_state_ids,
    load_checkpoint,
    load_full_state_dict,
)
from tritonkron.distributed.collectives import collective
from tritonkron.math.blocking import BlockLayout
from tritonkron.options import kron_settings, statistics_dtype

__all__ = [
    "SPLIT",
    "DistributedPlan",
    "assign_owners",
    "block_cost",
    "gather_state_dict",
    "kept_state_ids",
    "load_checkpoint",
    "load_full_state_dict",
    "resolve_distributed",
]


def block_cost(m: int, n: int, precondition_every: int) -> float:
    """Modelled cost of one m × n block per step: 10 mn(m + n) + 10 (m³ + n³) / T (see module doc)."""
    return 10.0 * m * n * (m + n) + 10.0 * (m**3 + n**3) / precondition_every


def layout_cost(layout: BlockLayout, precondition_every: int) -> float:
    """Modelled cost of one parameter: Σ over its blocks of :func:`block_cost`, or with a diagonal
    side (``layout.diagonal``) 10 mn (m_dense + n_dense) + 10 (m_dense³ + n_dense³)/T + 10 mn, a
    diagonal side's dimension counting 0."""
    if not any(layout.diagonal):
        return sum(block_cost(*g.shape, precondition_every) * len(g.offsets) for g in layout.groups)
    total = 0.0
    for g in layout.groups:
        m, n = g.shape
        dense = [d for d, diag in zip((m, n), layout.diagonal, strict=True) if not diag]
        per_block = 10.0 * m * n * (sum(dense) + 1) + 10.0 * sum(d**3 for d in dense) / precondition_every
        total += per_block * len(g.offsets)
    return total


def assign_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """Greedy longest-processing-time assignment: heaviest item first, to the least-loaded rank.

    Ties go to the lower rank and, among equal costs, the lower index comes first, so the result is
    deterministic. LPT's makespan is at most 4/3 − 1/(3·world_size) times the optimum.

    Raises:
        ValueError: ``world_size`` < 1.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    load = [0.0] * world_size
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[index] = rank
        load[rank] += costs[index]
    return owners


def resolve_distributed(distributed: bool | None) -> bool:
    """Whether to split the work: None → on when a process group with > 1 rank is initialised.

    Raises:
        ValueError: ``distributed`` is not None/True/False, or True without a process group.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise ValueError(f"distributed must be None (automatic), True or False; got {distributed!r}")
    initialised = dist.is_available() and dist.is_initialized()
    if distributed and not initialised:
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group "
            "(torch.distributed.init_process_group)"
        )
    if distributed is None:
        return initialised and dist.get_world_size() > 1
    return distributed


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _is_sharded(p: Tensor) -> bool:
    return isinstance(p, DTensor)


@dataclass
class DistributedPlan:
    """The owner of every Kronecker parameter and the collectives of one step.

    Attributes:
        rank, world_size: this process and the group size.
        comm_dtype: dtype of the communicated directions (None: each parameter's statistics dtype).
        owners: parameter → owner rank, filled on first use.
        computed: directions this rank has computed (work counter for tests and benchmarks).
        sent_bytes, received_bytes: payload this rank has sent / received in the optimizer's
            collectives (directions, FSDP2 gradient shards and update shards).
        collectives: the optimizer's collectives this rank has joined (broadcasts, all-to-alls).
            The counters are exact in eager mode; under ``torch.compile`` some increments are traced
            away.
    """

    rank: int
    world_size: int
    comm_dtype: torch.dtype | None = None
    owners: dict[Tensor, int] = field(default_factory=dict)
    computed: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0
    collectives: int = 0

    @classmethod
    def from_process_group(cls, comm_dtype: torch.dtype | None = None) -> DistributedPlan:
        """The plan for the default process group."""
        return cls(dist.get_rank(), dist.get_world_size(), comm_dtype)

    def assign(
        self, params: Sequence[Tensor], layouts: Sequence[BlockLayout], periods: Sequence[int]
    ) -> None:
        """Assign owners to ``params`` not yet assigned (all ranks pass the same lists in the same order)."""
        new = [i for i, p in enumerate(params) if p not in self.owners]
        if not new:
            return
        costs = {i: layout_cost(layouts[i], periods[i]) for i in new}
        fair = sum(costs.values()) / self.world_size
        for i in new:  # heavier than a rank's fair share, replicated and with blocks to split
            if (
                costs[i] > fair
                and not _is_sharded(params[i])
                and max(len(g.offsets) for g in layouts[i].groups) > 1
            ):
                self.owners[params[i]] = SPLIT
        whole = [i for i in new if params[i] not in self.owners]
        owners = assign_owners([costs[i] for i in whole], self.world_size)
        for i, owner in zip(whole, owners, strict=True):
            self.owners[params[i]] = owner

    def assign_optimizer(self, opt: Any) -> None:
        """Assign owners to every Kronecker-path parameter of ``opt`` (a :class:`tritonkron.Kron`)."""

        every = [(p, group) for group in opt.param_groups for p in group["params"] if opt.uses_kron(p, group)]
        if all(p in self.owners for p, _ in every):
            return
        layouts = [opt._resolve(p, group, kron_settings(group))[1] for p, group in every]
        self.assign([p for p, _ in every], layouts, [g["precondition_every"] for _, g in every])

    def agree(self, index: int | None, count: int) -> int | None:
        """The smallest of every rank's ``index`` (None: this rank has none; ``count`` bounds the indices).

        One ``all_reduce(MIN)`` of one integer, so that a decision taken from owned state only (a
        refresh failure to raise) is taken by every rank together instead of leaving the others
        waiting in the next collective.
        """
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        value = torch.tensor(count if index is None else index, dtype=torch.int64, device=device)
        collective(dist.all_reduce, value, op=dist.ReduceOp.MIN)
        agreed = int(value)
        return None if agreed >= count else agreed

    def owner_of(self, p: Tensor) -> int:
        """The rank that owns ``p``'s preconditioner state (:data:`SPLIT`: every rank, a chunk each)."""
        return self.owners[p]

    def block_chunks(self, p: Tensor, layout: BlockLayout) -> list[slice] | None:
        """This rank's chunk of each block group of a split parameter (:mod:`tritonkron.distributed.block_split`), else None."""
        if self.owners.get(p) != SPLIT:
            return None
        return [chunk_of(len(g.offsets), self.world_size, self.rank) for g in layout.groups]

    def gather_split(self, p: Tensor, local: list[Tensor], layout: BlockLayout) -> list[Tensor]:
        """Every block group's full directions of split parameter ``p`` from each rank's chunk."""
        counts = [len(g.offsets) for g in layout.groups]
        full, sent = gather_directions(local, counts, self.world_size, self.comm_dtype or statistics_dtype(p))
        self.collectives += 1
        self.sent_bytes += sent * (self.world_size - 1)
        self.received_bytes += sent * (self.world_size - 1)
        return full

    def run(
        self,
        units: Sequence,
        compute: Callable[[Any], tuple[Tensor, Tensor]],
        apply: Callable[[Any, Tensor, Tensor], None],
        state: dict[Tensor, Any],
    ) -> None:
        """Compute the owned directions, share them, apply every update on every rank.

        Args:
            units: the step's Kronecker units (NamedTuples with ``.param``), in the same order on every rank.
            compute: ``unit → (update shaped like the parameter, ok)``, run for owned units only; it may
                read the unit's parameter's shape, dtype, device, ``grad`` and ``state[param]`` only.
            apply: ``(unit, update, ok)``, run for every unit on every rank (on the local shard for FSDP2).
            state: the optimizer's per-parameter state (full-size state of owned FSDP2 parameters is
                kept under the DTensor parameter).
        """
        sharded = [u for u in units if _is_sharded(u.param)]
        full_grads = self._gather_grads(sharded)
        updates: dict[int, tuple[Tensor, Tensor]] = {}
        for unit in units:
            if self.owners[unit.param] in (self.rank, SPLIT):  # a split parameter: this rank's chunk
                updates[id(unit)] = self._compute(unit, compute, state, full_grads.get(id(unit)))
                self.computed += 1
        for unit in units:  # split parameters: every rank now holds the whole update
            if self.owners[unit.param] == SPLIT:
                apply(unit, *updates[id(unit)])
        replicated = [u for u in units if not _is_sharded(u.param) and self.owners[u.param] != SPLIT]
        self._broadcast_and_apply(replicated, updates, apply)
        self._scatter_and_apply(sharded, updates, apply)

    @staticmethod
    def _compute(
        unit: Any, compute: Callable[[Any], tuple[Tensor, Tensor]], state: dict, full_grad: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Run ``compute``; an FSDP2 parameter is presented as a full-size plain tensor with the full gradient."""
        if full_grad is None:
            return compute(unit)
        p = unit.param
        proxy = torch.empty(p.shape, dtype=p.dtype, device=full_grad.device)  # values never read
        proxy.grad = full_grad
        state[proxy] = state.pop(p, {})
        try:
            return compute(unit._replace(param=proxy))
        finally:
            state[p] = state.pop(proxy)

    def _broadcast_and_apply(self, units: Sequence, updates: dict, apply: Callable) -> None:
        """One broadcast per source rank of its directions (flat, ``comm_dtype``), then every update applied."""
        by_rank: list[list] = [[] for _ in range(self.world_size)]
        for unit in units:
            by_rank[self.owners[unit.param]].append(unit)
        for src, members in enumerate(by_rank):
            if not members:
                continue
            dtype = self.comm_dtype or statistics_dtype(members[0].param)
            sizes = [u.param.numel() for u in members]
            if src == self.rank:
                flat = torch.cat([updates[id(u)][0].reshape(-1).to(dtype) for u in members])
                self.sent_bytes += _nbytes(flat)
            else:
                flat = torch.empty(sum(sizes), dtype=dtype, device=members[0].param.device)
                self.received_bytes += _nbytes(flat)
            collective(dist.broadcast, flat, src=src)
            self.collectives += 1
            for unit, chunk in zip(members, flat.split(sizes), strict=True):
                p = unit.param
                ok = torch.isfinite(p.grad).all()  # gradients are equal on every rank after DDP
                apply(unit, chunk.reshape(p.shape).to(statistics_dtype(p)), ok)

    def _shard_rows(self, p: DTensor) -> int:
        """Rows per (padded) dim-0 shard of an FSDP2 parameter; raises for other layouts."""
        mesh = p.device_mesh
        if mesh.ndim != 1 or tuple(p.placements) != (Shard(0),) or mesh.size() != self.world_size:
            raise ValueError(
                "distributed Kron supports DTensor parameters sharded on dim 0 over a 1-D mesh of all ranks "
                f"(FSDP2 fully_shard); got placements {tuple(p.placements)} on a mesh of shape {tuple(mesh.shape)}"
            )
        return -(-p.shape[0] // self.world_size)

    def _all_to_all(
        self, sends: list[list[Tensor]], recv_sizes: list[int], dtype: torch.dtype, device: torch.device
    ) -> list[Tensor]:
        """Send ``sends[o]`` (flattened, concatenated) to every rank o in one ``all_to_all_single``;
        return the flat buffer received from each source rank (``recv_sizes[s]`` elements)."""
        send_sizes = [sum(t.numel() for t in chunk) for chunk in sends]
        flat = [t.reshape(-1).to(dtype) for chunk in sends for t in chunk]
        send = torch.cat(flat) if flat else torch.empty(0, dtype=dtype, device=device)
        received = torch.empty(sum(recv_sizes), dtype=dtype, device=device)
        collective(dist.all_to_all_single, received, send, recv_sizes, send_sizes)
        self.collectives += 1
        size = torch.empty((), dtype=dtype).element_size()
        self.sent_bytes += size * sum(n for o, n in enumerate(send_sizes) if o != self.rank)
        self.received_bytes += size * sum(n for s, n in enumerate(recv_sizes) if s != self.rank)
        return list(received.split(recv_sizes))

    def _gather_grads(self, units: Sequence) -> dict[int, Tensor]:
        """Bring every FSDP2 gradient's row shards (padded to equal rows) to its owner, one
        ``all_to_all_single`` per gradient dtype; returns ``{id(unit): full gradient}`` for owned units."""
        full: dict[int, Tensor] = {}
        for dtype, members in _by_key(units, lambda u: u.param.grad.dtype).items():
            sends: list[list[Tensor]] = [[] for _ in range(self.world_size)]
            mine = []
            for unit in members:
                p = unit.param
                rows, owner = self._shard_rows(p), self.owners[p]
                local = p.grad.to_local()
                padded = local.new_zeros((rows, *p.shape[1:]))
                padded[: local.shape[0]] = local
                sends[owner].append(padded)
                if owner == self.rank:
                    mine.append((unit, padded.numel()))
            per_source = sum(n for _, n in mine)
            device = members[0].param.grad.to_local().device
            received = self._all_to_all(sends, [per_source] * self.world_size, dtype, device)
            pieces = [buffer.split([n for _, n in mine]) for buffer in received]
            for i, (unit, _) in enumerate(mine):
                p = unit.param
                rows = self._shard_rows(p)
                parts = [source[i].reshape(rows, *p.shape[1:]) for source in pieces]
                full[id(unit)] = torch.cat(parts)[: p.shape[0]]
        return full

    def _scatter_and_apply(self, units: Sequence, updates: dict, apply: Callable) -> None:
        """Send each rank its rows of every FSDP2 update (with the ``ok`` flag as one more element),
        one ``all_to_all_single`` per communication dtype, and apply the local rows."""
        for dtype, members in _by_key(units, lambda u: self.comm_dtype or statistics_dtype(u.param)).items():
            sizes = [self._shard_rows(u.param) * u.param[0].numel() + 1 for u in members]
            sends: list[list[Tensor]] = [[] for _ in range(self.world_size)]
            for unit in members:
                if self.owners[unit.param] != self.rank:
                    continue
                update, ok = updates[id(unit)]
                rows = self._shard_rows(unit.param)
                padded = update.new_zeros((rows * self.world_size, *unit.param.shape[1:]))
                padded[: unit.param.shape[0]] = update
                for dst, chunk in enumerate(padded.split(rows)):
                    sends[dst] += [chunk, ok.reshape(1)]
            recv_sizes = [
                sum(n for u, n in zip(members, sizes, strict=True) if self.owners[u.param] == src)
                for src in range(self.world_size)
            ]
            device = members[0].param.to_local().device
            received = self._all_to_all(sends, recv_sizes, dtype, device)
            offsets = [0] * self.world_size
            for unit, size in zip(members, sizes, strict=True):
                p = unit.param
                src = self.owners[p]
                chunk = received[src][offsets[src] : offsets[src] + size]
                offsets[src] += size
                local = p.to_local()  # a view of this rank's shard: the update is written through it
                rows = self._shard_rows(p)
                update = chunk[:-1].reshape(rows, *p.shape[1:])[: local.shape[0]]
                apply(unit._replace(param=local), update.to(statistics_dtype(p)), chunk[-1] != 0)


def _by_key(units: Sequence, key: Callable[[Any], Any]) -> dict[Any, list]:
    """``units`` grouped by ``key(unit)``, each group in the original order."""
    groups: dict[Any, list] = {}
    for unit in units:
        groups.setdefault(key(unit), []).append(unit)
    return groups
