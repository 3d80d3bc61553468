"""The ``torch.optim`` front end: :class:`Kron`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from tritonkron.distributed.block_split import localize_split_state, shard_split_state
from tritonkron.distributed.plan import DistributedPlan, resolve_distributed
from tritonkron.distributed.shards import like_param
from tritonkron.math.blocking import BlockLayout, layout_of
from tritonkron.options import (
    AUTO,
    COMM_DTYPES,
    DEFAULTS,
    EXTRA_GROUP_KEYS,
    KronSettings,
    kron_settings,
    validate_group,
)
from tritonkron.state import BLOCKS, MOMENTUM, loaded_to_device
from tritonkron.step.adamw import run_adamw
from tritonkron.step.apply import apply_update, apply_updates
from tritonkron.step.guards import FailureWatch, check_gradients, check_refresh_failures
from tritonkron.step.schedule import block_ordinals
from tritonkron.step.stacking import BlockStacks, run_group
from tritonkron.step.unit import PreparedUnit, finish_unit, prepare_capture, prepare_unit, prepare_units
from tritonkron.step.warm_start import warm_started
from tritonkron.tuning.file import TuningTable, TuningWarning
from tritonkron.tuning.lookup import auto_settings, resolve_tuning

__all__ = ["BLOCKS", "MOMENTUM", "Kron", "KronUnit"]  # state keys re-exported for callers of the front end


class KronUnit(NamedTuple):
    """One parameter with a gradient on the Kronecker path, with its group and parsed settings."""

    param: Tensor
    group: dict[str, Any]
    settings: KronSettings
    first: int = 0  # ordinal of its first block among all blocks (the refresh schedule's phase)


class Kron(Optimizer):
    r"""Kronecker-factored optimizer with a choice of Bregman divergence and subspace-aware preconditioning.

    For each matrix parameter W (m × n; higher-order tensors are viewed as d₀ × d₁⋯d_k and large
    dims are split into blocks of at most ``block_size``), with gradient G and momentum M:

    .. math::
        M &\leftarrow \beta_1 M + (1-\beta_1) G \\
        U &= Q_A\big((Q_A^\top M Q_B) \odot \Sigma\big) Q_B^\top,\quad
             \Sigma_{ij} = \frac{s^A_i s^B_j}{1 + \epsilon\, s^A_i s^B_j} \\
        W &\leftarrow (1 - \eta\lambda) W - \eta U

    where s^A, s^B are the inverse square roots of the tracked eigenvalues of the Kronecker factors
    A ⊗ B ≈ E[vec G vec Gᵀ] (``rank=None``), or their spike-and-flat version (``rank=k``: the top-k
    eigendirections by their eigenvalues, the rest by one adaptive isotropic constant, ``tail``).
    The factors follow ``divergence``'s one-step EMA fixed-point rule (``"logdet"`` is KL-Shampoo,
    ``"von_neumann"`` Shampoo's statistics with exponent −1/2, ``"frobenius"`` the nearest Kronecker
    product); each block's eigenbases are refreshed every ``precondition_every`` steps by a power step +
    QR, the blocks taking turns so that a step refreshes about 1/T of them (:mod:`tritonkron.step.schedule`).
    A block's first non-zero gradient initialises its statistics and moves nothing (README, "What is derived and what is reconstructed").
    Parameters with fewer than 2 dims and groups with ``kron=False`` take AdamW's update.

    Args:
        params: iterable of tensors or param-group dicts; every option below can be overridden per group.
        lr: learning rate η (float or one-element tensor).
        betas: (β₁ momentum, β₂ statistics retention); β₂ is also AdamW's second-moment β on the AdamW path.
        eps: ε of the 1/(√(a_i b_j) + ε) damping (AdamW's ε on the AdamW path).
        weight_decay: decoupled weight decay λ (W ← (1 − ηλ) W).
        divergence: "logdet" | "von_neumann" | "frobenius".
        rank: None for full eigenvalue preconditioning, k for the subspace-aware optimizer, or "auto" for
            the block size and per-factor ranks of each shape from the tuning file (``python -m autotune``).
        tail: "mean" | "kth" | "sketchy" | "fixed", the isotropic tail constant rule (rank=k only).
        alpha: multiplier α of the tail constant (the constant itself for "fixed").
        precondition_every: refresh period T of the eigenbases (dense factors) or of the sketches'
            Rayleigh–Ritz step (``sketch=True``); block g of the optimizer (in parameter order)
            refreshes when (c + g) ≡ 0 (mod T), c = the steps its parameter was given a gradient.
        block_size: largest dense block dimension; larger dims (up to ``max_precond_dim``) are split
            into nearly equal blocks.
        kron: False makes the whole group use the AdamW path.
        flat_tail_in_stats: use the spike-and-flat eigenvalues inside the LogDet/Frobenius coupling.
        eig_floor: eigenvalues are floored at eig_floor · (largest eigenvalue of the factor).
        init_floor: initial eigenvalues are floored at init_floor · (their mean).
        sketch: keep each factor as a rank-ℓ low-rank-plus-isotropic sketch X̃ = U H Uᵀ + τ(I − UUᵀ)
            instead of a dense d × d matrix and eigenbasis (requires ``rank=k``): O((m + n)·ℓ + ℓ²)
            state per block instead of 2(m² + n²), so large dims (embeddings, LM heads) need no
            blocking: raise ``block_size`` to the largest dim to sketch them whole. Between refreshes
            the basis U is kept and H tracked in it (no factorisation); every ``precondition_every``
            steps a block takes the Rayleigh–Ritz step (QR of [U, K U], eigh of the ≤ 2ℓ × 2ℓ
            compression). See :mod:`tritonkron.step.sketched`; ``precondition_every=1``
            re-diagonalises every update.
        sketch_rank: ℓ ≥ rank, the sketch rank (default 2·rank); only used with ``sketch=True``.
        nonfinite: "skip" (a NaN/Inf gradient leaves that parameter, its statistics and its step count
            untouched and is counted in ``state["skipped_steps"]``; a mask, no host read) or "raise"
            (``FloatingPointError`` naming the parameter before anything is updated; one host read
            per step, a graph break under ``torch.compile``).
        max_refresh_failures: a block whose basis refresh gives a non-finite result keeps its last good
            basis and eigenvalues; after this many consecutive failures of one block, ``step`` raises
            ``RuntimeError`` naming the parameter, once the whole step has been applied (eager mode only;
            in one process the counts reach the host without a wait, so on CUDA the error usually comes
            one step later; under ``torch.compile`` the counts are kept but not checked).
        max_update_rms: None (off), or c > 0: a parameter's direction U is scaled by
            min(1, c / RMS(U)) before the step, RMS(U) = ‖U‖_F/√(numel). A safeguard against the
            rare huge update when a gradient lands in directions whose tracked eigenvalues are tiny
            (the direction uses the pre-update statistics; README, "What is derived and what is reconstructed").
        bound: "adam" (the default) or None (off): the direction is bounded like Adam's. In the rotated frame each
            entry's scale is 1/(max(√(a_i b_j), √(1 − β₂)|Ĝ_ij|, |M̂_ij|/B) + ε), Ĝ the current
            gradient in the eigenbasis and B = (1 − β₁)/√((1 − β₂)(1 − β₁²/β₂)) the worst case of
            Adam's |m|/√v (1.17 at the default betas), so every entry of the rotated direction and
            its RMS are at most B; the low-rank forms (``rank=k``, ``sketch``) cap per entry, row,
            column and tail block, with the same RMS(U) ≤ B. Needs β₁² < β₂ (docs/maths.md §5.5).
            The default since it won the char-LM full protocol (README, "Full protocol"); a state
            dict saved before the option existed resumes unbounded, as it was written.
        bias_correction: divide the update by 1 − β₁ᵗ (t = ``state["step"]``, no host read), as Adam
            does for its momentum (off by default: it helps short runs, but at high lr the
            uncorrected momentum's implicit warm-up was better; perf/results/bounds_2026-12-07.md);
            with ``bound`` the corrected update's RMS is capped at B again.
            A block's first non-zero gradient still only initialises it (docs/maths.md §5.5).
        warm_start: W ≥ 0 (0, the default: off): a parameter's first W updates take Adam's direction
            with the Kronecker update's norm, faded out linearly (docs/maths.md §5.6); Adam's m, v
            live only meanwhile. For short runs, with ``bias_correction=True`` (README, "Early training").
        precision: operand precision of the step's GEMMs: "ieee" (float32), "tf32" (TF32 tensor
            cores) or "bf16" (bfloat16 operands, float32 accumulation); float64 statistics are
            always IEEE (:mod:`tritonkron.options`, docs/maths.md §11).
        orthonormalize: how a basis refresh orthonormalises: "householder" (QR), "cholesky"
            (shifted CholeskyQR3 in float64: GEMMs and batched Cholesky, no per-matrix QR) or
            "auto" (cholesky on CUDA, householder elsewhere; docs/maths.md §2.4).
        max_precond_dim: None (off) or an int ≥ 1: a matrix dim larger than it is not split into
            blocks and its factor is kept diagonal (a length-d vector, the diagonal-restricted
            projection of ``divergence``), the other side staying a dense factor blocked at
            ``block_size`` (both sides diagonal when both dims exceed it: diag(a) ⊗ diag(b)). A
            token embedding's vocab side, say, then needs no m × m factors, bases or refreshes
            (:mod:`tritonkron.step.diagonal`, docs/maths.md §9.4). Not used by ``sketch=True``
            groups, whose state is O(dℓ) already. The default 16384 makes vocabulary-sized dims
            diagonal and leaves hidden and MLP dims dense: on GPT-2-small it removes 21 % of the
            preconditioner's multiply-adds and 25 % of its state (the embedding's 50 blocks become
            one), with no loss change on the char-LM when only a vocabulary side is diagonal
            (``perf/results/max_precond_dim_2026-12-08.md``).
        tuning: a tuning file (path or loaded table) for ``rank="auto"``; None reads ``TRITONKRON_TUNING``.
            A missing or corrupt file raises ``TuningFileError`` here; without any file, ``rank="auto"``
            warns once and runs full rank with ``block_size``. The table is not part of ``state_dict``:
            pass the same file when resuming.
        distributed: split the preconditioner work over the ranks of the default ``torch.distributed``
            process group (each Kronecker parameter gets one owner rank, which alone keeps its state;
            directions are broadcast, or scattered as shards for FSDP2 ``fully_shard`` parameters; see
            :mod:`tritonkron.distributed.plan` and docs/distributed.md). None: on when a group with more than
            one rank is initialised at construction; True: required; False: every rank computes everything.
        comm_dtype: dtype of the shared directions (None: float32, float64 for float64 parameters);
            ``torch.bfloat16`` halves the traffic at the cost of rounding the update.
        stack: step the equal-shape block groups of different parameters as one batch (one process,
            eager; :mod:`tritonkron.step.stacking`): the same bits as stepping them one parameter at a
            time, with one launch per op and block shape instead of one per parameter. Under
            ``torch.compile`` and with ``distributed`` each parameter is stepped on its own.

    Example:
        >>> import torch, tritonkron as tk
        >>> model = torch.nn.Linear(8, 4)
        >>> opt = tk.Kron(model.parameters(), lr=1e-3)
        >>> model(torch.randn(16, 8)).square().mean().backward()
        >>> opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        lr: float | Tensor = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        divergence: str = "logdet",
        rank: int | None = None,
        tail: str = "mean",
        alpha: float = 1.0,
        precondition_every: int = 10,
        block_size: int = 1024,
        kron: bool = True,
        flat_tail_in_stats: bool = False,
        eig_floor: float = 1e-8,
        init_floor: float = 0.1,
        sketch: bool = False,
        sketch_rank: int | None = None,
        nonfinite: str = "skip",
        max_refresh_failures: int = 10,
        max_update_rms: float | None = None,
        bound: str | None = "adam",
        bias_correction: bool = False,
        warm_start: int = 0,
        precision: str = "ieee",
        orthonormalize: str = "auto",
        max_precond_dim: int | None = 16384,
        tuning: str | os.PathLike[str] | TuningTable | None = None,
        distributed: bool | None = None,
        comm_dtype: torch.dtype | None = None,
        stack: bool = True,
    ) -> None:
        given = locals()  # every option of the signature, by name
        defaults = {key: given[key] for key in DEFAULTS}
        if isinstance(betas, list):
            defaults["betas"] = tuple(betas)
        validate_group(defaults)
        if comm_dtype is not None and comm_dtype not in COMM_DTYPES:
            raise ValueError(
                f"comm_dtype must be None or one of {sorted(map(str, COMM_DTYPES))}; got {comm_dtype!r}"
            )
        if not isinstance(stack, bool):
            raise ValueError(f"stack must be True or False; got {stack!r}")
        super().__init__(params, defaults)
        self._stack = stack
        self._stacks = BlockStacks()
        self._failures = FailureWatch()
        self._plan = (
            DistributedPlan.from_process_group(comm_dtype) if resolve_distributed(distributed) else None
        )
        self._tuning: TuningTable | None = None
        self._tuned: dict[tuple, tuple[int | None, int | None, int, int | None]] = {}
        if tuning is not None or any(g["rank"] == AUTO for g in self.param_groups):
            self._tuning = resolve_tuning(tuning)
            if self._tuning is None:
                warnings.warn(
                    "rank='auto' without a tuning file (tuning= or TRITONKRON_TUNING): full rank with block_size",
                    TuningWarning,
                    stacklevel=2,
                )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its options are validated at once (a typo fails here)."""
        unknown = set(param_group) - set(DEFAULTS) - EXTRA_GROUP_KEYS
        if unknown:
            raise ValueError(f"unknown param-group options {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
        super().add_param_group(param_group)
        validate_group(self.param_groups[-1])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_stack", True)
        self.__dict__.setdefault("_stacks", BlockStacks())
        self.__dict__.setdefault("_failures", FailureWatch())
        for group in self.param_groups:
            # Options whose default changed, for groups saved before they existed: what they ran with.
            group.setdefault("max_precond_dim", None)  # the blocked layout
            group.setdefault("bound", None)  # unbounded
            for key, value in DEFAULTS.items():
                group.setdefault(key, value)

    def state_dict(self) -> dict[str, Any]:
        """The state dict; a split parameter's block state (distributed) appears as ``Shard(0)`` DTensors."""
        sd = super().state_dict()
        return sd if self._plan is None else shard_split_state(self._plan, self, sd)

    def prepare_capture(self) -> bool:
        """:func:`~tritonkron.step.unit.prepare_capture` of the state: call it eagerly between steps."""
        return prepare_capture(self.state.values())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; statistics keep their own dtype (float32 for bf16 parameters).

        ``torch.optim.Optimizer.load_state_dict`` casts floating state to the parameter dtype,
        which would round float32 statistics of low-precision parameters; the loaded tensors are
        therefore copied back with their saved dtypes after the base class has run.
        """
        super().load_state_dict(state_dict)
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            for saved_id, p in zip(saved["params"], group["params"], strict=True):
                if saved_id in state_dict["state"]:
                    value = loaded_to_device(state_dict["state"][saved_id], p.device)
                    if not self.uses_kron(p, group):  # AdamW moments follow a DTensor parameter's layout
                        value = {k: like_param(v, p) for k, v in value.items()}
                    self.state[p] = value
        if self._plan is not None:
            localize_split_state(self._plan, self)

    @staticmethod
    def uses_kron(p: Tensor, group: dict[str, Any]) -> bool:
        """Whether ``p`` takes the Kronecker path (≥ 2 dims, no zero-size dim, group ``kron=True``)."""
        return group["kron"] and p.dim() >= 2 and p.numel() > 0

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        check_gradients(self.param_groups)
        units: list[KronUnit] = []
        elementwise: list[tuple[Tensor, dict[str, Any]]] = []
        parsed = [kron_settings(group) if group["kron"] else None for group in self.param_groups]
        firsts = self._block_ordinals(parsed)
        for group, settings in zip(self.param_groups, parsed, strict=True):
            for p in group["params"]:
                if p.grad is None:
                    continue
                if settings is not None and self.uses_kron(p, group):
                    units.append(KronUnit(p, group, settings, firsts[id(p)]))
                else:
                    elementwise.append((p, group))
        run_adamw(elementwise, self.state)
        self._run_kron(units)
        if torch.compiler.is_compiling():
            return loss
        if self._plan is None:
            self._failures.check(self.param_groups, self.state)
        else:
            check_refresh_failures(self.param_groups, self.state, self._plan.agree)
        return loss

    def _run_kron(self, units: list[KronUnit]) -> None:
        """Compute and apply the Kronecker updates of ``units`` (one per parameter with a gradient).

        With a :class:`~tritonkron.distributed.plan.DistributedPlan` each rank computes the directions of
        the parameters it owns and shares them (broadcast, or a scatter of shards for FSDP2
        parameters); see :mod:`tritonkron.distributed.plan`.
        """

        def apply(unit: KronUnit, update: Tensor, ok: Tensor) -> None:
            apply_update(unit.param, update, unit.group["lr"], unit.group["weight_decay"], ok)

        if self._plan is None:
            if not self._stack or torch.compiler.is_compiling():
                for unit in units:
                    apply(unit, *self._kron_update(unit))
                return
            prepared = self._prepare_all(units)
            directions = iter(self._stacks.run([job for p in prepared for job in p.jobs]))
            finished = [self._finish(ready, [next(directions) for _ in ready.jobs]) for ready in prepared]
            updates, oks = zip(*finished, strict=True) if finished else ((), ())
            apply_updates([u.param for u in units], updates, oks, [u.group for u in units])
            return
        self._plan.assign_optimizer(self)
        self._plan.run(units, self._kron_update, apply, self.state)

    def _block_ordinals(self, parsed: list[KronSettings | None]) -> dict[int, int]:
        """The ordinal of each Kronecker parameter's first block among all blocks of the optimizer,
        in parameter order, with or without a gradient this step (the refresh schedule's phases,
        :mod:`tritonkron.step.schedule`); ``parsed``: each group's settings (None: not Kronecker)."""
        params, counts = [], []
        for group, settings in zip(self.param_groups, parsed, strict=True):
            if settings is None:
                continue
            for p in group["params"]:
                if self.uses_kron(p, group):
                    params.append(id(p))
                    counts.append(sum(len(g.offsets) for g in self._resolve(p, group, settings)[1].groups))
        return dict(zip(params, block_ordinals(counts), strict=True))

    def _resolve(
        self, p: Tensor, group: dict[str, Any], settings: KronSettings
    ) -> tuple[KronSettings, BlockLayout]:
        """The settings (tuned for ``rank="auto"``) and block layout of ``p``."""
        block_size = group["block_size"]
        if group["rank"] == AUTO:
            settings, block_size = auto_settings(self._tuning, self._tuned, p, settings)
        return settings, layout_of(tuple(p.shape), block_size, settings.max_precond_dim)

    def _kron_update(self, unit: KronUnit) -> tuple[Tensor, Tensor]:
        """Advance ``unit``'s statistics one step; return (update direction shaped like p, ok).

        ``ok`` is a one-element bool tensor, False when the gradient has a NaN or Inf: then the
        statistics, momentum and step count are untouched, the direction is zero and the skip is
        counted in ``state["skipped_steps"]`` (masked, not branched, so the step stays one graph).
        """
        prepared = self._prepare(unit)
        return self._finish(prepared, [run_group(job) for job in prepared.jobs])

    def _prepare(self, unit: KronUnit) -> PreparedUnit:
        """``unit``'s step up to its block groups (:func:`tritonkron.step.unit.prepare_unit`)."""
        p, group, settings, first = unit
        settings, layout = self._resolve(p, group, settings)
        chunks = (
            None if self._plan is None else self._plan.block_chunks(p, layout)
        )  # split: this rank's blocks
        return prepare_unit(p, group, settings, layout, self.state[p], chunks, first)

    def _prepare_all(self, units: list[KronUnit]) -> list[PreparedUnit]:
        """:meth:`_prepare` of every unit of a one-process step, their skip flags and counters at once."""
        items = []
        for p, group, settings, first in units:
            settings, layout = self._resolve(p, group, settings)
            items.append((p, group, settings, layout, self.state[p], first))
        return prepare_units(items)

    def _finish(self, prepared: PreparedUnit, directions: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(update shaped like p, ok) from the directions of ``prepared``'s block groups."""
        if prepared.chunks is not None:
            directions = self._plan.gather_split(prepared.param, directions, prepared.layout)
        update, ok = finish_unit(prepared, directions)
        return warm_started(update, ok, self.state[prepared.param], prepared), ok  # warm_start > 0
