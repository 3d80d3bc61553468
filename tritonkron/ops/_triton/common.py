"""Small helpers shared by the Triton launchers (no kernels, no torch math).

- :func:`interpreting`: whether kernels run under Triton's CPU interpreter.
- :func:`next_power_of_2`, :func:`tile_size`, :func:`is_pow2_tile`: tile-size arithmetic.
- :data:`TORCH_TO_TL`: torch → ``tl`` dtype map for the float dtypes the kernels accept.
- :func:`split_float`: a Python float as an fp32 (hi, lo) pair, for fp64 kernels (Triton passes
  every Python float argument as fp32).
- :func:`normalize_config`, :func:`resolve_config`: an explicit ``dict`` / ``triton.Config`` as a
  flat dict, and merged over a heuristic default and validated; :func:`legal_configs`: the legal
  configs of a grid of candidates.
- :func:`check_tensor`, :func:`check_shape`, :func:`check_sized`, :func:`check_per_block`,
  :func:`check_float`, :func:`check_range`, :func:`out_or_empty`, :func:`may_overlap`: launcher
  argument checks that raise ``ValueError`` naming the parameter.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Mapping

import torch
import triton
import triton.language as tl
from torch import Tensor

from tritonkron.math.checks import dtype_list
from tritonkron.options import triton_interpret

__all__ = [
    "FLOATS",
    "SMEM_BUDGET",
    "TORCH_TO_TL",
    "check_float",
    "check_per_block",
    "check_range",
    "check_shape",
    "check_sized",
    "check_tensor",
    "interpreting",
    "is_pow2_tile",
    "legal_configs",
    "may_overlap",
    "next_power_of_2",
    "normalize_config",
    "out_or_empty",
    "resolve_config",
    "split_float",
    "tile_size",
]

_FP32_MAX = 3.4028234663852886e38
_LAUNCH_KEYS = ("num_warps", "num_stages")

# Shared-memory budget for pipelined operand tiles (bytes): fits sm80 (164 KiB) and later.
SMEM_BUDGET = 160 * 1024

# Operand dtypes of the fp32-accumulating launchers (precondition, eigenvalue tracking, sketches).
FLOATS = (torch.float32, torch.float16, torch.bfloat16)

TORCH_TO_TL: dict[torch.dtype, tl.dtype] = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def interpreting() -> bool:
    """Whether Triton runs in interpreter mode (``TRITON_INTERPRET=1``: kernels on CPU tensors)."""
    return triton_interpret()


def next_power_of_2(n: int) -> int:
    """The smallest power of two ≥ n (1 for n ≤ 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def tile_size(dim: int, cap: int, floor: int = 16) -> int:
    """The smallest power of two ≥ ``dim``, clamped to ``[floor, cap]``.

    The floor of 16 is the smallest operand size ``tl.dot`` accepts on NVIDIA GPUs.
    """
    return max(floor, min(cap, next_power_of_2(dim)))


def is_pow2_tile(x: object, floor: int = 16) -> bool:
    """Whether ``x`` is an int power of two ≥ ``floor``."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= floor and (x & (x - 1)) == 0


def split_float(x: float) -> tuple[float, float]:
    """Split x into fp32-representable (hi, lo) with hi + lo = x to about 2⁻⁴⁸ relative.

    Triton types every Python float argument as fp32, so a float64 kernel that needs β or a
    scale to full precision receives both halves and forms ``hi.to(tl.float64) + lo.to(tl.float64)``;
    in an fp32 kernel the sum rounds back to fp32(x).
    """
    x = float(x)
    if not math.isfinite(x) or abs(x) > _FP32_MAX:
        return x, 0.0  # not representable in fp32 anyway: the kernel sees ±inf or NaN
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, x - hi


def normalize_config(config: Mapping[str, int] | triton.Config) -> dict[str, int]:
    """An explicit config as a flat dict (``triton.Config`` → its kwargs plus warps and stages)."""
    if isinstance(config, triton.Config):
        return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a dict or triton.Config; got {type(config).__name__}")
    return dict(config)


def legal_configs(
    keys: tuple[str, ...],
    values: tuple[tuple[int, ...], ...],
    keep: Callable[[Mapping[str, int]], bool],
) -> list[triton.Config]:
    """Every config of the grid ``values`` (one tuple of candidates per key, in the order of ``keys``)
    that ``keep`` accepts, as ``triton.Config`` (``num_warps`` and ``num_stages`` as launch options,
    the other keys as kernel arguments), in grid order."""
    configs = (dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values))
    return [
        triton.Config(
            {k: c[k] for k in keys if k not in _LAUNCH_KEYS},
            num_warps=c["num_warps"],
            num_stages=c["num_stages"],
        )
        for c in configs
        if keep(c)
    ]


def resolve_config(
    config: Mapping[str, int] | triton.Config | None,
    default: dict[str, int],
    keys: tuple[str, ...],
    keep: Callable[[Mapping[str, int]], bool],
    kind: str = "tile",
) -> dict[str, int]:
    """An explicit config merged over the heuristic ``default`` and validated; ``default`` if None.

    Raises:
        ValueError: a key outside ``keys``, or a merged config that ``keep`` rejects (the message
            says "config is not a legal {kind} config").
    """
    if config is None:
        return default
    cfg = normalize_config(config)
    unknown = sorted(set(cfg) - set(keys))
    if unknown:
        raise ValueError(f"config has unknown keys {unknown}; allowed: {list(keys)}")
    merged = {**default, **cfg}
    if not keep(merged):
        raise ValueError(f"config is not a legal {kind} config: {merged}")
    return merged


def check_tensor(
    name: str,
    t: object,
    ndim: int,
    dtypes: tuple[torch.dtype, ...] = FLOATS,
    device: torch.device | None = None,
) -> Tensor:
    """Return ``t`` if it is an ``ndim``-D tensor of one of ``dtypes`` (on ``device`` if given).

    Raises:
        ValueError: naming ``name`` and what is wrong.
    """
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {list(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must be {dtype_list(dtypes)}; got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}; got {t.device}")
    return t


def check_shape(name: str, t: Tensor, shape: tuple[int | str, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``t`` has ``shape``; a str entry (its name in the
    message, e.g. ``"k"``) matches any size."""
    if t.dim() != len(shape) or any(
        isinstance(want, int) and got != want for got, want in zip(t.shape, shape, strict=True)
    ):
        want = ", ".join(str(size) for size in shape)
        raise ValueError(f"{name} must have shape [{want}]; got {list(t.shape)}")


def check_sized(
    name: str,
    t: object,
    shape: tuple[int | str, ...],
    dtypes: tuple[torch.dtype, ...] = FLOATS,
    device: torch.device | None = None,
) -> Tensor:
    """:func:`check_tensor` with ``len(shape)`` dimensions, then :func:`check_shape`; returns ``t``."""
    check_tensor(name, t, len(shape), dtypes, device)
    check_shape(name, t, shape)
    return t


def check_per_block(
    name: str,
    t: object,
    Bsz: int,
    dtypes: tuple[torch.dtype, ...],
    device: torch.device,
    what: str = "a tensor",
) -> Tensor:
    """A ``[B]`` view of ``t`` if it is a tensor with ``Bsz`` elements (any shape) of one of ``dtypes``
    on ``device``; ``what`` is what the message says ``name`` must be."""
    if not isinstance(t, Tensor) or t.numel() != Bsz:
        got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name} must be {what} with B = {Bsz} elements; got {got}")
    return check_tensor(name, t, t.dim(), dtypes, device).reshape(Bsz)


def out_or_empty(out: Tensor | None, shape: tuple[int, ...], like: Tensor, name: str = "out") -> Tensor:
    """``out`` checked with :func:`check_sized` (a float32/float16/bfloat16 tensor of ``shape`` on
    ``like``'s device), or a new empty tensor of that shape with ``like``'s dtype."""
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return check_sized(name, out, shape, FLOATS, like.device)


def check_float(name: str, value: object) -> float:
    """``value`` as a float if it is a Python int or float (not bool, not a tensor)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a Python float; got {type(value).__name__}")
    return float(value)


def check_range(name: str, value: object, lo: float, hi: float = float("inf")) -> float:
    """``value`` as a float if it is a Python int or float in ``[lo, hi]``."""
    value = check_float(name, value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}]; got {value}")
    return value


def may_overlap(a: Tensor, b: Tensor) -> bool:
    """Whether a and b may share memory (conservative: same storage and intersecting byte spans)."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: Tensor) -> tuple[int, int]:
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
        return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1
