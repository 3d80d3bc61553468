"""One entry of a tuning file: a shape's block size, ranks, kernel configs and sketch choice.

The file around the entries, and what happens when it does not match the run, is
:mod:`tritonkron.tuning.file`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from tritonkron.math.checks import dtype_name

__all__ = ["DEFAULT_BLOCK_SIZE", "SketchTuning", "TuningEntry", "TuningFileError", "dtype_name", "is_int"]

DEFAULT_BLOCK_SIZE = 1024
"""Block size used when a shape has no entry (``tk.Kron``'s default)."""

_ENTRY_KEYS = ("shape", "dtype", "block_size", "rank_a", "rank_b")


class TuningFileError(ValueError):
    """A tuning file is missing, unreadable or malformed (the message names the path)."""


@dataclass(frozen=True)
class SketchTuning:
    """The tuned choice of one shape for ``tk.Kron(rank="auto", sketch=True)``.

    Attributes:
        block_size: ``tk.Kron``'s ``block_size`` in sketched mode.
        rank_a: subspace rank k_A of factor A (per block), ≥ 1.
        rank_b: subspace rank k_B of factor B (per block), ≥ 1.
        sketch_rank: sketch rank ℓ ≥ max(k_A, k_B) (each factor keeps min(ℓ, its dimension)).
    """

    block_size: int
    rank_a: int
    rank_b: int
    sketch_rank: int

    def to_json(self) -> dict[str, int]:
        """The choice as a JSON-ready dict."""
        return {
            "block_size": self.block_size,
            "rank_a": self.rank_a,
            "rank_b": self.rank_b,
            "sketch_rank": self.sketch_rank,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> SketchTuning:
        """Parse an entry's ``sketch`` object; ``where`` prefixes every error message.

        Raises:
            TuningFileError: not an object, a missing field, a non-positive value or ℓ < max(k_A, k_B).
        """
        keys = ("block_size", "rank_a", "rank_b", "sketch_rank")
        if not isinstance(data, dict) or not all(is_int(data.get(key), 1) for key in keys):
            raise TuningFileError(
                f"{where}: sketch must be an object of positive ints {list(keys)}; got {data!r}"
            )
        if data["sketch_rank"] < max(data["rank_a"], data["rank_b"]):
            raise TuningFileError(f"{where}: sketch.sketch_rank must be >= rank_a and rank_b; got {data!r}")
        return cls(data["block_size"], data["rank_a"], data["rank_b"], data["sketch_rank"])


@dataclass(frozen=True)
class TuningEntry:
    """The tuned choices for one parameter shape and dtype.

    Attributes:
        shape: matrix view ``(m, n)`` of the parameter (``(d0, d1·…·dk)``).
        dtype: parameter dtype name, e.g. ``"float32"``.
        block_size: ``tk.Kron``'s ``block_size`` for this shape.
        rank_a: subspace rank of factor A (rows, per block), or None for full preconditioning.
        rank_b: subspace rank of factor B (columns, per block), or None.
        kernels: Triton launch config per op (``{"precondition": {"BLOCK_M": 64, ...}}``).
        knobs: algorithmic and CPU choices (e.g. ``ns_steps_a``, ``root_method``, ``cpu_threads``).
        predicted: measured or computed predictions (step milliseconds, state megabytes).
        sketch: the choice for ``sketch=True`` (:class:`SketchTuning`), or None when not tuned.
    """

    shape: tuple[int, int]
    dtype: str
    block_size: int = DEFAULT_BLOCK_SIZE
    rank_a: int | None = None
    rank_b: int | None = None
    kernels: dict[str, dict[str, int]] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    predicted: dict[str, float | None] = field(default_factory=dict)
    sketch: SketchTuning | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict (the schema in the module docstring; no ``sketch`` when None)."""
        data = {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "block_size": self.block_size,
            "rank_a": self.rank_a,
            "rank_b": self.rank_b,
            "kernels": {op: dict(cfg) for op, cfg in sorted(self.kernels.items())},
            "knobs": dict(sorted(self.knobs.items())),
            "predicted": dict(sorted(self.predicted.items())),
        }
        if self.sketch is not None:
            data["sketch"] = self.sketch.to_json()
        return data

    @classmethod
    def from_json(cls, data: object, where: str) -> TuningEntry:
        """Parse one entry; ``where`` (path and index) prefixes every error message.

        Raises:
            TuningFileError: a missing field or a value of the wrong type or range.
        """
        if not isinstance(data, dict):
            raise TuningFileError(f"{where}: an entry must be an object; got {type(data).__name__}")
        missing = [key for key in _ENTRY_KEYS if key not in data]
        if missing:
            raise TuningFileError(f"{where}: entry is missing {missing}")
        shape = data["shape"]
        if not (isinstance(shape, list) and len(shape) == 2 and all(is_int(v, 1) for v in shape)):
            raise TuningFileError(f"{where}: shape must be [m, n] with positive ints; got {shape!r}")
        if not isinstance(data["dtype"], str) or not isinstance(
            getattr(torch, data["dtype"], None), torch.dtype
        ):
            raise TuningFileError(f"{where}: dtype must name a torch dtype; got {data['dtype']!r}")
        if not is_int(data["block_size"], 1):
            raise TuningFileError(f"{where}: block_size must be a positive int; got {data['block_size']!r}")
        for key in ("rank_a", "rank_b"):
            if data[key] is not None and not is_int(data[key], 1):
                raise TuningFileError(f"{where}: {key} must be null or a positive int; got {data[key]!r}")
        kernels = data.get("kernels", {})
        if not (isinstance(kernels, dict) and all(_is_config(c) for c in kernels.values())):
            raise TuningFileError(f"{where}: kernels must map op names to {{name: int}} configs")
        knobs = data.get("knobs", {})
        if not (isinstance(knobs, dict) and all(_is_scalar(v) for v in knobs.values())):
            raise TuningFileError(f"{where}: knobs must map names to numbers, strings, booleans or null")
        predicted = data.get("predicted", {})
        if not (isinstance(predicted, dict) and all(_is_number(v) for v in predicted.values())):
            raise TuningFileError(f"{where}: predicted must map names to numbers or null")
        sketch = data.get("sketch")
        return cls(
            shape=(shape[0], shape[1]),
            dtype=data["dtype"],
            block_size=data["block_size"],
            rank_a=data["rank_a"],
            rank_b=data["rank_b"],
            kernels={op: dict(cfg) for op, cfg in kernels.items()},
            knobs=dict(knobs),
            predicted=dict(predicted),
            sketch=None if sketch is None else SketchTuning.from_json(sketch, where),
        )


def is_int(value: object, low: int) -> bool:
    """Whether ``value`` is an int (not a bool) ≥ ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: object) -> bool:
    if value is None:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, bool)) or _is_number(value)


def _is_config(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and is_int(v, 0) for k, v in value.items())
