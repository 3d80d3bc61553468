"""Tuning files written by ``python -m autotune``: schema, loading, lookup and the fallback defaults.

A tuning file is one JSON object (schema version :data:`SCHEMA_VERSION`)::

    {
      "schema": 1,
      "torch": "2.13.0+cpu",            # versions the file was tuned with
      "triton": "3.9.0",                # null when Triton was not installed
      "device": "NVIDIA H200",          # torch.cuda.get_device_name(), or "cpu"
      "created": "2026-09-01T12:00:00+00:00",
      "commit": null,                   # git commit of the tuned code when known
      "entries": [
        {
          "shape": [768, 2304],         # matrix view (d0, d1·…·dk) of the parameter
          "dtype": "float32",           # parameter dtype
          "block_size": 1024,           # Kron's block_size for this shape
          "rank_a": 96, "rank_b": 128,  # subspace rank per factor; null = full (rank=None)
          "kernels": {"precondition": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8,
                                       "num_warps": 4, "num_stages": 3}},
          "knobs": {"ns_steps_a": 9, "root_method": "eigh"},
          "predicted": {"step_ms_full": 1.9, "state_mb_full": 40.3, ...},
          "sketch": {"block_size": 2304, "rank_a": 40, "rank_b": 96, "sketch_rank": 192}
        }
      ]
    }

``sketch`` is optional (absent in files from before it existed, and when the tuner skipped it):
the choice for ``tk.Kron(rank="auto", sketch=True)``, i.e. the block size, the subspace rank k of
each factor and the one sketch rank ℓ (≥ both k) of the shape's low-rank-plus-isotropic factor
sketches. Without it, ``sketch=True`` falls back to the dense ranks, ℓ = 2·max(k_A, k_B) and the
dense block size (with a one-time warning).

Entries are keyed by (shape, dtype) within the file and the file by its device. Ranks and block
sizes are properties of the model's data and of the block layout, so they stay valid on another
device; kernel configurations are not.

Fallback policy (never an error in the middle of training; every case warns once per file):

====================================================  ======================================================
situation                                             behaviour
====================================================  ======================================================
file missing, unreadable, not JSON, wrong fields      :class:`TuningFileError` from :func:`load_tuning` (at
                                                      construction time, naming the path)
other schema version (older or newer)                 warning; the file is ignored: every shape gets the
                                                      defaults (:func:`~tritonkron.tuning.lookup.heuristic_entry`)
other torch or triton version                         warning; kernel configs ignored, ranks and blocks kept
other device                                          warning; kernel configs ignored, ranks and blocks kept
shape/dtype not in the file                           warning (once per shape); defaults for that shape
====================================================  ======================================================

Defaults (:func:`~tritonkron.tuning.lookup.heuristic_entry`): ``block_size`` 1024 (``tk.Kron``'s default), ranks None (full
eigenvalue preconditioning), no kernel configs (each launcher's own heuristic).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from tritonkron.math.blocking import matrix_shape
from tritonkron.tuning.entry import DEFAULT_BLOCK_SIZE, TuningEntry, TuningFileError, dtype_name, is_int

__all__ = [
    "SCHEMA_VERSION",
    "TuningTable",
    "TuningWarning",
    "device_name",
    "load_tuning",
]

SCHEMA_VERSION = 1
"""Version of the tuning-file format this module reads and writes."""

_TOP_KEYS = ("schema", "torch", "triton", "device", "created", "entries")
_WARNED: set[tuple[str, ...]] = set()


class TuningWarning(UserWarning):
    """A tuning file is stale or does not cover a case; documented defaults are used instead."""


def warn_once(key: tuple[str, ...], message: str, stacklevel: int = 3) -> None:
    """Issue ``message`` as a :class:`TuningWarning` the first time ``key`` is seen in this process
    (``stacklevel`` as in ``warnings.warn``: 3, the caller of warn_once's caller)."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, TuningWarning, stacklevel=stacklevel)


def device_name(device: torch.device | str | None = None) -> str:
    """The name tuning files are keyed by: the CUDA device name, or ``"cpu"``.

    Args:
        device: a device (None: the current CUDA device when CUDA is available, else the CPU).
    """
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _installed_version(package: str) -> str | None:
    if package == "torch":
        return str(torch.__version__)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class TuningTable:
    """A tuning file in memory.

    Attributes:
        device: device name the file was tuned on (:func:`device_name`).
        entries: one :class:`TuningEntry` per (shape, dtype), kept sorted by (shape, dtype).
        torch_version: torch version it was tuned with (JSON ``"torch"``; default: the installed one).
        triton_version: triton version (JSON ``"triton"``; default: the installed one, None when absent).
        created: ISO-8601 UTC creation time (default: now).
        commit: git commit of the tuned code, when known.
        schema: format version (:data:`SCHEMA_VERSION`).
        path: where it was loaded from (not serialised).
        kernels_valid: False when the torch/triton versions differ from the installed ones, in
            which case :meth:`lookup` drops kernel configs (not serialised).
    """

    device: str
    entries: list[TuningEntry] = field(default_factory=list)
    torch_version: str | None = field(default_factory=lambda: _installed_version("torch"))
    triton_version: str | None = field(default_factory=lambda: _installed_version("triton"))
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )
    commit: str | None = None
    schema: int = SCHEMA_VERSION
    path: str | None = field(default=None, compare=False)
    kernels_valid: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        self.entries = sorted(self.entries, key=lambda e: (e.shape, e.dtype))

    def to_json(self) -> dict[str, Any]:
        """The table as a JSON-ready dict, entries sorted by (shape, dtype)."""
        entries = sorted(self.entries, key=lambda e: (e.shape, e.dtype))  # also when appended to
        return {
            "schema": self.schema,
            "torch": self.torch_version,
            "triton": self.triton_version,
            "device": self.device,
            "created": self.created,
            "commit": self.commit,
            "entries": [e.to_json() for e in entries],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as indented JSON (atomically: a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TuningTable:
        """Read and validate a tuning file (see the module docstring for the fallback policy).

        Raises:
            TuningFileError: the file is missing, unreadable, not JSON or malformed.
        """
        path = Path(path)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TuningFileError(
                f"tuning file {where} does not exist (write one with `python -m autotune --model "
                f"MODULE:FACTORY --out {where}`, or pass tuning=None for the defaults)"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise TuningFileError(f"tuning file {where} cannot be read: {error}") from error
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise TuningFileError(f"tuning file {where} is not valid JSON: {error}") from error
        if not isinstance(data, dict) or "schema" not in data:
            raise TuningFileError(f"tuning file {where} is not a tuning file (no 'schema' field)")
        schema = data["schema"]
        if not is_int(schema, 0):
            raise TuningFileError(f"tuning file {where}: schema must be an int; got {schema!r}")
        if schema != SCHEMA_VERSION:
            warn_once(
                (where, "schema"),
                f"tuning file {where} has schema version {schema} but this tritonkron reads version "
                f"{SCHEMA_VERSION}; ignoring it: every shape uses the defaults (block_size="
                f"{DEFAULT_BLOCK_SIZE}, full rank, heuristic kernel configs). Re-run `python -m autotune`.",
            )
            return cls(device=str(data.get("device", "")), schema=schema, path=where, kernels_valid=False)
        missing = [key for key in _TOP_KEYS if key not in data]
        if missing:
            raise TuningFileError(f"tuning file {where} is missing {missing}")
        for key in ("torch", "triton", "device", "created"):
            if data[key] is not None and not isinstance(data[key], str):
                raise TuningFileError(f"tuning file {where}: {key} must be a string; got {data[key]!r}")
        if not isinstance(data["device"], str):
            raise TuningFileError(f"tuning file {where}: device must be a string")
        if not isinstance(data["entries"], list):
            raise TuningFileError(f"tuning file {where}: entries must be a list")
        entries = [
            TuningEntry.from_json(e, f"tuning file {where}, entry {i}") for i, e in enumerate(data["entries"])
        ]
        keys = [(e.shape, e.dtype) for e in entries]
        if len(set(keys)) != len(keys):
            raise TuningFileError(f"tuning file {where}: more than one entry for the same shape and dtype")
        table = cls(
            device=data["device"],
            entries=entries,
            torch_version=data["torch"],
            triton_version=data["triton"],
            created=data["created"] or "",
            commit=data.get("commit") if isinstance(data.get("commit"), str) else None,
            path=where,
        )
        installed = (_installed_version("torch"), _installed_version("triton"))
        if (table.torch_version, table.triton_version) != installed:
            table.kernels_valid = False
            warn_once(
                (where, "versions"),
                f"tuning file {where} was tuned with torch {table.torch_version} / triton {table.triton_version}, but "
                f"torch {installed[0]} / triton {installed[1]} are installed: its kernel configs are "
                "ignored (launcher heuristics used); its block sizes and ranks are kept.",
            )
        return table

    def lookup(
        self, shape: Iterable[int], dtype: torch.dtype | str, device: str | None = None
    ) -> TuningEntry | None:
        """The entry for a parameter shape and dtype, or None when the file has none.

        Args:
            shape: the parameter's shape (≥ 2 dims; its matrix view is looked up).
            dtype: the parameter's dtype.
            device: device name (:func:`device_name`); on another device than the file's, kernel
                configs are dropped (with a one-time warning) and the rest is returned.
        """
        key = (matrix_shape(tuple(shape)), dtype_name(dtype))
        entry = next((e for e in self.entries if (e.shape, e.dtype) == key), None)
        if entry is None:
            return None
        kernels_ok = self.kernels_valid
        if device is not None and device != self.device:
            kernels_ok = False
            warn_once(
                (str(self.path), "device", device),
                f"tuning file {self.path} was tuned on {self.device!r}, not {device!r}: its kernel "
                "configs are ignored (launcher heuristics used); its block sizes and ranks are kept.",
            )
        return entry if kernels_ok or not entry.kernels else replace(entry, kernels={})


def load_tuning(path: str | os.PathLike[str]) -> TuningTable:
    """Read a tuning file; see :meth:`TuningTable.load`.

    Raises:
        TuningFileError: the file is missing, unreadable, not JSON or malformed.
    """
    return TuningTable.load(path)
