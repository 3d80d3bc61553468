"""What the tuner searches: block sizes, each kernel's legal configs for a shape, and CPU knobs.

The kernels own legality (``tritonkron.ops.<op>.<op>_configs()``, filtered there by
``_keep_<op>``); this module decides what is worth *searching* for one block shape: configs
whose tiles exceed the problem (beyond the next power of two of the dimension they tile) only
add masked work and are dropped, and the survivors are deduplicated. Each op also says how to
build fresh, representative inputs for one ``[B, m, n]`` block stack and how to launch itself
with an explicit ``config=`` (launchers never pick configs themselves when one is given).

Ops (names as stored in a tuning entry's ``kernels``):

==========================  =========================================  ==========================
op                          launch (``tritonkron.ops``)            in place
==========================  =========================================  ==========================
``factor_update.left``      A ← βA + s·G Q_B diag(w) Q_Bᵀ Gᵀ            yes (``out=A``)
``factor_update.right``     B ← βB + s·Gᵀ Q_A diag(w) Q_Aᵀ G            yes (``out=B``)
``precondition``            U = Q_A((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ              no
``track_eigenvalues``       a, b ← EMA of Ĝ² row/column sums            yes (``out=(a, b)``)
``newton_schulz.left``      A^{-1/2}, coupled Newton (fixed steps)      no
``newton_schulz.right``     B^{-1/2}                                    no
==========================  =========================================  ==========================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tritonkron.math.blocking import BlockLayout, matrix_shape
from tritonkron.ops._triton import HAS_TRITON

__all__ = [
    "BLOCK_SIZES",
    "KERNEL_OPS",
    "SKETCH_WHOLE_MAX",
    "NS_TIMING_STEPS",
    "ROOT_METHODS",
    "KernelOp",
    "block_size_candidates",
    "cpu_thread_candidates",
    "kernel_configs",
    "sketch_block_size",
]

BLOCK_SIZES = (128, 256, 512, 1024, 2048, 4096, 8192)
"""Block sizes tried for dims above them (plus the unsplit size)."""

ROOT_METHODS = ("eigh", "newton_schulz")
"""Inverse-root methods compared on the CPU (``tk.inverse_root(method=...)``)."""

NS_TIMING_STEPS = 10
"""Newton–Schulz iterations per timed launch (tol = 0, so every config does the same work)."""

Block = tuple[int, int, int]  # (B, m, n)
Inputs = dict[str, Any]


def block_size_candidates(shape: tuple[int, ...], sizes: tuple[int, ...] = BLOCK_SIZES) -> list[int]:
    """Block sizes worth comparing for a parameter shape, smallest first.

    Every size in ``sizes`` below the larger matrix dimension, plus that dimension itself (no
    split); sizes giving the same block layout as a smaller one are dropped.
    """
    m, n = matrix_shape(shape)
    top = max(m, n, 1)
    out: list[int] = []
    seen: set[tuple] = set()
    for size in [s for s in sizes if s < top] + [top]:
        layout = tuple(
            (g.shape, len(g.offsets)) for g in BlockLayout.build((max(m, 1), max(n, 1)), size).groups
        )
        if layout not in seen:
            seen.add(layout)
            out.append(size)
    return out


SKETCH_WHOLE_MAX = 4096
"""Largest dimension sketched whole (its full-rank calibration factor is this size squared)."""


def sketch_block_size(shape: tuple[int, ...], dense_block: int, whole_max: int = SKETCH_WHOLE_MAX) -> int:
    """Block size for ``sketch=True``: the unsplit largest dim when it is at most ``whole_max``.

    A sketch holds (m + n)·ℓ floats per block and costs O((m + n)·ℓ² + m·n·ℓ) per step, so at a
    given ℓ one unsplit block is the cheapest layout and keeps every cross-correlation; only
    dims above ``whole_max`` keep the dense search's ``dense_block`` (their spectra come from a
    full-rank calibration, which would need a ``whole_max``² factor or larger).
    """
    m, n = matrix_shape(shape)
    top = max(m, n, 1)
    return top if top <= whole_max else dense_block


def cpu_thread_candidates() -> list[int]:
    """Thread counts to try on the CPU: powers of two up to the core count, and the count itself."""
    cores = os.cpu_count() or 1
    counts = {1, cores}
    p = 2
    while p < cores:
        counts.add(p)
        p *= 2
    return sorted(counts)


def _p2(dim: int) -> int:
    return 1 << max(0, (max(dim, 1) - 1).bit_length())


@dataclass(frozen=True)
class KernelOp:
    """One tunable launch.

    Attributes:
        name: op name in tuning entries.
        legal: returns the kernel module's legal configs (``<op>_configs()``) as dicts.
        limits: per config key, which problem dimension its tile spans (from ``(m, n)``).
        make_inputs: ``(block, dtype, device, seed)`` → a fresh dict of inputs.
        launch: ``(inputs, config)`` → output; ``config=None`` is the launcher's heuristic.
    """

    name: str
    legal: Callable[[], list[dict[str, int]]]
    limits: Mapping[str, Callable[[int, int], int]]
    make_inputs: Callable[[Block, torch.dtype, torch.device, int], Inputs]
    launch: Callable[[Inputs, Mapping[str, int] | None], Any]


def kernel_configs(op: KernelOp, block: Block, limit: int | None = None) -> list[dict[str, int]]:
    """The legal configs of ``op`` worth timing on ``block`` (tiles no larger than needed).

    A tile key may reach the next power of two of the dimension it spans, or the smallest legal
    value of that key when that is larger; duplicates are dropped; ``limit`` keeps an evenly
    spaced subset.
    """
    legal = op.legal()
    if not legal:
        return []
    _, m, n = block
    floors = {key: min(c[key] for c in legal) for key in op.limits}
    bounds = {key: max(floors[key], _p2(dim(m, n))) for key, dim in op.limits.items()}
    out: list[dict[str, int]] = []
    for cfg in legal:
        if all(cfg[key] <= bounds[key] for key in op.limits) and cfg not in out:
            out.append(cfg)
    if limit is not None and len(out) > limit:
        step = len(out) / limit
        out = [out[int(i * step)] for i in range(limit)]
    return out


# ---------------------------------------------------------------------------------------------
# Op definitions: fresh inputs and launches.
# ---------------------------------------------------------------------------------------------


def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def _spd(gen: torch.Generator, B: int, d: int) -> Tensor:
    R = _rand(gen, B, d, d)
    return R @ R.transpose(-1, -2) / d + torch.eye(d)


def _orthonormal(gen: torch.Generator, B: int, d: int) -> Tensor:
    return torch.linalg.qr(_rand(gen, B, d, d)).Q


def _factor_inputs(side: str) -> Callable[[Block, torch.dtype, torch.device, int], Inputs]:
    def make(block: Block, dtype: torch.dtype, device: torch.device, seed: int) -> Inputs:
        B, m, n = block
        gen = torch.Generator().manual_seed(seed)
        d, k = (m, n) if side == "left" else (n, m)
        inputs = {
            "X": _spd(gen, B, d),
            "G": _rand(gen, B, m, n).to(dtype),
            "Q": _orthonormal(gen, B, k),
            "w": torch.rand(B, k, generator=gen) + 0.1,
        }
        return {key: t.to(device) for key, t in inputs.items()}

    return make


def _factor_launch(side: str) -> Callable[[Inputs, Mapping[str, int] | None], Any]:
    def launch(x: Inputs, config: Mapping[str, int] | None) -> Tensor:
        from tritonkron.ops.factor_update.triton import factor_update_triton

        return factor_update_triton(
            x["X"], x["G"], 0.98, 0.02, side, (x["Q"], x["w"]), out=x["X"], config=config
        )

    return launch


def _precondition_inputs(block: Block, dtype: torch.dtype, device: torch.device, seed: int) -> Inputs:
    B, m, n = block
    gen = torch.Generator().manual_seed(seed)
    inputs = {
        "M": _rand(gen, B, m, n).to(dtype),
        "Q_A": _orthonormal(gen, B, m),
        "Q_B": _orthonormal(gen, B, n),
        "s_A": torch.rand(B, m, generator=gen) + 0.5,
        "s_B": torch.rand(B, n, generator=gen) + 0.5,
    }
    return {key: t.to(device) for key, t in inputs.items()}


def _precondition_launch(x: Inputs, config: Mapping[str, int] | None) -> Tensor:
    from tritonkron.ops.precondition.triton import eigenbasis_precondition_triton

    return eigenbasis_precondition_triton(x["M"], x["Q_A"], x["Q_B"], x["s_A"], x["s_B"], 1e-8, config=config)


def _track_inputs(block: Block, dtype: torch.dtype, device: torch.device, seed: int) -> Inputs:
    B, m, n = block
    gen = torch.Generator().manual_seed(seed)
    inputs = {
        "a": torch.rand(B, m, generator=gen) + 0.5,
        "b": torch.rand(B, n, generator=gen) + 0.5,
        "G_hat": _rand(gen, B, m, n).to(dtype),
        "w_b": torch.rand(B, n, generator=gen) + 0.1,
        "w_a": torch.rand(B, m, generator=gen) + 0.1,
        "s": torch.full((B,), 1.0 / max(m, n)),
    }
    return {key: t.to(device) for key, t in inputs.items()}


def _track_launch(x: Inputs, config: Mapping[str, int] | None) -> tuple[Tensor, Tensor]:
    from tritonkron.ops.track_eigenvalues.triton import track_eigenvalues_triton

    return track_eigenvalues_triton(
        x["a"],
        x["b"],
        x["G_hat"],
        x["w_b"],
        x["s"],
        x["w_a"],
        x["s"],
        0.98,
        out=(x["a"], x["b"]),
        config=config,
    )


def _ns_inputs(side: str) -> Callable[[Block, torch.dtype, torch.device, int], Inputs]:
    def make(block: Block, dtype: torch.dtype, device: torch.device, seed: int) -> Inputs:
        del dtype  # factors are float32 whatever the parameter dtype
        B, m, n = block
        gen = torch.Generator().manual_seed(seed)
        return {"A": _spd(gen, B, m if side == "left" else n).to(device)}

    return make


def _ns_launch(x: Inputs, config: Mapping[str, int] | None) -> Tensor:
    from tritonkron.ops.inverse_root.triton import newton_schulz_triton

    return newton_schulz_triton(x["A"], 2, max_iters=NS_TIMING_STEPS, tol=0.0, config=config).root


def _legal(module: str, fn: str) -> Callable[[], list[dict[str, int]]]:
    def legal() -> list[dict[str, int]]:
        if not HAS_TRITON:
            return []
        import importlib

        from tritonkron.ops._triton.common import normalize_config

        return [normalize_config(c) for c in getattr(importlib.import_module(module), fn)()]

    return legal


_FU = "tritonkron.ops.factor_update.triton"
_PC = "tritonkron.ops.precondition.triton"
_TE = "tritonkron.ops.track_eigenvalues.triton"
_NS = "tritonkron.ops.inverse_root.triton"

KERNEL_OPS: dict[str, KernelOp] = {
    op.name: op
    for op in (
        KernelOp(
            "factor_update.left",
            _legal(_FU, "factor_update_configs"),
            {"BLOCK_M": lambda m, n: m, "BLOCK_K": lambda m, n: n},
            _factor_inputs("left"),
            _factor_launch("left"),
        ),
        KernelOp(
            "factor_update.right",
            _legal(_FU, "factor_update_configs"),
            {"BLOCK_M": lambda m, n: n, "BLOCK_K": lambda m, n: m},
            _factor_inputs("right"),
            _factor_launch("right"),
        ),
        KernelOp(
            "precondition",
            _legal(_PC, "precondition_configs"),
            {key: (lambda m, n: max(m, n)) for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K")},
            _precondition_inputs,
            _precondition_launch,
        ),
        KernelOp(
            "track_eigenvalues",
            _legal(_TE, "track_eigenvalues_configs"),
            {"BLOCK_M": lambda m, n: m, "BLOCK_N": lambda m, n: n},
            _track_inputs,
            _track_launch,
        ),
        KernelOp(
            "newton_schulz.left",
            _legal(_NS, "newton_schulz_configs"),
            {"BLOCK": lambda m, n: m, "BLOCK_K": lambda m, n: m},
            _ns_inputs("left"),
            _ns_launch,
        ),
        KernelOp(
            "newton_schulz.right",
            _legal(_NS, "newton_schulz_configs"),
            {"BLOCK": lambda m, n: n, "BLOCK_K": lambda m, n: n},
            _ns_inputs("right"),
            _ns_launch,
        ),
    )
}
"""Every tunable op, by name."""
