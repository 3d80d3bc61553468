"""Blocked symmetric factor update against its float64 reference (CPU: Triton interpreter).

Error metric: relative Frobenius error ‖out − ref‖_F / ‖ref‖_F, with ref = ``factor_update_ref``
evaluated in float64 on the very same (already rounded) inputs. Tolerances are keyed by G's dtype:

| G dtype | tolerance | measured (interpreter, these shapes) | why |
|---|---|---|---|
| float32 | 1e-5 | ≤ 1.8e-7 | fp32 accumulation over k ≤ 64 plus one fp32 GEMM for the weighted forms |
| float16 | 1e-5 | ≤ 1.9e-7 | fp16 → fp32 is exact and fp16 products are exact in fp32, so the only error is the same fp32 accumulation; ``out`` is fp32, so no final fp16 rounding either. A 5e-3 "fp16" tolerance would hide real bugs. |
| bfloat16 | 1e-5 | GPU only (no bf16 in the interpreter) | same argument as fp16 (exact products, fp32 sums); not yet measured on a GPU |
| float64 (fp64 X) | 1e-12 | ≤ 3e-16 | fp64 accumulation; β and s reach the kernel as fp32 (hi, lo) pairs (≈ 2⁻⁴⁸ relative) |

The operands are well conditioned (X = R Rᵀ/d, W symmetric positive definite, w ∈ [0.1, 1.1]),
so ‖ref‖ has no cancellation and the relative error reflects the kernel's rounding only.
"""

from __future__ import annotations

import pytest
import torch
import triton
from torch import Tensor

from tritonkron.ops.factor_update.reference import factor_update_ref
from tritonkron.ops.factor_update.triton import (
    _keep_factor_update,
    factor_update_configs,
    factor_update_triton,
)
from tritonkron.options import triton_interpret

TOL = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float64: 1e-12}
F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

SHAPES = [(37, 53), (5, 3), (1, 1), (64, 7), (7, 64)]  # odd, tiny, tall and wide blocks G: [m, n]
BATCHES = [1, 3]
SIDES = ["left", "right"]
WEIGHTS = ["identity", "eigen", "dense"]
_NO_BF16 = pytest.mark.skipif(
    triton_interpret(), reason="Triton's interpreter has no bf16 arithmetic (triton#4972, #11584)"
)
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16", marks=_NO_BF16),
]
# The heuristic (one tile per block on the interpreter for d ≤ 64) and 32 × 32 tiles, which make
# the shapes above span several tiles: off-diagonal tiles, mirrors and edge masks in both.
CONFIGS = [pytest.param(None, id="heuristic"), pytest.param({"BLOCK_M": 32, "BLOCK_K": 32}, id="tiles32")]


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


def _assert_close(actual: Tensor, expected: Tensor, g_dtype: torch.dtype) -> None:
    """Relative Frobenius error within TOL[g_dtype], with a diagnostic message on failure."""
    nan = int(actual.isnan().sum())
    assert nan == 0, f"{nan} NaN entries in the output: some element was never written"
    diff = actual.to(F64) - expected
    err = (diff.norm() / expected.norm().clamp_min(torch.finfo(F64).tiny)).item()
    if err > TOL[g_dtype]:
        worst = tuple(int(i) for i in torch.unravel_index(diff.abs().argmax(), diff.shape))
        pytest.fail(
            f"relative error {err:.3e} > {TOL[g_dtype]:.0e}; max abs {diff.abs().max().item():.3e} "
            f"at {worst}; {int((diff.abs() > 1e-3 * expected.abs().max()).sum())} entries off by > 1e-3·max"
        )


def _assert_symmetric(out: Tensor) -> None:
    assert torch.equal(out, out.mT), "output is not exactly symmetric"


