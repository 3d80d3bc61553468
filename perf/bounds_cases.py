"""Gradient sequences that make an unbounded Kronecker direction blow up, and the worst update they give.

Two fixed gradient sequences (independent of the weights, so every optimizer sees the same ones):

* :func:`subspace_switch`: a 64 × 64 weight whose gradient lies in a rank-4 subspace (left and
  right) for ``before`` steps and then moves to an orthogonal rank-4 subspace;
* :func:`rare_row`: a 64 × 32 embedding whose rows 0…47 get gradients every step and whose last row
  gets its first gradient after ``silent`` steps (and then every step).

:func:`worst_update` runs an optimizer over a sequence and returns the largest RMS(ΔW)/lr over the
steps from ``watch_from`` on, measured over ``rows`` (a [start, stop) range; all rows by default). Used by
``tests/optim/test_bounded_updates.py`` and ``python -m perf.bench_bounds``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Case", "rare_row", "subspace_switch", "worst_update", "worst_updates"]

Builder = Callable[[list[Tensor], float], torch.optim.Optimizer]


@dataclass(frozen=True)
class Case:
    """A gradient sequence, the step from which updates are watched, and the watched rows."""

    name: str
    shape: tuple[int, int]
    grads: list[Tensor]
    watch_from: int
    rows: tuple[int, int] | None = None


def _orthonormal(d: int, k: int, g: torch.Generator) -> Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:, :k]


def subspace_switch(before: int = 50, after: int = 20, rank: int = 4, seed: int = 0) -> Case:
    """G_t = P X_t Qᵀ with (P, Q) the first rank-4 pair before the switch, an orthogonal pair after."""
    g = torch.Generator().manual_seed(seed)
    d = 64
    P = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    grads = []
    for t in range(before + after):
        lo = 0 if t < before else rank
        X = torch.randn(rank, rank, generator=g, dtype=torch.float64)
        grads.append((P[:, lo : lo + rank] @ X @ Q[:, lo : lo + rank].T).float())
    return Case("subspace switch 64×64", (d, d), grads, watch_from=before)


def rare_row(silent: int = 200, after: int = 10, seed: int = 0) -> Case:
    """Embedding gradients: rows 0…47 every step, row 63 from step ``silent`` on; the row is watched."""
    g = torch.Generator().manual_seed(seed)
    vocab, dim = 64, 32
    grads = []
    for t in range(silent + after):
        G = torch.zeros(vocab, dim)
        G[:48] = torch.randn(48, dim, generator=g) * 0.1
        if t >= silent:
            G[-1] = torch.randn(dim, generator=g) * 0.1
        grads.append(G)
    return Case("rare embedding row", (vocab, dim), grads, watch_from=silent, rows=(vocab - 1, vocab))


def worst_updates(case: Case, build: Builder, lr: float = 1e-3) -> list[float]:
    """RMS(ΔW[rows])/lr at every step from ``watch_from`` on (W starts at 0, no weight decay)."""
    W = torch.zeros(case.shape, requires_grad=True)
    opt = build([W], lr)
    out = []
    for t, G in enumerate(case.grads):
        before = W.detach().clone()
        W.grad = G.clone()
        opt.step()
        if t >= case.watch_from:
            delta = W.detach() - before
            delta = delta if case.rows is None else delta[slice(*case.rows)]
            out.append(float(delta.square().mean().sqrt()) / lr)
    return out


def worst_update(case: Case, build: Builder, lr: float = 1e-3) -> float:
    """The largest RMS(ΔW[rows])/lr over the watched steps."""
    return max(worst_updates(case, build, lr))
