"""Cases of ``python -m perf.gpu_check``: one ``_setup_<op>`` per op, shared by the correctness and
timing runs, and the case lists of each section.

A :class:`Case` is one (op, variant, stacked block shape, input dtype); its setup draws random
inputs and returns a :class:`Prepared` that runs the op through :mod:`tritonkron.ops` on either
backend, with the FLOP / byte model of one call (the table in the docstring of
``perf/gpu_check.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from perf import shapes
from perf.check_plan import (
    BETA,
    EPS,
    FACTOR_VARIANTS,
    LOW_DTYPES,
    LOWP_FACTOR_TIMING,
    NS_GEMMS_PER_ITER,
    NS_POWERS,
    Plan,
)
from perf.shapes import BlockShape
from tritonkron.ops.factor_update import factor_update
from tritonkron.ops.inverse_root import newton_schulz_root
from tritonkron.ops.inverse_root.reference import BOUND_SQUARINGS
from tritonkron.ops.precondition import precondition, spike_and_flat
from tritonkron.ops.rotated_statistics import rotated_statistics
from tritonkron.ops.rotation import rotate, rotate_back
from tritonkron.ops.track_eigenvalues import track_eigenvalues


@dataclass(frozen=True)
class Case:
    """One (op, variant, stacked block shape, input dtype) combination."""

    op: str
    variant: str
    block: BlockShape
    dtype: torch.dtype


class Prepared(NamedTuple):
    """Inputs of a case and how to call the op on them.

    Attributes:
        fn: ``fn(backend, *tensors)`` runs the op through :mod:`tritonkron.ops`.
        tensors: the inputs (already in their dtypes).
        flops: the FLOP model of one call (module docstring).
        bytes: the byte model of one call (memory-bound ops; 0 otherwise).
    """

    fn: Callable[..., Any]
    tensors: tuple[Tensor, ...]
    flops: float
    bytes: float = 0.0

    def run(self, backend: str) -> Any:
        """The op on the inputs through ``backend``."""
        return self.fn(backend, *self.tensors)

    def oracle(self) -> Any:
        """The reference on float64 copies of the (already rounded) inputs."""
        return self.fn("reference", *(t.double() for t in self.tensors))


def generator(device: str, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


def randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    """scale·N(0, 1) samples of ``shape`` on g's device."""
    return torch.randn(*shape, generator=g, device=g.device) * scale


def _positive(g: torch.Generator, *shape: int) -> Tensor:
    """Uniform samples in [0.5, 1.5) of ``shape`` on g's device."""
    return 0.5 + torch.rand(*shape, generator=g, device=g.device)


def _symmetric(g: torch.Generator, B: int, d: int) -> Tensor:
    """``[B, d, d]`` symmetric (Z + Zᵀ)/2 with Z ~ N(0, 1/d)."""
    Z = randn(g, B, d, d, scale=d**-0.5)
    return 0.5 * (Z + Z.transpose(-1, -2))


def _basis(g: torch.Generator, B: int, d: int, k: int, orthonormal: bool) -> Tensor:
    """``[B, d, k]`` orthonormal columns (QR; correctness) or a scaled Gaussian (timing: no QR cost)."""
    Z = randn(g, B, d, k, scale=d**-0.5)
    return torch.linalg.qr(Z).Q if orthonormal else Z


