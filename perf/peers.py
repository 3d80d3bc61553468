"""The optimizers of the benchmarks: tritonkron configurations and the peers, with skips recorded.

Every entry builds its optimizer from ``(model, lr)``. A peer whose package is not installed is kept
as an entry with ``skip`` set (the report lists it as skipped, never silently drops it); install the
peers with ``pip install -e .[bench]``.

Shared settings, so that only the method differs: weight decay 0 everywhere; preconditioner refresh
every 10 steps for every Shampoo-family method (tritonkron ``precondition_every``, heavyball
``precondition_frequency``, pytorch-optimizer ``preconditioning_compute_steps``); otherwise each
peer keeps its own defaults (betas, damping, schedules). AdamW uses tritonkron's default betas (0.9, 0.95).

CPU fairness (both stated in the report):

* **Muon**: ``torch.optim.Muon`` runs its Newton–Schulz iteration in bfloat16, reported to be about
  30× slower than float32 on CPUs without native bfloat16 GEMMs. :class:`Fp32Muon` runs the same
  iteration (same coefficients and steps) in float32 for training; the step benchmark times both
  (``"Muon (bf16 NS, stock)"`` is step-only), so the report shows which is faster on the machine. Muon takes the 2-D weights except embeddings and the LM ``head``; the rest go to
  AdamW at the same learning rate. ``adjust_lr_fn="match_rms_adamw"`` (Moonshot's scaling) makes
  Muon's update RMS match AdamW's, so one learning-rate grid serves both parts.
* **heavyball** compiles its step with ``torch.compile`` on first use (about 30 s on this CPU);
  :func:`heavyball_eager` sets ``heavyball.utils.compile_mode = None`` so heavyball runs eagerly and
  no compilation lands in any step time.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import tritonkron as tk
from autotune import measure

__all__ = [
    "ADAMW_BETAS",
    "Chain",
    "Fp32Muon",
    "OptimizerEntry",
    "available",
    "build_registry",
    "heavyball_eager",
    "muon_split",
    "precond_bytes",
    "state_bytes",
]

ADAMW_BETAS = (0.9, 0.95)
# Block size of the small-block tritonkron configuration (128 × 128 factors: cheaper steps).
SMALL_BLOCK = 128
PRECONDITION_EVERY = 10

Builder = Callable[[nn.Module, float], "torch.optim.Optimizer | Chain"]


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer configuration.

    Attributes:
        label: row label in tables and plots.
        kind: ``"baseline"`` (AdamW), ``"peer"`` or ``"tritonkron"``.
        source: package and class, with its version (``"heavyball 3.2.1 SOAP"``).
        build: ``(model, lr) -> optimizer``; None when skipped.
        skip: why the entry cannot run (package not installed), else None.
        note: settings worth stating in the report.
        ablation: a tritonkron variant run at the learning rate chosen for ``"Kron logdet"`` (quick
            mode) instead of over the whole grid.
        lr_scale: the entry's grid is the workload's grid times this (same number of points and
            spacing) for a method whose update scale differs from AdamW's.
        step_only: timed by the step benchmark only, not trained (stock bfloat16 Muon, shown for the
            cost of its bfloat16 Newton–Schulz on CPU).
    """

    label: str
    kind: str
    source: str
    build: Builder | None
    skip: str | None = None
    note: str = ""
    ablation: bool = False
    lr_scale: float = 1.0
    step_only: bool = False


class Chain:
    """Two or more optimizers over disjoint parameters stepped together (Muon + AdamW)."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every inner optimizer's gradients."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """Step every inner optimizer."""
        for opt in self.optimizers:
            opt.step()

    @property
    def state(self) -> dict[object, object]:
        """The union of the inner optimizers' ``state`` (parameters are disjoint)."""
        merged: dict[object, object] = {}
        for opt in self.optimizers:
            merged.update(opt.state)
        return merged


def state_bytes(opt: torch.optim.Optimizer | Chain) -> int:
    """Bytes of every tensor in ``opt.state`` (:func:`autotune.measure.state_bytes` of its values)."""
    return measure.state_bytes(list(opt.state.values()))


def precond_bytes(opt: torch.optim.Optimizer | Chain) -> int:
    """Bytes of tritonkron's preconditioner: its ``blocks`` and, for 1-D parameters, ``exp_avg_sq``.

    Momentum and the step counter are excluded. Other optimizers' layouts differ, so this is
    meaningful for :class:`tritonkron.Kron` only (0 when no such keys exist).
    """
    keys = ("blocks", "exp_avg_sq")
    return sum(
        measure.state_bytes([v for k, v in s.items() if k in keys])
        for s in opt.state.values()
        if isinstance(s, dict)
    )


