"""Blocking: view a parameter as a matrix, split it into blocks, stack equal-shape blocks.

A parameter of shape ``(d0, d1, ..., dk)`` with ``k >= 1`` is viewed as the matrix
``(d0, d1·…·dk)`` (conv weights become ``out × in·kh·kw``). Each matrix dimension larger than
``block_size`` is split into ``ceil(d / block_size)`` nearly equal parts (sizes differ by at most
one), which keeps blocks well balanced and makes most of them share one shape. Blocks of equal
shape are stacked into ``[B, bm, bn]`` tensors so that every op runs batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def matrix_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """Return the ``(m, n)`` matrix view of a tensor shape: ``(d0, d1·…·dk)``.

    Raises:
        ValueError: if the shape has fewer than two dimensions.
    """
    if len(shape) < 2:
        raise ValueError(f"a Kronecker-preconditioned tensor needs at least 2 dims; got shape {tuple(shape)}")
    return int(shape[0]), int(math.prod(shape[1:]))


def split_sizes(dim: int, block_size: int) -> list[int]:
    """Split ``dim`` into ``ceil(dim / block_size)`` parts whose sizes differ by at most one."""
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int; got {block_size}")
    if dim == 0:
        return [0]
    parts = -(-dim // block_size)
    base, extra = divmod(dim, parts)
    return [base + 1] * extra + [base] * (parts - extra)


@dataclass(frozen=True)
class BlockGroup:
    """Blocks of one shape inside a matrix.

    Attributes:
        shape: ``(bm, bn)`` of every block in the group.
        offsets: ``(row, col)`` of each block's top-left corner, in stacking order.
    """

    shape: tuple[int, int]
    offsets: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class BlockLayout:
    """How one ``m × n`` matrix is split into stacked groups of equal-shape blocks."""

    matrix: tuple[int, int]
    groups: tuple[BlockGroup, ...]

    @classmethod
    def build(cls, shape: tuple[int, ...] | torch.Size, block_size: int) -> BlockLayout:
        """Layout for a tensor of ``shape`` with dims split at ``block_size``."""
        m, n = matrix_shape(shape)
        by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
        row = 0
        for bm in split_sizes(m, block_size):
            col = 0
            for bn in split_sizes(n, block_size):
                by_shape.setdefault((bm, bn), []).append((row, col))
                col += bn
            row += bm
        groups = tuple(BlockGroup(s, tuple(offs)) for s, offs in by_shape.items())
        return cls((m, n), groups)

    @property
    def whole(self) -> bool:
        """Whether one block covers the whole matrix."""
        return len(self.groups) == 1 and len(self.groups[0].offsets) == 1

    def gather(self, matrix: Tensor) -> list[Tensor]:
        """Split ``matrix`` ``[m, n]`` into one stacked ``[B, bm, bn]`` tensor per group (a view of
        ``matrix`` when one block covers it, else a copy)."""
        if self.whole:
            return [matrix.unsqueeze(0)]
        stacks = []
        for group in self.groups:
            bm, bn = group.shape
            blocks = [matrix[r : r + bm, c : c + bn] for r, c in group.offsets]
            stacks.append(torch.stack(blocks))
        return stacks

    def scatter(self, stacks: list[Tensor], out: Tensor) -> Tensor:
        """Write stacked blocks back into ``out`` ``[m, n]`` and return it (the inverse of
        :meth:`gather`); when one block covers the matrix, that block itself is returned instead."""
        if self.whole:
            return stacks[0][0]
        for group, stack in zip(self.groups, stacks, strict=True):
            bm, bn = group.shape
            for block, (r, c) in zip(stack, group.offsets, strict=True):
                out[r : r + bm, c : c + bn] = block
        return out
