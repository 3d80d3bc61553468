"""Where a Kronecker parameter's momentum lives, and converting state between the two places.

A block group in eigenbasis form keeps its momentum rotated, M̂ = Q_Aᵀ M Q_B, in its own state
(``momentum_hat``, :mod:`tritonkron.step.rotated`); the low-rank and sketched forms read the parameter's
momentum M ``[m, n]`` (state key ``momentum``), which exists only while some group needs it.

State written by tritonkron < 0.3 (M only), or loaded into a group whose form changed (a new
``rank``), is converted on the next step by :func:`convert_momentum`, exactly up to rounding:
M̂ = Q_Aᵀ M Q_B with the group's current bases, and back M = Q_A M̂ Q_Bᵀ.
"""

from __future__ import annotations

from typing import Any

import torch

from tritonkron.math.blocking import BlockLayout
from tritonkron.ops.rotation import rotate, rotate_back
from tritonkron.state import BASIS_A, BASIS_B, BLOCKS, MOMENTUM, MOMENTUM_HAT

__all__ = ["convert_momentum"]


def convert_momentum(
    state: dict[str, Any], layout: BlockLayout, rotated: list[bool], chunks: list[slice] | None = None
) -> None:
    """Make ``state`` hold M̂ in exactly the groups flagged ``rotated`` and M iff any group is not.

    ``chunks``: the blocks of each group this rank keeps (a split parameter); converting such state
    back to M is not supported (each rank holds only its chunks' M̂). A no-op (no tensor work) when
    the state already has that form.

    Raises:
        ValueError: a split parameter whose M must be rebuilt from rotated chunks.
    """
    blocks = state[BLOCKS]
    need_m = not all(rotated)
    has_m = MOMENTUM in state
    fits = all((MOMENTUM_HAT in b) == r for b, r in zip(blocks, rotated, strict=True))
    if fits and has_m == need_m:
        return
    if has_m:
        M = state[MOMENTUM]
    elif chunks is not None:
        raise ValueError(
            "a parameter split over ranks cannot switch to the low-rank or sketched form after loading; "
            "load its checkpoint in one process, change the group, and save again"
        )
    else:  # rebuild M from the rotated groups (a group without either starts from zero)
        like = next(b[MOMENTUM_HAT] for b in blocks if MOMENTUM_HAT in b)
        parts = [
            rotate_back(b[MOMENTUM_HAT], b[BASIS_A], b[BASIS_B])
            if MOMENTUM_HAT in b
            else torch.zeros(len(g.offsets), *g.shape, dtype=like.dtype, device=like.device)
            for b, g in zip(blocks, layout.groups, strict=True)
        ]
        M = layout.scatter(parts)
    moments = layout.gather(M)
    if chunks is not None:
        moments = [M_block[c] for M_block, c in zip(moments, chunks, strict=True)]
    for b, r, M_block in zip(blocks, rotated, moments, strict=True):
        if r and MOMENTUM_HAT not in b:
            b[MOMENTUM_HAT] = rotate(M_block.contiguous(), b[BASIS_A], b[BASIS_B])
        elif not r:
            b.pop(MOMENTUM_HAT, None)
    if need_m:
        state[MOMENTUM] = M
    else:
        state.pop(MOMENTUM, None)
