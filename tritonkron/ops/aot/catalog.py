"""Which launcher calls to record: everything a launcher can choose on a GPU.

Three tiers, each a list of ``(label, call)`` pairs; :func:`collect` records them into unique
:class:`~tritonkron.ops.aot.record.Variant` objects.

- :func:`launch_calls`, the heuristic tier: every public launcher with ``config=None`` over
  realistic and odd layer shapes (:data:`SHAPES`), every dtype it accepts, every weight form and
  flag. Launchers pick the same tiles under the interpreter as on a GPU, so this tier is also
  what the interpreter tests run.
- :func:`space_calls`, the legal-space tier: every config of every kernel's legal space (what
  ``python -m autotune`` may choose) through one float32 call per kernel family, plus every
  distinct tile shape of that space through every call in every accepted dtype. Warps and
  stages change neither the kernel's types nor its constexpr branches, so tiles × dtypes × flags
  and configs × one dtype together cover the space at a fraction of the full product's compile
  time.
- :func:`precision_calls`, the precision tier: the TF32 and bf16 policies
  (:mod:`tritonkron.ops.precision`) through the launchers of the step's dense GEMMs (factor
  update, rotated statistics, rotations, eigenbasis and spike-and-flat preconditioning: every
  weight form, side, epilogue and flag), with float32 operands, at :data:`PRECISION_SHAPES`:
  the smallest heuristic tiles and the largest (where shared memory is tightest). The launch
  tier covers the IEEE policy at every shape; the policies change the dot and its operand
  conversion, not the tiles, so this reduced set covers every kernel code path of the two other
  policies (the sketch launchers only chain the same bmm paths at other tiles) at a fraction of
  the launch tier's compile time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tritonkron.ops.aot.record import Variant, recording

__all__ = ["PRECISION_SHAPES", "SHAPES", "collect", "launch_calls", "precision_calls", "space_calls"]

Call = tuple[str, Callable[[], object]]

SHAPES = ((1, 7), (17, 100), (100, 33), (768, 768), (1024, 1024), (4096, 11008))
"""(m, n) of the recorded blocks: tiny, odd (both orientations), GPT-2 (768), the default block
size and LLaMA-7B's MLP (4096 × 11008); every threshold of the heuristics (the 512 and 1024
switches, the tile caps and the 16 floor) is crossed between them."""

_SMALL = ((16, 16), (17, 100), (768, 1024))  # shapes for launchers with host-side linear algebra
_LOW = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_SPACE_SHAPE = (256, 256)  # every legal tile (≤ 128) fits with room for the masks

PRECISION_SHAPES = ((1, 7), (1024, 1024))
"""(m, n) of the precision tier: the smallest heuristic tiles (16 everywhere, the smallest MMA
operands) and the largest of every launcher (128 × 128 × 32 GEMM tiles over 3 stages, 128-row
symmetric tiles: the largest shared-memory footprints)."""
_POLICIES = ("tf32", "bf16")


def _t(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """An uninitialised CPU tensor (recorded launches never read it)."""
    return torch.empty(shape, dtype=dtype)


def _rand(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A random CPU tensor, for launchers whose host code reads values between launches."""
    return torch.randn(shape).to(dtype)


def _factor_calls(
    m: int, n: int, x_dtype: torch.dtype, g_dtype: torch.dtype, config=None, precision: str = "ieee"
) -> list[Call]:
    """factor_update_triton: both sides × the three weight forms × float and tensor scales."""
    from tritonkron.ops.factor_update.triton import factor_update_triton

    calls = []
    G = _t(1, m, n, dtype=g_dtype)
    for side, d, k in (("left", m, n), ("right", n, m)):
        X = _t(1, d, d, dtype=x_dtype)
        weights = {"none": None, "dense": _t(1, k, k, dtype=x_dtype),
                   "eigen": (_t(1, k, k, dtype=x_dtype), _t(1, k, dtype=x_dtype))}  # fmt: skip
        for form, weight in weights.items():
            for scale in (0.5, _t(1, dtype=x_dtype)):
                label = (
                    f"factor_update {side} {form} X={x_dtype} G={g_dtype} {m}x{n} cfg={config} {precision}"
                )
                calls.append((label, lambda X=X, s=scale, w=weight, side=side: factor_update_triton(
                    X, G, 0.9, s, side, w, config=config, precision=precision)))  # fmt: skip
    return calls


