"""Sketch kernels (``tritonkron.ops.sketch.triton``) against their float64 references (CPU: interpreter).

Error metric: relative Frobenius error ‖out − ref‖_F / ‖ref‖_F with ref computed in float64 from
the same (already rounded) inputs. Every launch accumulates in fp32 and low-precision inputs
convert to fp32 exactly, so the tolerance is keyed by the *output* dtype:

| output dtype | tolerance | measured (interpreter, these shapes) |
|---|---|---|
| float32 | 1e-5 | ≤ 3e-7: fp32 accumulation over ≤ 5 chained thin GEMMs of inner size ≤ 53 |
| float16 | 2e-3 | ≤ 3e-4: the final rounding to fp16 (unit roundoff 2^-11) |

The whole sketch update (``sketch_update_triton``: kernels + torch QR + float64 eigh) is compared
through the reconstructed factor X̃ = U diag(λ) Uᵀ + τ (I − U Uᵀ), which does not depend on the
sign or the order of degenerate eigenvectors: tolerance 1e-5 (fp32 state; measured ≤ 5e-7).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tritonkron.ops.sketch.reference import (
    increment_apply_ref,
    increment_rayleigh_ref,
    increment_trace_ref,
    reconstruct,
    sketch_precondition_ref,
    sketch_track_ref,
    sketch_update_ref,
)
from tritonkron.ops.sketch.triton import (
    increment_apply_triton,
    increment_rayleigh_triton,
    increment_trace_triton,
    sketch_precondition_triton,
    sketch_track_triton,
    sketch_update_triton,
)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(37, 53), (5, 3)]
BATCHES = [1, 3]
DTYPES = [torch.float32, torch.float16]


def _assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    assert not actual.isnan().any(), "output has NaN: some element was never written"
    err = ((actual.to(F64) - expected).norm() / expected.norm().clamp_min(1e-300)).item()
    assert err <= TOL[dtype], f"relative error {err:.3e} > {TOL[dtype]:.0e}"


def _nan(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def _orthogonal(batch: int, d: int, k: int, g: torch.Generator) -> Tensor:
    return torch.linalg.qr(torch.randn(batch, d, d, generator=g, dtype=F64)).Q[..., :k].float().to(DEVICE)


def _rand(*shape: int, g: torch.Generator, lo: float = 0.0) -> Tensor:
    return (torch.rand(*shape, generator=g) + lo).to(DEVICE)


def _weight(B: int, e: int, ell: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _orthogonal(B, e, ell, g), _rand(B, ell, g=g, lo=0.1), _rand(B, g=g, lo=0.1), _rand(B, g=g)


def _f64(*tensors: Tensor) -> list[Tensor]:
    return [t.to(F64) for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize(("m", "n"), SHAPES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_increment_apply_and_rayleigh_match_reference(
    side: str, m: int, n: int, B: int, dtype: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(m * 100 + n + B)
    d, e = (m, n) if side == "left" else (n, m)
    G = torch.randn(B, m, n, generator=g).to(DEVICE, dtype)
    X = torch.randn(B, d, 6, generator=g).to(DEVICE, dtype)
    V, w, w_tau, scale = _weight(B, e, min(e, 4), g)
    out = _nan((B, d, 6), dtype)
    KX = increment_apply_triton(G, X, V, w, w_tau, scale, side, out=out)
    assert KX is out and KX.dtype == dtype
    _assert_close(KX, increment_apply_ref(*_f64(G, X, V, w, w_tau, scale), side), dtype)
    out = _nan((B, 6, 6), dtype)
    H = increment_rayleigh_triton(G, X, V, w, w_tau, scale, side, out=out)
    assert H is out and torch.equal(H, H.transpose(1, 2))
    _assert_close(H, increment_rayleigh_ref(*_f64(G, X, V, w, w_tau, scale), side), dtype)
    tr = increment_trace_triton(G, V, w, w_tau, scale, side)
    _assert_close(tr, increment_trace_ref(*_f64(G, V, w, w_tau, scale), side), torch.float32)


def test_identity_weight_and_one_by_one_blocks() -> None:
    """von Neumann's W = I is an empty V; 1 × 1 blocks exercise every mask."""
    g = torch.Generator().manual_seed(1)
    for B, m, n in ((2, 9, 4), (3, 1, 1)):
        G = torch.randn(B, m, n, generator=g).to(DEVICE)
        X = torch.randn(B, m, 2, generator=g).to(DEVICE)
        V, w = torch.empty(B, n, 0, device=DEVICE), torch.empty(B, 0, device=DEVICE)
        ones, scale = torch.ones(B, device=DEVICE), _rand(B, g=g)
        expected = scale.double().reshape(-1, 1, 1) * G.double() @ G.double().transpose(1, 2) @ X.double()
        _assert_close(increment_apply_triton(G, X, V, w, ones, scale, "left"), expected, torch.float32)
        trace = scale.double() * G.double().square().sum((1, 2))
        _assert_close(increment_trace_triton(G, V, w, ones, scale, "left"), trace, torch.float32)


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize(("side", "ell"), [("left", 5), ("right", 4), ("left", 37)])
def test_sketch_update_matches_reference(side: str, ell: int, B: int) -> None:
    g = torch.Generator().manual_seed(ell * 10 + B)
    m, n = 37, 21
    d, e = (m, n) if side == "left" else (n, m)
    ell = min(ell, d)
    G = torch.randn(B, m, n, generator=g).to(DEVICE)
    U = _orthogonal(B, d, ell, g)
    lam = _rand(B, ell, g=g, lo=1.0).sort(-1, descending=True).values
    tau = _rand(B, g=g) * 0.5 if ell < d else torch.zeros(B, device=DEVICE)
    V, w, w_tau, scale = _weight(B, e, 3, g)
    got = sketch_update_triton(U, lam, tau, G, V, w, w_tau, scale, 0.9, side)
    ref = sketch_update_ref(*_f64(U, lam, tau, G, V, w, w_tau, scale), 0.9, side)
    assert [t.dtype for t in got] == [torch.float32] * 3 and got[0].shape == U.shape
    _assert_close(reconstruct(*_f64(*got)), reconstruct(*ref), torch.float32)