def _nan(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def _spd(B: int, d: int, g: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    R = torch.randn(B, d, d, generator=g, dtype=F64)
    return (R @ R.mT / d + 0.1 * torch.eye(d, dtype=F64)).to(DEVICE, dtype)


def _weight(kind: str, B: int, k: int, g: torch.Generator, dtype: torch.dtype = torch.float32):
    """(weight for the kernel, the same weight in float64 for the reference)."""
    if kind == "identity":
        return None, None
    if kind == "dense":
        W = _spd(B, k, g, dtype)
        return W, W.to(F64)
    Q = torch.linalg.qr(torch.randn(B, k, k, generator=g, dtype=F64)).Q.to(DEVICE, dtype)
    w = (torch.rand(B, k, generator=g, dtype=F64) + 0.1).to(DEVICE, dtype)
    return (Q, w), (Q.to(F64), w.to(F64))


# ---------------------------------------------------------------------------------------------
# Kernel vs reference.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("weight_kind", WEIGHTS)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_factor_update_matches_reference(
    m: int, n: int, B: int, dtype: torch.dtype, side: str, weight_kind: str, config: dict[str, int] | None
) -> None:
    g = torch.Generator().manual_seed(1000 * m + 10 * n + B)
    d, k = (m, n) if side == "left" else (n, m)
    G = torch.randn(B, m, n, generator=g).to(DEVICE, dtype)  # the dtype under test
    X = _spd(B, d, g)
    weight, weight64 = _weight(weight_kind, B, k, g)
    # Per-block scale tensor [B] for B = 3, a Python float for B = 1: both paths on every shape.
    scale = (torch.rand(B, generator=g) + 0.5).to(DEVICE) if B > 1 else 0.37
    scale64 = scale.to(F64) if isinstance(scale, Tensor) else scale
    out = _nan((B, d, d))

    res = factor_update_triton(X, G, 0.9, scale, side, weight, out=out, config=config)

    assert res is out and res.dtype == torch.float32
    ref = factor_update_ref(X.to(F64), G.to(F64), 0.9, scale64, side, weight64)
    _assert_close(res, ref, dtype)
    _assert_symmetric(res)


@pytest.mark.parametrize("weight_kind", WEIGHTS)
@pytest.mark.parametrize("side", SIDES)
def test_factor_update_float64(side: str, weight_kind: str) -> None:
    g = torch.Generator().manual_seed(7)
    B, m, n = 2, 37, 21
    d, k = (m, n) if side == "left" else (n, m)
    G = torch.randn(B, m, n, generator=g, dtype=F64).to(DEVICE)
    X = _spd(B, d, g, F64)
    weight, weight64 = _weight(weight_kind, B, k, g, F64)
    out = _nan((B, d, d), F64)
    res = factor_update_triton(X, G, 0.95, 0.1 / 3, side, weight, out=out)  # β, s not fp32-exact
    assert res is out
    _assert_close(res, factor_update_ref(X, G, 0.95, 0.1 / 3, side, weight64), F64)
    _assert_symmetric(res)


def test_factor_update_float64_X_with_float16_G() -> None:
    g = torch.Generator().manual_seed(8)
    G = torch.randn(3, 19, 11, generator=g).to(DEVICE, torch.float16)
    X = _spd(3, 11, g, F64)
    res = factor_update_triton(X, G, 0.5, torch.ones(3, device=DEVICE), "right")
    assert res.dtype == F64
    _assert_close(res, factor_update_ref(X, G.to(F64), 0.5, 1.0, "right"), F64)


@pytest.mark.parametrize("weight_kind", WEIGHTS)
def test_factor_update_strided_inputs_and_explicit_configs(weight_kind: str) -> None:
    g = torch.Generator().manual_seed(3)
    B, m, n = 2, 40, 23
    G = torch.randn(B, n, m, generator=g).to(DEVICE).transpose(1, 2)  # non-contiguous [B, m, n]
    X = torch.eye(m, device=DEVICE).expand(B, m, m)  # zero batch stride
    weight, weight64 = _weight(weight_kind, B, n, g)
    if isinstance(weight, tuple):
        Q, w = weight
        weight = (Q.mT.contiguous().mT, torch.stack([w, w], -1)[..., 0])  # strided Q and w views
    scale = torch.rand(B, 2, generator=g).to(DEVICE)[:, 1]  # strided [B]
    ref = factor_update_ref(X.to(F64), G.to(F64), 0.8, scale.to(F64), "left", weight64)
    for config in (
        {"BLOCK_M": 16, "BLOCK_K": 16},
        {"BLOCK_M": 32, "BLOCK_K": 32, "num_warps": 4},
        triton.Config({"BLOCK_M": 64, "BLOCK_K": 16}, num_warps=8, num_stages=2),
    ):
        res = factor_update_triton(X, G, 0.8, scale, "left", weight, out=_nan((B, m, m)), config=config)
        _assert_close(res, ref, torch.float32)
        _assert_symmetric(res)


@pytest.mark.parametrize("weight_kind", WEIGHTS)
def test_factor_update_in_place_equals_out_of_place(weight_kind: str) -> None:
    g = torch.Generator().manual_seed(4)
    B, m, n = 3, 37, 29
    G = torch.randn(B, m, n, generator=g).to(DEVICE)
    X = _spd(B, n, g)
    weight, _ = _weight(weight_kind, B, m, g)
    config = {"BLOCK_M": 16, "BLOCK_K": 16}  # several tiles, so programs could race on X
    expected = factor_update_triton(X, G, 0.9, 0.25, "right", weight, config=config)
    res = factor_update_triton(X, G, 0.9, 0.25, "right", weight, out=X, config=config)
    assert res is X
    assert torch.equal(X, expected)


def test_factor_update_reads_only_the_upper_triangle_of_X() -> None:
    g = torch.Generator().manual_seed(5)
    B, m, n = 2, 33, 9
    G = torch.randn(B, m, n, generator=g).to(DEVICE)
    X = _spd(B, m, g)
    poisoned = X.clone()
    lower = torch.ones(m, m, dtype=torch.bool, device=DEVICE).tril(-1)
    poisoned[:, lower] = float("nan")
    res = factor_update_triton(poisoned, G, 0.9, 1.0, "left", out=_nan((B, m, m)), config={"BLOCK_M": 16})
    _assert_close(res, factor_update_ref(X.to(F64), G.to(F64), 0.9, 1.0, "left"), torch.float32)
    _assert_symmetric(res)


def test_factor_update_general_weights_match_reference() -> None:
    """Negative eigen-weights (no √w anywhere) and a non-symmetric dense W (used as ½(W + Wᵀ))."""
    g = torch.Generator().manual_seed(6)
    B, m, n = 2, 21, 17
    G = torch.randn(B, m, n, generator=g).to(DEVICE)
    X = _spd(B, m, g)
    Q = torch.linalg.qr(torch.randn(B, n, n, generator=g, dtype=F64)).Q.float().to(DEVICE)
    w = torch.randn(B, n, generator=g).to(DEVICE)
    W = torch.randn(B, n, n, generator=g).to(DEVICE)
    for weight, weight64 in (((Q, w), (Q.to(F64), w.to(F64))), (W, W.to(F64))):
        res = factor_update_triton(X, G, 1.0, 0.5, "left", weight)
        _assert_close(res, factor_update_ref(X.to(F64), G.to(F64), 1.0, 0.5, "left", weight64), torch.float32)
        _assert_symmetric(res)


def test_factor_update_empty_inner_dimension_is_beta_X() -> None:
    X = _spd(2, 5, torch.Generator().manual_seed(9))
    res = factor_update_triton(X, torch.empty(2, 5, 0, device=DEVICE), 0.5, 1.0, "left")
    assert torch.equal(res, 0.5 * X)


def test_config_space_is_legal() -> None:
    cfgs = factor_update_configs()
    assert cfgs
    assert all(
        _keep_factor_update({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}) for c in cfgs
    )
    assert not _keep_factor_update({"BLOCK_M": 24, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1})
    assert not _keep_factor_update({"BLOCK_M": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4})


# ---------------------------------------------------------------------------------------------
# Bad inputs.
# ---------------------------------------------------------------------------------------------


def _args() -> dict[str, object]:
    B, m, n = 2, 4, 3
    return {
        "X": torch.eye(m).expand(B, m, m).contiguous(),
        "G": torch.randn(B, m, n),
        "beta": 0.9,
        "scale": 0.1,
        "side": "left",
    }


_X = torch.zeros(2, 4, 4)
_X_BUF = torch.zeros(36)
_X_IN_BUF = _X_BUF[:32].view(2, 4, 4)  # X and an out shifted by one row
_BUF = torch.zeros(40)
_G_IN_BUF = _BUF[8:32].view(2, 4, 3)  # G and an out that share bytes

ERROR_CASES = [
    ({"side": "middle"}, "side must be 'left' or 'right'"),
    ({"side": "right"}, r"X must have shape \[2, 3, 3\]"),
    ({"G": torch.randn(4, 3)}, "G must be 3-D"),
    ({"G": [[1.0]]}, "G must be a torch.Tensor"),
    ({"G": torch.randn(2, 4, 3, dtype=F64)}, "G is float64 but X is float32"),
    ({"X": torch.zeros(2, 4, 4, dtype=torch.float16)}, "X must be float32 or float64"),
    ({"X": torch.zeros(3, 4, 4)}, "X must have shape"),
    ({"beta": torch.tensor(0.9)}, "beta must be a Python float"),
    ({"scale": torch.ones(3)}, "scale must be a float or a tensor with B = 2 elements"),
    ({"scale": "0.1"}, "scale must be a Python float"),
    ({"weight": torch.eye(4).expand(2, 4, 4)}, r"weight must have shape \[2, 3, 3\]"),
    ({"weight": (torch.eye(3).expand(2, 3, 3), torch.ones(2, 4))}, r"weight\[1\] \(w\) must have shape"),
    ({"weight": (torch.eye(3).expand(1, 3, 3), torch.ones(2, 3))}, r"weight\[0\] \(Q\) must have shape"),
    ({"weight": [torch.eye(3), torch.ones(3)]}, "weight must be None"),
    ({"out": torch.zeros(2, 4, 4, dtype=F64)}, "out must be float32"),
    ({"out": torch.zeros(1, 4, 4).expand(2, 4, 4)}, "out must not have zero strides"),
    ({"X": _X, "out": _X.mT}, "must not partially overlap"),
    ({"X": _X_IN_BUF, "out": _X_BUF[4:].view(2, 4, 4)}, "must not partially overlap"),
    ({"G": _G_IN_BUF, "out": _BUF[:32].view(2, 4, 4)}, "out must not share memory with G"),
    ({"config": {"BLOCK_N": 16}}, "config has unknown keys"),
    ({"config": {"BLOCK_M": 24}}, "config is not a legal"),
    ({"config": 32}, "config must be a dict or triton.Config"),
]


@pytest.mark.parametrize(("override", "match"), ERROR_CASES, ids=[c[1][:40] for c in ERROR_CASES])
def test_factor_update_rejects_bad_inputs(override: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factor_update_triton(**{**_args(), **override})
