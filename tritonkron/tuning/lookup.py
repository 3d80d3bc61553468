"""How ``tk.Kron(rank="auto")`` reads a tuning table: finding the file, per-shape lookups with
documented defaults, and param groups built from a table (the format is :mod:`tritonkron.tuning.file`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tritonkron import options
from tritonkron.math.blocking import BlockLayout, matrix_shape
from tritonkron.options import KronSettings
from tritonkron.tuning.entry import DEFAULT_BLOCK_SIZE, SketchTuning, TuningEntry, dtype_name
from tritonkron.tuning.file import SCHEMA_VERSION, TuningTable, device_name, load_tuning, warn_once

__all__ = [
    "auto_settings",
    "heuristic_entry",
    "ranks_for",
    "resolve_tuning",
    "resolve_tuning_path",
    "single_rank",
    "sketch_tuning_for",
    "tuned_param_groups",
]


def resolve_tuning_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The tuning file to use: ``explicit`` when given, else ``TRITONKRON_TUNING``, else None.

    The explicit argument wins, as for ``TRITONKRON_BACKEND``: the environment variable sets the
    default for code that passes none.
    """
    if explicit is not None:
        return Path(explicit)
    env = options.tuning_path()
    return Path(env) if env is not None else None


def resolve_tuning(tuning: TuningTable | str | os.PathLike[str] | None) -> TuningTable | None:
    """A loaded table for ``tuning`` (a table, a path, or None → ``TRITONKRON_TUNING`` → None).

    Raises:
        TuningFileError: the resolved file is missing or malformed.
    """
    if isinstance(tuning, TuningTable):
        return tuning
    path = resolve_tuning_path(tuning)
    return None if path is None else load_tuning(path)


def heuristic_entry(shape: Iterable[int], dtype: torch.dtype | str) -> TuningEntry:
    """The documented defaults for a shape without an entry: block 1024, full rank, no configs."""
    return TuningEntry(shape=matrix_shape(tuple(shape)), dtype=dtype_name(dtype))


def _warn_missing(table: TuningTable, entry: TuningEntry, what: str, instead: str) -> None:
    """Warn once per file, shape and dtype that ``table`` has no ``what`` for ``entry``'s shape; the
    warning names the caller of the lookup function and says what is used ``instead``."""
    warn_once(
        (str(table.path), what, str(entry.shape), entry.dtype),
        f"tuning file {table.path} has no {what} for shape {list(entry.shape)} {entry.dtype}; {instead}",
        stacklevel=4,
    )


def ranks_for(
    table: TuningTable | None, shape: Iterable[int], dtype: torch.dtype | str, device: str | None = None
) -> tuple[int | None, int | None, int]:
    """(rank of factor A, rank of factor B, block_size) for one parameter.

    A missing table or a shape without an entry gives the defaults of :func:`heuristic_entry`
    (None, None, 1024); a shape missing from a loaded table also warns once. Ranks are per block
    factor (A: the block's rows, B: its columns); a rank ≥ the factor's dimension means full.

    Args:
        table: a loaded tuning table, or None.
        shape: the parameter's shape (≥ 2 dims).
        dtype: the parameter's dtype.
        device: device name (:func:`device_name`), or None to skip the device check.
    """
    entry = table.lookup(shape, dtype, device) if table is not None else None
    if entry is None:
        entry = heuristic_entry(shape, dtype)
        if table is not None and table.schema == SCHEMA_VERSION:
            _warn_missing(
                table, entry, "entry", f"using the defaults (block_size={DEFAULT_BLOCK_SIZE}, full rank)."
            )
    return entry.rank_a, entry.rank_b, entry.block_size


def sketch_tuning_for(
    table: TuningTable | None, shape: Iterable[int], dtype: torch.dtype | str, device: str | None = None
) -> SketchTuning | None:
    """The tuned ``sketch=True`` choice of one parameter, or None (the caller falls back).

    None without a table or an entry (:func:`ranks_for` warns about those); an entry without a
    ``sketch`` choice (a file written before it existed, or tuned with ``--no-sketch``) warns once.
    Arguments as :func:`ranks_for`.
    """
    entry = table.lookup(shape, dtype, device) if table is not None else None
    if entry is None:
        return None
    if entry.sketch is None:
        _warn_missing(
            table,
            entry,
            "sketch choice",
            "sketch=True uses its dense ranks with sketch_rank = 2·max(rank_a, rank_b) (re-run "
            "`python -m autotune` to tune the sketched mode).",
        )
    return entry.sketch