# --------------------------------------------------------------------------------------------------
# Muon with a float32 Newton–Schulz iteration.
# --------------------------------------------------------------------------------------------------


def _newton_schulz_fp32(
    grad: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> Tensor:
    """``torch.optim._muon._zeropower_via_newtonschulz`` (torch 2.13) with float32 instead of bfloat16.

    Same quintic iteration X ← aX + (bA + cA²)X with A = XXᵀ, the same coefficients, steps and
    Frobenius pre-normalisation; only the working dtype differs.
    """
    a, b, c = ns_coefficients
    x = grad.float()
    transposed = grad.size(0) > grad.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if transposed else x).to(grad.dtype)


@contextlib.contextmanager
def _fp32_newton_schulz() -> Iterator[None]:
    module = importlib.import_module("torch.optim._muon")
    original = module._zeropower_via_newtonschulz
    module._zeropower_via_newtonschulz = _newton_schulz_fp32
    try:
        yield
    finally:
        module._zeropower_via_newtonschulz = original


class Fp32Muon(torch.optim.Muon):
    """``torch.optim.Muon`` whose Newton–Schulz runs in float32 (bfloat16 GEMMs are slow on CPU).

    The swap of torch's private NS function lasts only for the duration of :meth:`step`.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Muon step with the float32 iteration."""
        with _fp32_newton_schulz():
            return super().step(closure)


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(muon, other)``: 2-D weights except embeddings and the ``head``; everything else."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    muon: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        is_head = name.split(".")[0] == "head"
        (muon if p.ndim == 2 and id(p) not in embedding_ids and not is_head else other).append(p)
    return muon, other


