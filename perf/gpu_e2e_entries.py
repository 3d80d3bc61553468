"""The optimizers of the end-to-end section of ``python -m perf.gpu_check`` (:mod:`perf.gpu_e2e`).

Each :class:`E2EEntry` builds its optimizer from the model; one that cannot run here keeps its row
with ``skip`` saying why (torch without ``torch.optim.Muon``, heavyball not importable). Settings
as in the 2026-12-04 H200 set-up: weight decay 0, AdamW betas :data:`perf.peers.ADAMW_BETAS` and
``fused=True``, learning rate :data:`LR` (Muon's matrices :data:`MUON_LR`, with
``adjust_lr_fn="match_rms_adamw"``), preconditioner refresh every
:data:`perf.peers.PRECONDITION_EVERY` steps for SOAP and Kron.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import tritonkron as tk
from perf import peers

__all__ = ["LR", "MUON_LR", "E2EEntry", "e2e_entries"]

LR = 1e-3
MUON_LR = 2e-3  # Muon's matrices; AdamW keeps LR for the rest


Build = Callable[[nn.Module], "torch.optim.Optimizer | peers.Chain"]


@dataclass(frozen=True)
class E2EEntry:
    """One optimizer row: ``build(model)`` makes it; ``skip`` says why it cannot run (else None)."""

    label: str
    source: str
    build: Build | None
    lr: str
    kron: bool = False
    skip: str | None = None


def _adamw(params: Sequence[nn.Parameter] | Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """Fused AdamW at :data:`LR`, no weight decay."""
    return torch.optim.AdamW(params, lr=LR, betas=peers.ADAMW_BETAS, weight_decay=0.0, fused=True)


def _muon_entry() -> E2EEntry:
    """``torch.optim.Muon`` on the hidden matrices, fused AdamW on the rest (skipped without Muon)."""
    source = f"torch {torch.__version__} Muon + AdamW(fused=True)"
    muon_cls = getattr(torch.optim, "Muon", None)
    if muon_cls is None:
        skip = f"skipped: torch {torch.__version__} has no torch.optim.Muon (added in torch 2.9)"
        return E2EEntry("Muon + AdamW", source, None, f"{MUON_LR:g} / {LR:g}", skip=skip)

    def build(model: nn.Module) -> peers.Chain:
        hidden, other = peers.muon_split(model)
        muon = muon_cls(hidden, lr=MUON_LR, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
        return peers.Chain([muon, _adamw(other)])

    return E2EEntry("Muon + AdamW", source, build, f"{MUON_LR:g} / {LR:g}")


def _soap_entry() -> E2EEntry:
    """heavyball's SOAP, eager (skipped, with the import error, where heavyball cannot be imported)."""
    try:
        heavyball = peers.heavyball_eager()
    except Exception as error:  # not installed, or broken on this torch: a skipped row, not a crash
        skip = f"skipped: heavyball not importable ({type(error).__name__}: {error})"[:300]
        return E2EEntry("heavyball SOAP", "heavyball SOAP", None, f"{LR:g}", skip=skip)
    source = f"heavyball {peers.available('heavyball') or '?'} SOAP (eager)"

    def build(model: nn.Module) -> torch.optim.Optimizer:
        return heavyball.SOAP(  # type: ignore[attr-defined]
            model.parameters(), lr=LR, weight_decay=0.0, precondition_frequency=peers.PRECONDITION_EVERY
        )

    return E2EEntry("heavyball SOAP", source, build, f"{LR:g}")


def _kron_entry(label: str, **kron_options: Any) -> E2EEntry:
    """``tk.Kron`` with ``kron_options`` over its defaults."""

    def build(model: nn.Module) -> torch.optim.Optimizer:
        return tk.Kron(model.parameters(), lr=LR, precondition_every=peers.PRECONDITION_EVERY, **kron_options)

    return E2EEntry(label, f"tritonkron {tk.__version__} Kron", build, f"{LR:g}", kron=True)


def e2e_entries(block_size: int, rank: int) -> list[E2EEntry]:
    """The rows, in order: AdamW, Muon + AdamW, heavyball SOAP, then ``tk.Kron`` with its defaults,
    ``block_size``, ``rank`` and ``rank`` with ``sketch=True``."""
    adamw = E2EEntry("AdamW", f"torch {torch.__version__} AdamW(fused=True)", _adamw_build, f"{LR:g}")
    return [
        adamw,
        _muon_entry(),
        _soap_entry(),
        _kron_entry("Kron default"),
        _kron_entry(f"Kron block_size={block_size}", block_size=block_size),
        _kron_entry(f"Kron rank={rank}", rank=rank),
        _kron_entry(f"Kron rank={rank} sketch=True", rank=rank, sketch=True),
    ]


def _adamw_build(model: nn.Module) -> torch.optim.Optimizer:
    """:func:`_adamw` over every parameter of ``model``."""
    return _adamw(model.parameters())