def single_rank(rank_a: int | None, rank_b: int | None) -> int | None:
    """One ``rank=`` for ``tk.Kron`` (which takes one rank for both factors): the larger of the two.

    None (full) when either factor is full, so no factor is preconditioned with fewer directions
    than tuned.
    """
    if rank_a is None or rank_b is None:
        return None
    return max(rank_a, rank_b)


def tuned_param_groups(
    params: Iterable[Tensor] | Iterable[tuple[str, Tensor]],
    table: TuningTable | None,
    device: str | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Param groups for ``tk.Kron`` with each matrix parameter's tuned rank and block size.

    An explicit alternative to ``tk.Kron(rank="auto", tuning=table)`` that a user can edit per
    group: ``tk.Kron(tuned_param_groups(model.parameters(), table), lr=...)`` gets one group per
    matrix parameter with ``rank`` = :func:`single_rank` of its tuned ranks (``rank="auto"`` keeps
    the two factor ranks apart) and its tuned ``block_size``; tensors with fewer than 2 dims share
    one group (they take the AdamW path).

    Args:
        params: tensors or ``(name, tensor)`` pairs.
        table: a loaded tuning table, or None (defaults everywhere).
        device: device name for the lookup (None: each parameter's own device).
        **options: further per-group options (``lr``, ``divergence``, ...) copied into every group.
    """
    groups: list[dict[str, Any]] = []
    rest: list[Tensor] = []
    for item in params:
        p = item[1] if isinstance(item, tuple) else item
        if p.dim() < 2 or p.numel() == 0:
            rest.append(p)
            continue
        rank_a, rank_b, block = ranks_for(table, p.shape, p.dtype, device or device_name(p.device))
        groups.append({"params": [p], "rank": single_rank(rank_a, rank_b), "block_size": block, **options})
    if rest:
        groups.append({"params": rest, **options})
    return groups


def auto_settings(
    table: TuningTable | None, cache: dict[tuple, tuple], p: Tensor, settings: KronSettings
) -> tuple[KronSettings, int]:
    """Per-factor ranks, block size and sketch rank of ``p`` from the tuning table (``rank="auto"``).

    Dense factors take the entry's ``rank_a``, ``rank_b`` and ``block_size``. With ``sketch=True``
    the entry's sketch choice (k_A, k_B, ℓ and its own block size) when it has one; otherwise the
    dense ranks (a factor tuned to full rank keeps its block dim) with ℓ = 2·max(k_A, k_B). A
    group's ``sketch_rank`` does not reach here (``kron_settings`` drops it for ``rank="auto"``), so
    ℓ is always the tuned one. The lookup is cached in ``cache`` per (shape, dtype, device, sketch)
    as (k_A, k_B, block, ℓ).
    """
    key = (tuple(p.shape), p.dtype, p.device, settings.sketch)
    if key not in cache:
        device = device_name(p.device)
        rank_a, rank_b, block = ranks_for(table, p.shape, p.dtype, device)
        choice = sketch_tuning_for(table, p.shape, p.dtype, device) if settings.sketch else None
        ell = None
        if choice is not None:
            rank_a, rank_b, block = choice.rank_a, choice.rank_b, choice.block_size
            ell = choice.sketch_rank
        elif settings.sketch:  # the sketch needs int ranks: a factor tuned to full keeps its block dim
            m, n = BlockLayout.build(tuple(p.shape), block).groups[0].shape
            rank_a, rank_b = rank_a or m, rank_b or n
            ell = 2 * max(rank_a, rank_b)
        cache[key] = (rank_a, rank_b, block, ell)
    rank_a, rank_b, block, ell = cache[key]
    top = None if rank_a is None or rank_b is None else max(rank_a, rank_b)
    sketch_rank = max(ell, top) if settings.sketch and top is not None else None
    tuned = dataclasses.replace(settings, rank=top, factor_ranks=(rank_a, rank_b), sketch_rank=sketch_rank)
    return tuned, block
