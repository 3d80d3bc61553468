"""Reader of the IDX files that hold MNIST and Fashion-MNIST (plain or gzip-compressed).

The format (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): two zero bytes, a type
code, the number of dimensions, each dimension as a big-endian uint32, then the data in C order,
big-endian. :func:`read_idx` checks all of it and never reads past a requested ``limit``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["IdxFormatError", "read_idx"]

# IDX element type codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """Raised when a file is not a well-formed IDX file."""


def _open_maybe_gzip(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, transparently decompressing it if it is gzip."""
    with open(path, "rb") as raw:
        head = raw.read(2)
    if head == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _read_exact(stream: BinaryIO, count: int, path: Path, what: str) -> bytes:
    try:
        data = stream.read(count)
    except (OSError, EOFError) as exc:  # corrupt or truncated gzip stream
        raise IdxFormatError(f"{path}: cannot read {what}: {exc}") from exc
    if len(data) != count:
        raise IdxFormatError(f"{path}: truncated file: expected {count} bytes of {what}, got {len(data)}")
    return data


def _read_rest(stream: BinaryIO, path: Path) -> bool:
    """Whether anything follows in ``stream`` (reading at most one byte)."""
    try:
        return bool(stream.read(1))
    except (OSError, EOFError) as exc:
        raise IdxFormatError(f"{path}: cannot read past the data: {exc}") from exc


def read_idx(path: str | os.PathLike[str], limit: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a big-endian
    uint32; the data follow in C order, big-endian.

    Args:
        path: the file; gzip compression is detected from its first bytes, not its name.
        limit: if given, read only the first ``limit`` entries along the first dimension (the
            rest of the file is neither read nor checked).

    Returns:
        An array with the file's shape (first dimension capped at ``limit``) in native byte order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IdxFormatError: bad magic number, unknown type code, truncated data, or trailing bytes.
        ValueError: ``limit`` is negative.
    """
    path = Path(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0; got {limit}")
    with _open_maybe_gzip(path) as stream:
        magic = _read_exact(stream, 4, path, "the magic number")
        zero, code, ndim = struct.unpack(">HBB", magic)
        if zero != 0:
            raise IdxFormatError(
                f"{path}: not an IDX file (bad magic number 0x{magic.hex()}; expected 0x0000 then type and ndim)"
            )
        if code not in _IDX_DTYPES:
            known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
            raise IdxFormatError(f"{path}: unknown IDX type code 0x{code:02X} (known: {known})")
        if ndim == 0:
            raise IdxFormatError(f"{path}: IDX file declares 0 dimensions")
        dims = list(struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path, "the dimensions")))
        if limit is not None:
            dims[0] = min(dims[0], limit)
        dtype = _IDX_DTYPES[code]
        count = int(np.prod(dims, dtype=np.int64))
        data = _read_exact(stream, count * dtype.itemsize, path, "data")
        if limit is None and _read_rest(stream, path):
            raise IdxFormatError(f"{path}: trailing bytes after {count} elements of shape {tuple(dims)}")
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)
