"""Where a Kronecker parameter's momentum lives, and converting state between its forms.

Every block group keeps its own momentum in its state, stacked like its blocks ``[B, m, n]``:

* a group in eigenbasis form keeps it rotated, M̂ = Q_Aᵀ M Q_B (``momentum_hat``,
  :mod:`tritonkron.step.rotated`), updated inside its step as M̂ ← β₁ M̂ + (1 − β₁) Ĝ;
* a group in the low-rank or sketched form keeps M itself (``momentum``), updated by
  :func:`advance_momentum` at the start of its step, M ← β₁ M + (1 − β₁) G where the step is not
  skipped, so it stacks with the rest of the group's state (:mod:`tritonkron.step.stacking`).

State written by tritonkron < 0.3 (the parameter's M ``[m, n]`` only) or by the versions that kept
the low-rank form's M per parameter (a parameter-level ``momentum`` beside the block groups), or
loaded into a group whose form changed (a new ``rank``), is converted on the next step by
:func:`convert_momentum`, exactly up to rounding: M̂ = Q_Aᵀ M Q_B with the group's current bases,
back M = Q_A M̂ Q_Bᵀ, and the parameter's M split into its blocks (a copy, the same bits).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tritonkron.math.blocking import BlockLayout
from tritonkron.ops.rotation import rotate, rotate_back
from tritonkron.state import BASIS_A, BASIS_B, BLOCKS, MOMENTUM, MOMENTUM_HAT, READY, TRACE

__all__ = ["advance_momentum", "convert_momentum"]


def advance_momentum(state: dict[str, Tensor], G: Tensor, ok: Tensor | None, beta1: float) -> Tensor:
    """M ← β₁ M + (1 − β₁) G = lerp(M, G, 1 − β₁) for the blocks where ``ok`` (one-element or
    ``[B]`` bool; None: all), M elsewhere; writes ``state["momentum"]`` and returns it."""
    M = state[MOMENTUM]
    moved = M.lerp(G, 1 - beta1)
    if ok is not None:
        moved = torch.where(ok.reshape(-1, *([1] * (M.dim() - 1))), moved, M)
    state[MOMENTUM] = moved
    return moved


def _fits(block: dict[str, Tensor], rotated: bool) -> bool:
    """Whether a group's state holds exactly the momentum of its form."""
    return (MOMENTUM_HAT in block) == rotated and (MOMENTUM in block) != rotated


def convert_momentum(
    state: dict[str, Any], layout: BlockLayout, rotated: list[bool], chunks: list[slice] | None = None
) -> None:
    """Make each block group hold M̂ where flagged ``rotated`` and M elsewhere, and drop a
    parameter-level M (split into the groups' blocks first; ``chunks``: the blocks of each group
    this rank keeps, a split parameter). A no-op (no tensor work) when the state has that form.

    A group takes, in order of preference, the momentum of its own form, the parameter's M, the
    other form converted (M̂ = Q_Aᵀ M Q_B or M = Q_A M̂ Q_Bᵀ), or zero.
    """
    blocks = state[BLOCKS]
    if MOMENTUM not in state and all(_fits(b, r) for b, r in zip(blocks, rotated, strict=True)):
        return
    legacy = state.pop(MOMENTUM, None)
    moments: list[Tensor | None] = [None] * len(blocks)
    if legacy is not None:
        moments = list(layout.gather(legacy))
        if chunks is not None:
            moments = [M_block[c] for M_block, c in zip(moments, chunks, strict=True)]
    for b, r, M_block, g in zip(blocks, rotated, moments, layout.groups, strict=True):
        zero = (b[READY].shape[0], *g.shape)
        own = b.pop(MOMENTUM, None)
        hat = b.pop(MOMENTUM_HAT, None)
        plain = M_block if M_block is not None else own
        if r:
            b[MOMENTUM_HAT] = _rotated(b, plain, zero) if hat is None else hat
        elif M_block is not None:
            b[MOMENTUM] = M_block.clone(memory_format=torch.contiguous_format)
        elif own is not None:
            b[MOMENTUM] = own
        elif hat is not None:
            b[MOMENTUM] = rotate_back(hat, b[BASIS_A], b[BASIS_B])
        else:
            b[MOMENTUM] = _zeros(b, zero)


def _rotated(block: dict[str, Tensor], M: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    """Q_Aᵀ M Q_B with the group's bases; zero ``shape`` for no M."""
    if M is None:
        return _zeros(block, shape)
    return rotate(M.contiguous(), block[BASIS_A], block[BASIS_B])


def _zeros(block: dict[str, Tensor], shape: tuple[int, ...]) -> Tensor:
    """A zero momentum ``[B, m, n]`` in the dtype of the group's trace (the statistics dtype)."""
    like = block[TRACE]
    return torch.zeros(shape, dtype=like.dtype, device=like.device)