def _setup_factor_update(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    """X ← βX + s·𝒢 W 𝒢ᵀ for the case's side and weight form (``exact``: orthonormal bases)."""
    side, form = case.variant.split("/")
    B, m, n = case.block.shape
    d, k = (m, n) if side == "left" else (n, m)
    X, G = _symmetric(g, B, d), randn(g, B, m, n).to(case.dtype)
    scale = 0.05 * _positive(g, B)
    flops = 2.0 * B * d * d * k
    weights: tuple[Tensor, ...] = ()
    if form == "eigen":
        weights = (_basis(g, B, k, k, exact), _positive(g, B, k))
    elif form == "dense":
        weights = (_symmetric(g, B, k),)
    if weights:
        flops += 2.0 * B * d * k * k

    def fn(backend: str, X: Tensor, G: Tensor, scale: Tensor, *w: Tensor) -> Tensor:
        weight = None if not w else (w[0] if len(w) == 1 else (w[0], w[1]))
        return factor_update(X, G, BETA, scale, side, weight, backend=backend)

    return Prepared(fn, (X, G, scale, *weights), flops)


def _setup_precondition(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    """U = Q_A ((Q_Aᵀ M Q_B) ⊙ Σ) Q_Bᵀ on the case's block."""
    B, m, n = case.block.shape
    dt = case.dtype
    tensors = (
        randn(g, B, m, n),
        _basis(g, B, m, m, exact),
        _basis(g, B, n, n, exact),
        _positive(g, B, m),
        _positive(g, B, n),
    )

    def fn(backend: str, *t: Tensor) -> Tensor:
        return precondition(*t, EPS, backend=backend)

    return Prepared(fn, tuple(t.to(dt) for t in tensors), 4.0 * B * (m * m * n + m * n * n))


def _setup_spike_and_flat(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    """P Y = U_k (D_k − c I)(U_kᵀ Y) + c·Y with rank k = ``shapes.spike_rank(m)``."""
    B, m, n = case.block.shape
    k = shapes.spike_rank(m)
    tensors = (_basis(g, B, m, k, exact), _positive(g, B, k), 0.5 * _positive(g, B, 1), randn(g, B, m, n))

    def fn(backend: str, *t: Tensor) -> Tensor:
        return spike_and_flat(*t, backend=backend)

    return Prepared(fn, tuple(t.to(case.dtype) for t in tensors), 4.0 * B * m * k * n)


def _setup_track_eigenvalues(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    """a ← βa + (1−β) s_A (Ĝ²) w_B and b ← βb + (1−β) s_B (Ĝ²)ᵀ w_A (memory-bound: a byte model)."""
    B, m, n = case.block.shape
    tensors = (
        _positive(g, B, m),
        _positive(g, B, n),
        randn(g, B, m, n),
        _positive(g, B, n),
        _positive(g, B) / n,
        _positive(g, B, m),
        _positive(g, B) / m,
    )

    def fn(backend: str, *t: Tensor) -> tuple[Tensor, Tensor]:
        return track_eigenvalues(*t, BETA, backend=backend)

    itemsize = torch.empty((), dtype=case.dtype).element_size()
    nbytes = float(itemsize * B * (m * n + 3 * (m + n) + 2))
    return Prepared(fn, tuple(t.to(case.dtype) for t in tensors), 6.0 * B * m * n, nbytes)


def _spd(g: torch.Generator, B: int, d: int) -> Tensor:
    """fp32 SPD ``[B, d, d]``: GGᵀ/d + 0.1·I formed in float64 (κ ≈ 40 for large d)."""
    G = torch.randn(B, d, d, generator=g, device=g.device, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64, device=g.device)
    return (G @ G.transpose(-1, -2) / d + 0.1 * eye).float()


def _setup_inverse_root(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    """A^{-1/p} by Newton–Schulz on an SPD A (FLOPs follow the iteration count, see ``ns_flops``)."""
    p = int(case.variant.removeprefix("p="))

    def fn(backend: str, A: Tensor) -> Any:
        return newton_schulz_root(A, p, backend=backend)

    B, d, _ = case.block.shape
    return Prepared(fn, (_spd(g, B, d),), 0.0)


def _setup_rotate(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    """X̂ = Q_Aᵀ X Q_B ("forward") or X = Q_A X̂ Q_Bᵀ ("back") on the case's block."""
    B, m, n = case.block.shape
    dt = case.dtype
    tensors = (randn(g, B, m, n), _basis(g, B, m, m, exact), _basis(g, B, n, n, exact))
    apply = rotate_back if case.variant == "back" else rotate

    def fn(backend: str, *t: Tensor) -> Tensor:
        return apply(*t, backend=backend)

    return Prepared(fn, tuple(t.to(dt) for t in tensors), 2.0 * B * (m * m * n + m * n * n))


def _setup_rotated_statistics(case: Case, g: torch.Generator, exact: bool) -> Prepared:
    """(A', B', Ĝ) from the shared products G Q_B, Q_Aᵀ G: LogDet weights ("logdet") or W = I
    ("von_neumann"); statistics are float32 in the optimizer, so the case runs in float32."""
    B, m, n = case.block.shape
    weighted = case.variant == "logdet"
    tensors = (
        _symmetric(g, B, m),
        _symmetric(g, B, n),
        randn(g, B, m, n),
        _basis(g, B, m, m, exact),
        _basis(g, B, n, n, exact),
        _positive(g, B, m),
        _positive(g, B) / n,
        _positive(g, B, n),
        _positive(g, B) / m,
    )

    def fn(backend: str, A: Tensor, B_: Tensor, G: Tensor, Q_A: Tensor, Q_B: Tensor, *w: Tensor) -> Any:
        w_A, s_A, w_B, s_B = w
        if not weighted:
            w_A = w_B = None
        return rotated_statistics(A, B_, G, Q_A, Q_B, w_A, s_A, w_B, s_B, BETA, backend=backend)

    products = 4.0 * B * m * n * (m + n)
    return Prepared(fn, tensors, products + (2.0 * B * m * n * min(m, n) if weighted else 0.0))


SETUPS: dict[str, Callable[[Case, torch.Generator, bool], Prepared]] = {
    "factor_update": _setup_factor_update,
    "precondition": _setup_precondition,
    "rotate": _setup_rotate,
    "rotated_statistics": _setup_rotated_statistics,
    "spike_and_flat": _setup_spike_and_flat,
    "track_eigenvalues": _setup_track_eigenvalues,
    "inverse_root": _setup_inverse_root,
}


def op_variants(op: str) -> tuple[str, ...]:
    """The variants of ``op`` (factor-update side/weight form, NS power, …)."""
    return {
        "factor_update": FACTOR_VARIANTS,
        "precondition": ("full",),
        "rotate": ("forward", "back"),
        "rotated_statistics": ("logdet", "von_neumann"),
        "spike_and_flat": ("rank=m/8",),
        "track_eigenvalues": ("logdet",),
        "inverse_root": tuple(f"p={p}" for p in NS_POWERS),
    }[op]


def ns_flops(block: BlockShape, p: int, iterations: int) -> float:
    """FLOPs of one NS call: 2·B·d³·(3 + g_p·iterations) (module docstring of ``perf/gpu_check.py``)."""
    B, d, _ = block.shape
    return 2.0 * B * d**3 * (BOUND_SQUARINGS + NS_GEMMS_PER_ITER[p] * iterations)


_ANY_DTYPE_OPS = ("factor_update", "precondition", "rotate", "spike_and_flat", "track_eigenvalues")


def _fp32_cases(plan: Plan, blocks: Sequence[BlockShape], ns_blocks: Sequence[BlockShape]) -> list[Case]:
    """Cases of the float32-only ops: rotated_statistics on ``blocks``, inverse_root on ``ns_blocks``."""
    cases = []
    for op, op_blocks in (("rotated_statistics", blocks), ("inverse_root", ns_blocks)):
        if op in plan.ops:
            cases += [Case(op, v, b, torch.float32) for b in op_blocks for v in op_variants(op)]
    return cases


def correctness_cases(plan: Plan) -> list[Case]:
    """Cases of the correctness section: every op × variant × block × dtype of the plan."""
    cases = []
    for op in _ANY_DTYPE_OPS:
        if op in plan.ops:
            cases += [
                Case(op, v, b, dt)
                for b in plan.correctness_blocks
                for dt in plan.correctness_dtypes
                for v in op_variants(op)
            ]
    return cases + _fp32_cases(plan, plan.correctness_blocks, plan.ns_correctness_blocks)


def timing_cases(plan: Plan) -> list[Case]:
    """Cases of the timing section (low-precision factor updates: the W = I variants only)."""
    cases = []
    for b in plan.timing_blocks:
        for dt in plan.timing_dtypes:
            for op in _ANY_DTYPE_OPS:
                variants = (
                    LOWP_FACTOR_TIMING if op == "factor_update" and dt in LOW_DTYPES else op_variants(op)
                )
                if op in plan.ops:
                    cases += [Case(op, v, b, dt) for v in variants]
    return cases + _fp32_cases(plan, plan.timing_blocks, plan.ns_timing_blocks)