def _gemm_calls(
    m: int, n: int, dtype: torch.dtype, basis: torch.dtype, config=None, precision: str = "ieee"
) -> list[Call]:
    """The bmm-chain launchers: precondition, spike-and-flat, rotate (both ways)."""
    from tritonkron.ops.precondition.triton import eigenbasis_precondition_triton, spike_and_flat_triton
    from tritonkron.ops.rotation.triton import rotate_triton

    M, Q_A, Q_B = _t(1, m, n, dtype=dtype), _t(1, m, m, dtype=basis), _t(1, n, n, dtype=basis)
    s_A, s_B, k = _t(1, m, dtype=basis), _t(1, n, dtype=basis), max(1, m // 2)
    tag, kw = f"{dtype}/{basis} {m}x{n} cfg={config} {precision}", {"config": config, "precision": precision}
    return [
        (f"precondition {tag}", lambda: eigenbasis_precondition_triton(M, Q_A, Q_B, s_A, s_B, 1e-8, **kw)),
        (f"spike_and_flat {tag}", lambda: spike_and_flat_triton(
            _t(1, m, k, dtype=basis), _t(1, k, dtype=basis), _t(1, dtype=basis), M, **kw)),
        (f"rotate {tag}", lambda: rotate_triton(M, Q_A, Q_B, **kw)),
        (f"rotate back {tag}", lambda: rotate_triton(M, Q_A, Q_B, back=True, **kw)),
    ]  # fmt: skip


def _track_calls(m: int, n: int, dtype: torch.dtype, config=None) -> list[Call]:
    """track_eigenvalues_triton with and without each weight."""
    from tritonkron.ops.track_eigenvalues.triton import track_eigenvalues_triton

    a, b, G = _t(1, m, dtype=dtype), _t(1, n, dtype=dtype), _t(1, m, n, dtype=dtype)
    calls = []
    for wl in (None, _t(1, n, dtype=dtype)):
        for wr in (None, _t(1, m, dtype=dtype)):
            label = f"track_eigenvalues {dtype} {m}x{n} wl={wl is not None} wr={wr is not None} cfg={config}"
            calls.append((label, lambda wl=wl, wr=wr: track_eigenvalues_triton(
                a, b, G, wl, _t(1), wr, _t(1), 0.9, config=config)))  # fmt: skip
    return calls


def _rotated_statistics_calls(m: int, n: int, dtype: torch.dtype, precision: str = "ieee") -> list[Call]:
    """rotated_statistics_triton with both weights absent or present."""
    from tritonkron.ops.rotated_statistics.triton import rotated_statistics_triton

    A, B, G = _t(1, m, m, dtype=dtype), _t(1, n, n, dtype=dtype), _t(1, m, n, dtype=dtype)
    Q_A, Q_B, s = _t(1, m, m, dtype=dtype), _t(1, n, n, dtype=dtype), _t(1, dtype=dtype)
    calls = []
    for weighted in (False, True):
        w_A, w_B = (_t(1, m, dtype=dtype), _t(1, n, dtype=dtype)) if weighted else (None, None)
        label = f"rotated_statistics {dtype} {m}x{n} weighted={weighted} {precision}"
        calls.append((label, lambda w_A=w_A, w_B=w_B: rotated_statistics_triton(
            A, B, G, Q_A, Q_B, w_A, s, w_B, s, 0.9, precision=precision)))  # fmt: skip
    return calls


def _sketch_calls(m: int, n: int, dtype: torch.dtype, config=None, precision: str = "ieee") -> list[Call]:
    """sketch_update_triton and sketch_track_triton (both sides) and sketch_precondition_triton,
    rank ℓ = min(m, n, 8)."""
    from tritonkron.ops.sketch.triton import (
        sketch_precondition_triton,
        sketch_track_triton,
        sketch_update_triton,
    )

    ell = max(1, min(m, n, 8))
    G, tag = _rand(1, m, n, dtype=dtype), f"{dtype} {m}x{n} cfg={config} {precision}"
    kw = {"config": config, "precision": precision}
    calls = []
    for side, d, e in (("left", m, n), ("right", n, m)):
        U = torch.linalg.qr(torch.randn(1, d, ell)).Q.to(dtype)
        V = torch.linalg.qr(torch.randn(1, e, ell)).Q.to(dtype)
        one, lam, w = (
            torch.ones(1, dtype=dtype),
            torch.ones(1, ell, dtype=dtype),
            torch.ones(1, ell, dtype=dtype),
        )
        calls.append((f"sketch_update {side} {tag}", lambda U=U, V=V, lam=lam, w=w, one=one, side=side: (
            sketch_update_triton(U, lam, one, G, V, w, one, one, 0.9, side, **kw))))  # fmt: skip
        H = torch.eye(ell, dtype=dtype).expand(1, ell, ell)
        calls.append((f"sketch_track {side} {tag}", lambda U=U, V=V, H=H, w=w, one=one, side=side: (
            sketch_track_triton(U, H, one, G, V, w, one, one, 0.9, side, **kw))))  # fmt: skip
    U_A, U_B = _rand(1, m, ell, dtype=dtype), _rand(1, n, ell, dtype=dtype)
    s_A, s_B, c = _rand(1, ell, dtype=dtype), _rand(1, ell, dtype=dtype), torch.ones(1, dtype=dtype)
    calls.append((f"sketch_precondition {tag}", lambda: sketch_precondition_triton(
        G, U_A, s_A, c, U_B, s_B, c, 1e-8, **kw)))  # fmt: skip
    return calls


def _root_calls(d: int, dtype: torch.dtype, config=None) -> list[Call]:
    """newton_schulz_triton for p = 2 and 4 (two iterations: every launch of the loop occurs)."""
    from tritonkron.ops.inverse_root.triton import newton_schulz_triton

    R = torch.randn(1, d, d)
    A = (R @ R.mT / d + torch.eye(d)).to(dtype)
    return [
        (f"newton_schulz p={p} {dtype} d={d} cfg={config}",
         lambda p=p: newton_schulz_triton(A, p, max_iters=2, tol=0.0, config=config))
        for p in (2, 4)
    ]  # fmt: skip


def launch_calls() -> list[Call]:
    """The heuristic tier (module docstring): config=None everywhere."""
    calls: list[Call] = []
    for m, n in SHAPES:
        for x_dtype in (torch.float32, torch.float64):
            for g_dtype in (*_FLOATS, torch.float64) if x_dtype == torch.float64 else _FLOATS:
                calls += _factor_calls(m, n, x_dtype, g_dtype)
        for dtype in _FLOATS:
            calls += _gemm_calls(m, n, dtype, dtype) + _track_calls(m, n, dtype)
        for dtype in _LOW:
            calls += _gemm_calls(m, n, dtype, torch.float32)
        for dtype in (torch.float32, torch.float64):
            calls += _rotated_statistics_calls(m, n, dtype)
    for m, n in _SMALL:
        calls += _sketch_calls(m, n, torch.float32) + _root_calls(m, torch.float32)
        for dtype in _LOW:
            calls += _root_calls(m, dtype)
    return calls


def precision_calls() -> list[Call]:
    """The precision tier (module docstring): the TF32 and bf16 policies, float32 operands."""
    f32 = torch.float32
    calls: list[Call] = []
    for precision in _POLICIES:
        for m, n in PRECISION_SHAPES:
            calls += _factor_calls(m, n, f32, f32, precision=precision)
            calls += _gemm_calls(m, n, f32, f32, precision=precision)
            calls += _rotated_statistics_calls(m, n, f32, precision)
    return calls


def _configs(fn: Callable[[], list]) -> list[dict[str, int]]:
    """A kernel module's legal ``triton.Config`` list as flat dicts."""
    from tritonkron.ops._triton.common import normalize_config

    return [normalize_config(c) for c in fn()]


def _distinct_tiles(configs: list[dict[str, int]]) -> list[dict[str, int]]:
    """One config per distinct tile shape (the first legal warps/stages for it)."""
    seen, out = set(), []
    for cfg in configs:
        tiles = tuple(sorted((k, v) for k, v in cfg.items() if k not in ("num_warps", "num_stages")))
        if tiles not in seen:
            seen.add(tiles)
            out.append(cfg)
    return out


def space_calls() -> list[Call]:
    """The legal-space tier (module docstring), at :data:`_SPACE_SHAPE`."""
    from tritonkron.ops.factor_update.triton import factor_update_configs
    from tritonkron.ops.inverse_root.triton import newton_schulz_configs
    from tritonkron.ops.precondition.triton import precondition_configs
    from tritonkron.ops.track_eigenvalues.triton import track_eigenvalues_configs

    m, n = _SPACE_SHAPE
    f32 = torch.float32
    # family: (legal configs, calls for (config, dtype), index of the representative call)
    families = {
        "gemm": (_configs(precondition_configs), lambda c, dt: _gemm_calls(m, n, dt, dt, c), 0),
        "factor": (_configs(factor_update_configs), lambda c, dt: _factor_calls(m, n, f32, dt, c), 4),
        "track": (_configs(track_eigenvalues_configs), lambda c, dt: _track_calls(m, n, dt, c), 3),
        "root": (_configs(newton_schulz_configs), lambda c, dt: _root_calls(m, dt, c), 0),
    }
    calls: list[Call] = []
    for configs, make, representative in families.values():
        for cfg in configs:
            calls.append(make(cfg, f32)[representative])
        for cfg in _distinct_tiles(configs):
            for dtype in _FLOATS:
                calls += make(cfg, dtype)
    calls += _factor_calls(m, n, torch.float64, torch.float64)
    return calls


def collect(tiers: tuple[str, ...] = ("launch", "space", "precision")) -> list[Variant]:
    """Record the calls of ``tiers`` and return the unique variants, in first-seen order.

    Raises:
        RuntimeError: when a launcher call fails while recording (its label and the error).
    """
    tier_calls = {"launch": launch_calls, "space": space_calls, "precision": precision_calls}
    plan = [call for tier, make in tier_calls.items() if tier in tiers for call in make()]
    origin = [""]
    with recording(origin) as log:
        for label, call in plan:
            origin[0] = label
            try:
                call()
            except Exception as exc:
                raise RuntimeError(f"recording {label} failed: {exc!r}") from exc
    return list(dict.fromkeys(log))
