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


def is_diagonal_dim(dim: int, max_precond_dim: int | None) -> bool:
    """Whether a matrix dimension gets a diagonal factor: ``dim > max_precond_dim`` (None: never)."""
    return max_precond_dim is not None and dim > max_precond_dim


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
    """How one ``m × n`` matrix is split into stacked groups of equal-shape blocks.

    Attributes:
        matrix: ``(m, n)``.
        groups: the block groups.
        diagonal: (left, right): whether the row / column factor of every block is diagonal (the
            dimension exceeds ``max_precond_dim`` and is one part).
    """

    matrix: tuple[int, int]
    groups: tuple[BlockGroup, ...]
    diagonal: tuple[bool, bool] = (False, False)

    @classmethod
    def build(
        cls, shape: tuple[int, ...] | torch.Size, block_size: int, max_precond_dim: int | None = None
    ) -> BlockLayout:
        """Layout for a tensor of ``shape`` with dims split at ``block_size``; a dim larger than
        ``max_precond_dim`` (None: no limit) is one part with a diagonal factor."""
        m, n = matrix_shape(shape)
        diagonal = (is_diagonal_dim(m, max_precond_dim), is_diagonal_dim(n, max_precond_dim))
        by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
        row = 0
        for bm in [m] if diagonal[0] else split_sizes(m, block_size):
            col = 0
            for bn in [n] if diagonal[1] else split_sizes(n, block_size):
                by_shape.setdefault((bm, bn), []).append((row, col))
                col += bn
            row += bm
        groups = tuple(BlockGroup(s, tuple(offs)) for s, offs in by_shape.items())
        return cls((m, n), groups, diagonal)

    @property
    def whole(self) -> bool:
        """Whether one block covers the whole matrix."""
        return len(self.groups) == 1 and len(self.groups[0].offsets) == 1

    def gather(self, matrix: Tensor) -> list[Tensor]:
        """Split ``matrix`` ``[m, n]`` into one stacked ``[B, bm, bn]`` tensor per group: one copy per
        group (each group is a contiguous grid of blocks in row-major order), or a view of
        ``matrix`` when one block covers it."""
        if self.whole:
            return [matrix.unsqueeze(0)]
        return [
            _grid_view(matrix, group).permute(0, 2, 1, 3).reshape(-1, *group.shape) for group in self.groups
        ]

    def scatter(self, stacks: list[Tensor], out: Tensor | None = None) -> Tensor:
        """Write stacked blocks back into ``out`` ``[m, n]`` (a new tensor when None) and return it
        (the inverse of :meth:`gather`, one copy per group); when one block covers the matrix, that
        block itself is returned and nothing is allocated."""
        if self.whole:
            return stacks[0][0]
        if out is None:
            out = stacks[0].new_empty(self.matrix)
        for group, stack in zip(self.groups, stacks, strict=True):
            grid = _grid_view(out, group)
            grid.copy_(stack.reshape(grid.shape[0], grid.shape[2], *group.shape).permute(0, 2, 1, 3))
        return out


def _grid_view(matrix: Tensor, group: BlockGroup) -> Tensor:
    """The part of ``matrix`` that ``group`` covers as a ``[R, bm, C, bn]`` view: its blocks form a
    contiguous R × C grid (:func:`split_sizes` puts the larger parts first), listed row-major."""
    (r0, c0), (bm, bn) = group.offsets[0], group.shape
    rows = len({r for r, _ in group.offsets})
    cols = len(group.offsets) // rows
    part = matrix[r0 : r0 + rows * bm, c0 : c0 + cols * bn]
    return part.unflatten(0, (rows, bm)).unflatten(2, (cols, bn))


_LAYOUTS: dict[tuple[tuple[int, ...], int, int | None], BlockLayout] = {}


def layout_of(shape: tuple[int, ...], block_size: int, max_precond_dim: int | None = None) -> BlockLayout:
    """The block layout of a parameter shape, memoised (a plain dict, which ``torch.compile`` traces)."""
    key = (shape, block_size, max_precond_dim)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = BlockLayout.build(shape, block_size, max_precond_dim)
    return _LAYOUTS[key]
