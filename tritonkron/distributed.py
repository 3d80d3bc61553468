"""Data-parallel preconditioning on ``torch.distributed``: each rank owns a share of the parameters.

Under DDP every rank holds the same parameters and, after the gradient all-reduce, the same
gradients; recomputing every preconditioner on every rank would repeat the expensive work
world-size times. Here each Kronecker parameter gets one **owner** rank, and on each step:

1. every rank runs the AdamW path for its non-matrix parameters (cheap, replicated);
2. each rank advances the statistics and computes the search direction of the parameters it owns
   (only the owner holds their optimizer state: the memory of the preconditioners is split too);
3. each rank broadcasts the directions it computed, packed into one flat buffer (one collective per
   rank and step, in ``comm_dtype``); every rank applies every update, so the parameters stay equal.

Owners are chosen by greedy longest-processing-time over a cost model: parameter p with blocks of
shapes m_b × n_b costs

    c(p) = Σ_b [ 2 m_b n_b (m_b + n_b) · 5  +  (m_b³ + n_b³) · 10 / T ]

(≈ five m·n·(m+n) GEMMs per step for direction, statistics and eigenvalue tracking, plus the
power step, QR and Rayleigh quotients of each refresh amortised over the period T), and the
heaviest unassigned parameter goes to the least-loaded rank. The assignment depends only on the
parameter shapes and options, so every rank computes the same one.

Bytes communicated per step: Σ_p numel(p) · sizeof(comm_dtype) broadcast in total (each rank sends
its own share); the gradient all-reduce is DDP's.

Checkpoints: ``state_dict()`` on a rank holds the state of the parameters that rank owns (and of
the AdamW-path parameters). Save one file per rank and resume with the same world size and the
same parameters (the assignment is then the same); :func:`owner_of` tells which rank holds what.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from tritonkron.reference.blocking import BlockLayout

__all__ = ["DistributedPlan", "assign_owners", "block_cost", "resolve_distributed"]


def block_cost(m: int, n: int, precondition_every: int) -> float:
    """Modelled cost of one m × n block per step: 10 mn(m + n) + 10 (m³ + n³) / T (see module doc)."""
    return 10.0 * m * n * (m + n) + 10.0 * (m**3 + n**3) / precondition_every


def assign_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """Greedy longest-processing-time assignment: heaviest item first, to the least-loaded rank.

    Ties go to the lower rank and, among equal costs, the lower index comes first, so the result is
    deterministic. LPT's makespan is at most 4/3 − 1/(3·world_size) times the optimum.
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


@dataclass
class DistributedPlan:
    """The owner of every Kronecker parameter and the collectives of one step.

    Attributes:
        rank, world_size: this process and the group size.
        comm_dtype: dtype of the broadcast directions (None: each parameter's statistics dtype).
        owners: parameter → owner rank, filled on first use.
        computed: how many directions this rank has computed (work counter for tests/benchmarks).
    """

    rank: int
    world_size: int
    comm_dtype: torch.dtype | None = None
    owners: dict[Tensor, int] = field(default_factory=dict)
    computed: int = 0

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
        costs = [
            sum(block_cost(*g.shape, periods[i]) * len(g.offsets) for g in layouts[i].groups) for i in new
        ]
        for i, owner in zip(new, assign_owners(costs, self.world_size), strict=True):
            self.owners[params[i]] = owner

    def owner_of(self, p: Tensor) -> int:
        """The rank that owns ``p``'s preconditioner state."""
        return self.owners[p]

    def run(
        self,
        units: Sequence,
        compute: Callable[[object], tuple[Tensor, Tensor]],
        apply: Callable[[object, Tensor, Tensor], None],
    ) -> None:
        """Compute the owned directions, broadcast them rank by rank, apply all updates.

        Args:
            units: the step's Kronecker units (``.param`` each), in the same order on every rank.
            compute: ``unit → (update shaped like the parameter, ok)``, run for owned units only.
            apply: ``(unit, update, ok)``, run for every unit on every rank.
        """
        by_rank: list[list] = [[] for _ in range(self.world_size)]
        for unit in units:
            by_rank[self.owners[unit.param]].append(unit)
        updates: dict[int, Tensor] = {}
        for unit in by_rank[self.rank]:
            update, _ = compute(unit)
            updates[id(unit)] = update
            self.computed += 1
        for src, members in enumerate(by_rank):
            if not members:
                continue
            dtype = self.comm_dtype or _stats_dtype(members[0].param)
            device = members[0].param.device
            sizes = [u.param.numel() for u in members]
            if src == self.rank:
                flat = torch.cat([updates[id(u)].reshape(-1).to(dtype) for u in members])
            else:
                flat = torch.empty(sum(sizes), dtype=dtype, device=device)
            dist.broadcast(flat, src=src)
            for unit, chunk in zip(members, flat.split(sizes), strict=True):
                p = unit.param
                ok = torch.isfinite(p.grad).all()  # gradients are equal on every rank after DDP
                apply(unit, chunk.reshape(p.shape).to(_stats_dtype(p)), ok)


def _stats_dtype(p: Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32