def _muon(model: nn.Module, lr: float, cls: type[torch.optim.Muon] = Fp32Muon) -> Chain:
    """Muon (``cls``) on :func:`muon_split`'s matrices, AdamW at the same lr on the rest."""
    muon, other = muon_split(model)
    opts: list[torch.optim.Optimizer] = [cls(muon, lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")]
    if other:
        opts.append(torch.optim.AdamW(other, lr=lr, betas=ADAMW_BETAS, weight_decay=0.0))
    return Chain(opts)


# --------------------------------------------------------------------------------------------------
# Peers from optional packages.
# --------------------------------------------------------------------------------------------------


def available(package: str) -> str | None:
    """The installed version of distribution ``package``, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def heavyball_eager() -> object:
    """Import heavyball with its ``torch.compile`` switched off (``compile_mode = None``)."""
    heavyball = importlib.import_module("heavyball")
    importlib.import_module("heavyball.utils").compile_mode = None
    return heavyball


def _heavyball(name: str, **options: object) -> Builder:
    def build(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        cls = getattr(heavyball_eager(), name)
        return cls(model.parameters(), lr=lr, weight_decay=0.0, **options)

    return build


def _pyopt_shampoo(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    pyopt = importlib.import_module("pytorch_optimizer")
    graft = importlib.import_module("pytorch_optimizer.optimizer.utils.graft").LayerWiseGrafting
    return pyopt.ScalableShampoo(
        model.parameters(),
        lr=lr,
        weight_decay=0.0,
        preconditioning_compute_steps=PRECONDITION_EVERY,
        start_preconditioning_step=PRECONDITION_EVERY,  # its default 25 would leave short runs unpreconditioned
        graft_type=graft.RMSPROP,
    )


def _peer(
    label: str, package: str, cls: str, build: Builder, note: str, lr_scale: float = 1.0
) -> OptimizerEntry:
    version = available(package)
    if version is None:
        skip = f"skipped: {package} not installed (`pip install -e .[bench]`)"
        return OptimizerEntry(
            label, "peer", f"{package} {cls}", None, skip=skip, note=note, lr_scale=lr_scale
        )
    return OptimizerEntry(label, "peer", f"{package} {version} {cls}", build, note=note, lr_scale=lr_scale)


def _kron(**options: object) -> Builder:
    def build(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return tk.Kron(model.parameters(), lr=lr, precondition_every=PRECONDITION_EVERY, **options)  # type: ignore[arg-type]

    return build


def _tritonkron_entries(ranks: Sequence[int]) -> list[OptimizerEntry]:
    source = f"tritonkron {tk.__version__} Kron"
    small, *larger = ranks
    entries = [
        OptimizerEntry("Kron logdet", "tritonkron", source, _kron(), note="full rank (KL-Shampoo)"),
        OptimizerEntry(
            f"Kron logdet r={small}", "tritonkron", source, _kron(rank=small), note="subspace, tail mean"
        ),
        OptimizerEntry(
            f"Kron logdet b={SMALL_BLOCK}",
            "tritonkron",
            source,
            _kron(block_size=SMALL_BLOCK),
            note=f"full rank, dims split into blocks of at most {SMALL_BLOCK}",
        ),
    ]
    ablations = [
        ("Kron von_neumann", _kron(divergence="von_neumann"), "full rank"),
        ("Kron frobenius", _kron(divergence="frobenius"), "full rank"),
        *((f"Kron logdet r={r}", _kron(rank=r), "subspace, tail mean") for r in larger),
        (f"Kron von_neumann r={small}", _kron(divergence="von_neumann", rank=small), "subspace, tail mean"),
        (f"Kron frobenius r={small}", _kron(divergence="frobenius", rank=small), "subspace, tail mean"),
        (f"Kron logdet r={small} kth", _kron(rank=small, tail="kth"), "subspace, tail kth"),
        (f"Kron logdet r={small} sketchy", _kron(rank=small, tail="sketchy"), "subspace, tail sketchy"),
        (f"Kron logdet r={small} sketch", _kron(rank=small, sketch=True), "frequent-directions sketch"),
        ("Kron logdet unbounded", _kron(bound=None), "full rank, bound=None (the default before 2026-12-08)"),
        (
            f"Kron logdet b={SMALL_BLOCK} unbounded",
            _kron(block_size=SMALL_BLOCK, bound=None),
            f"full rank, blocks of at most {SMALL_BLOCK}, bound=None",
        ),
    ]
    entries += [
        OptimizerEntry(label, "tritonkron", source, b, note=n, ablation=True) for label, b, n in ablations
    ]
    return entries


def build_registry(ranks: Sequence[int] = (8, 32)) -> list[OptimizerEntry]:
    """Every configuration, AdamW first; peers whose package is missing carry a ``skip`` reason.

    Args:
        ranks: subspace ranks of the tritonkron configurations; the first is the headline subspace
            configuration (and the one the tail-rule and divergence ablations use).

    Returns:
        The entries in report order: AdamW, Muon, the heavyball and pytorch-optimizer peers, then
        tritonkron (headline configurations first, ablations after).
    """
    if not ranks:
        raise ValueError("ranks must name at least one subspace rank")

    def adamw(model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=ADAMW_BETAS, weight_decay=0.0)

    entries = [
        OptimizerEntry(
            "AdamW", "baseline", f"torch {torch.__version__} AdamW", adamw, note=f"betas {ADAMW_BETAS}"
        ),
        OptimizerEntry(
            "Muon (fp32 NS)",
            "peer",
            f"torch {torch.__version__} Muon",
            _muon,
            note="float32 Newton–Schulz (bfloat16 GEMMs are slow on CPU); match_rms_adamw; AdamW for embeddings, head and 1-D",
        ),
        OptimizerEntry(
            "Muon (bf16 NS, stock)",
            "peer",
            f"torch {torch.__version__} Muon",
            lambda model, lr: _muon(model, lr, torch.optim.Muon),
            note="torch's own bfloat16 Newton–Schulz; step benchmark only",
            step_only=True,
        ),
        _peer(
            "heavyball SOAP",
            "heavyball",
            "SOAP",
            _heavyball("SOAP", precondition_frequency=PRECONDITION_EVERY),
            "eager (compile off)",
        ),
        _peer(
            "heavyball KLShampoo",
            "heavyball",
            "KLShampoo",
            _heavyball("KLShampoo", precondition_frequency=PRECONDITION_EVERY),
            "eager (compile off)",
        ),
        _peer(
            "heavyball PSGDKron",
            "heavyball",
            "PSGDKron",
            _heavyball("PSGDKron"),
            "eager (compile off); default update-probability schedule (anneals from 1 over its first "
            "few hundred steps, so short runs pay close to its peak cost)",
        ),
        _peer(
            "pytorch-optimizer Shampoo",
            "pytorch-optimizer",
            "ScalableShampoo",
            _pyopt_shampoo,
            "RMSProp grafting, preconditioning from step 10; lr grid ×0.03 (it diverges at AdamW's "
            "learning rates; best at 1e-4 in a pre-scan on the MLP)",
            lr_scale=0.03,
        ),
    ]
    return entries + _tritonkron_entries(ranks)