@pytest.mark.parametrize(("side", "ell"), [("left", 5), ("right", 21)])
def test_sketch_track_and_update_from_a_compression_match_reference(side: str, ell: int) -> None:
    """The tracking in a fixed basis, and the Rayleigh–Ritz step from a non-diagonal compression H."""
    g = torch.Generator().manual_seed(ell)
    m, n, B = 37, 21, 2
    d, e = (m, n) if side == "left" else (n, m)
    G = torch.randn(B, m, n, generator=g).to(DEVICE)
    U = _orthogonal(B, d, ell, g)
    R = _orthogonal(B, ell, ell, g)
    H = (R * _rand(B, ell, g=g, lo=1.0).unsqueeze(-2)) @ R.transpose(1, 2)
    tau = _rand(B, g=g) * 0.5 if ell < d else torch.zeros(B, device=DEVICE)
    V, w, w_tau, scale = _weight(B, e, 3, g)
    H2, tau2 = sketch_track_triton(U, H, tau, G, V, w, w_tau, scale, 0.9, side)
    H_ref, tau_ref = sketch_track_ref(*_f64(U, H, tau, G, V, w, w_tau, scale), 0.9, side)
    assert H2.dtype == tau2.dtype == torch.float32
    _assert_close(reconstruct(*_f64(U, H2, tau2)), reconstruct(U.double(), H_ref, tau_ref), torch.float32)
    got = sketch_update_triton(U, H, tau, G, V, w, w_tau, scale, 0.9, side)
    ref = sketch_update_ref(*_f64(U, H, tau, G, V, w, w_tau, scale), 0.9, side)
    _assert_close(reconstruct(*_f64(*got)), reconstruct(*ref), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize(("m", "n", "k_A", "k_B"), [(37, 53, 4, 3), (5, 3, 5, 1), (1, 1, 1, 1)])
def test_sketch_precondition_matches_reference(
    m: int, n: int, k_A: int, k_B: int, B: int, dtype: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(m + n + B)
    M = torch.randn(B, m, n, generator=g).to(DEVICE, dtype)
    U_A, U_B = _orthogonal(B, m, k_A, g), _orthogonal(B, n, k_B, g)
    s_A, s_B = _rand(B, k_A, g=g, lo=0.5) * 3, _rand(B, k_B, g=g, lo=0.5) * 3
    c_A, c_B = _rand(B, g=g, lo=0.1), _rand(B, 1, g=g, lo=0.1)
    out = _nan((B, m, n), dtype)
    U = sketch_precondition_triton(M, U_A, s_A, c_A, U_B, s_B, c_B, 0.05, out=out)
    assert U is out and U.dtype == dtype
    _assert_close(U, sketch_precondition_ref(*_f64(M, U_A, s_A, c_A, U_B, s_B, c_B), 0.05), dtype)


def test_strided_inputs_and_explicit_config() -> None:
    g = torch.Generator().manual_seed(7)
    B, m, n = 2, 19, 33
    M = torch.randn(B, n, m, generator=g).to(DEVICE).transpose(1, 2)  # a strided view [B, m, n]
    U_A, U_B = _orthogonal(B, m, 3, g), _orthogonal(B, n, 2, g)
    s_A, s_B, c_A, c_B = _rand(B, 3, g=g, lo=1), _rand(B, 2, g=g, lo=1), _rand(B, g=g), _rand(B, g=g)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}
    got = sketch_precondition_triton(M, U_A, s_A, c_A, U_B, s_B, c_B, 0.0, config=cfg)
    _assert_close(got, sketch_precondition_ref(*_f64(M, U_A, s_A, c_A, U_B, s_B, c_B), 0.0), torch.float32)
    V, w, w_tau, scale = _weight(B, m, 2, g)
    KX = increment_apply_triton(M, U_B, V, w, w_tau, scale, "right", config=cfg)
    _assert_close(KX, increment_apply_ref(*_f64(M, U_B, V, w, w_tau, scale), "right"), torch.float32)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda G, X, V, w, s: increment_apply_triton(G, X, V, w, s, s, "up"), "side"),
        (lambda G, X, V, w, s: increment_apply_triton(G, X[:, :3], V, w, s, s, "left"), "X"),
        (lambda G, X, V, w, s: increment_apply_triton(G, X, V[:, :2], w, s, s, "left"), "V"),
        (lambda G, X, V, w, s: increment_rayleigh_triton(G, X, V, w[:, :1], s, s, "left"), "w"),
        (lambda G, X, V, w, s: increment_trace_triton(G, V, w, s[:1], s, "left"), "w_tau"),
        (lambda G, X, V, w, s: increment_apply_triton(G.double(), X, V, w, s, s, "left"), "G"),
        (lambda G, X, V, w, s: sketch_update_triton(X[..., :2], w, s, G, V, w, s, s, 1.5, "left"), "beta"),
        (lambda G, X, V, w, s: sketch_precondition_triton(G, X, w, s, V, w, s, -1.0), "eps"),
    ],
)
def test_bad_arguments_name_the_parameter(call, match: str) -> None:  # noqa: ANN001
    G, X = torch.randn(2, 4, 3, device=DEVICE), torch.randn(2, 4, 2, device=DEVICE)
    V, w, s = (
        torch.randn(2, 3, 2, device=DEVICE),
        torch.rand(2, 2, device=DEVICE),
        torch.rand(2, device=DEVICE),
    )
    with pytest.raises(ValueError, match=match):
        call(G, X, V, w, s)
