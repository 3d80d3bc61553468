"""Preconditioning kernels against their float64 references (CPU: Triton interpreter).

Error metric: relative Frobenius error ‖out − ref‖_F / ‖ref‖_F, with ref computed in float64 from
the very same (already rounded) inputs. Tolerances are keyed by the *output* dtype, because every
kernel accumulates in fp32 and low-precision inputs convert to fp32 exactly:

| output dtype | tolerance | measured (interpreter, these shapes) |
|---|---|---|
| float32 | 1e-5 | ≤ 3e-7: fp32 accumulation over ≤ 4 chained GEMMs of size ≤ 53 |
| float16 | 2e-3 | ≤ 4e-4: dominated by the final rounding to fp16 (unit roundoff 2^-11) |
| bfloat16 | 1e-2 | GPU only (interpreter has no bf16); final rounding to bf16 (unit roundoff 2^-8) |
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tritonkron.math.divergences import Coupling
from tritonkron.ops._triton.bmm import keep_bmm_config
from tritonkron.ops.precondition.reference import eigenbasis_precondition_ref, spike_and_flat_apply
from tritonkron.ops.precondition.triton import (
    eigenbasis_precondition_triton,
    precondition_configs,
    spike_and_flat_triton,
)
from tritonkron.ops.track_eigenvalues.reference import track_eigenvalues_ref as track_eigenvalues
from tritonkron.ops.track_eigenvalues.triton import (
    _keep_track_eigenvalues,
    track_eigenvalues_configs,
    track_eigenvalues_triton,
)
from tritonkron.options import triton_interpret

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

SHAPES = [(37, 53), (5, 3), (1, 1)]
BATCHES = [1, 3]
_NO_BF16 = pytest.mark.skipif(
    triton_interpret(), reason="Triton's interpreter has no bf16 arithmetic (triton#4972, #11584)"
)
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=_NO_BF16)]


def _rel_err(actual: Tensor, expected: Tensor) -> float:
    assert not actual.isnan().any(), "output has NaN: some element was never written"
    diff = (actual.to(F64) - expected).norm()
    return (diff / expected.norm().clamp_min(torch.finfo(F64).tiny)).item()


def _assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    err = _rel_err(actual, expected)
    max_abs = (actual.to(F64) - expected).abs().max().item()
    assert err <= TOL[dtype], f"relative error {err:.3e} > {TOL[dtype]:.0e} (max abs {max_abs:.3e})"


def _nan(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def _orthogonal(batch: int, d: int, g: torch.Generator) -> Tensor:
    return torch.linalg.qr(torch.randn(batch, d, d, generator=g, dtype=F64)).Q.float().to(DEVICE)


def _rand(*shape: int, g: torch.Generator, lo: float = 0.0) -> Tensor:
    return (torch.rand(*shape, generator=g) + lo).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_eigenbasis_precondition_matches_reference(m: int, n: int, B: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(m * 100 + n + B)
    M = torch.randn(B, m, n, generator=g).to(DEVICE, dtype)  # the dtype under test
    Q_A, Q_B = _orthogonal(B, m, g), _orthogonal(B, n, g)  # bases stay fp32 (as in the optimizer)
    s_A, s_B = _rand(B, m, g=g, lo=0.1), _rand(B, n, g=g, lo=0.1) * 10
    out = _nan((B, m, n), dtype)
    U = eigenbasis_precondition_triton(M, Q_A, Q_B, s_A, s_B, 0.05, out=out)
    assert U is out and U.dtype == dtype
    ref = eigenbasis_precondition_ref(*(x.to(F64) for x in (M, Q_A, Q_B, s_A, s_B)), 0.05)
    _assert_close(U, ref, dtype)


def test_eigenbasis_precondition_non_contiguous_in_place_and_explicit_config() -> None:
    g = torch.Generator().manual_seed(1)
    B, m, n = 2, 19, 33
    M = torch.randn(B, n, m, generator=g).to(DEVICE).transpose(1, 2)  # strided view [B, m, n]
    Q_A = _orthogonal(B, m, g).transpose(1, 2)  # also a view (Q_Aᵀ is orthogonal too)
    Q_B = _orthogonal(B, n, g)
    s_A, s_B = _rand(B, 2 * m, g=g, lo=0.1)[:, ::2], _rand(B, n, g=g, lo=0.1)
    ref = eigenbasis_precondition_ref(*(x.to(F64) for x in (M, Q_A, Q_B, s_A, s_B)), 1e-3)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}
    _assert_close(eigenbasis_precondition_triton(M, Q_A, Q_B, s_A, s_B, 1e-3, config=cfg), ref, M.dtype)
    U = eigenbasis_precondition_triton(M, Q_A, Q_B, s_A, s_B, 1e-3, out=M, config=precondition_configs()[0])
    assert U is M
    _assert_close(U, ref, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize(("d", "n"), SHAPES)
def test_spike_and_flat_matches_reference(d: int, n: int, B: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(d * 100 + n + B)
    k = max(1, d // 3)
    U_k = _orthogonal(B, d, g)[..., :k].to(dtype)  # all-low-precision case: exercises tl.dot in dtype
    top_scales, c = _rand(B, k, g=g, lo=1.0), _rand(B, 1, g=g, lo=0.1)
    Y = torch.randn(B, d, n, generator=g).to(DEVICE, dtype)
    out = _nan((B, d, n), dtype)
    PY = spike_and_flat_triton(U_k, top_scales, c, Y, out=out)
    assert PY is out
    ref = spike_and_flat_apply(*(x.to(F64) for x in (U_k, top_scales, c, Y)))
    _assert_close(PY, ref, dtype)


def test_spike_and_flat_edge_ranks_and_in_place() -> None:
    g = torch.Generator().manual_seed(2)
    B, d, n = 3, 21, 10
    Y = torch.randn(B, d, n, generator=g).to(DEVICE)
    c = _rand(B, 1, g=g, lo=0.1)
    # k = 0: only the flat part c·Y.
    U_0 = torch.empty(B, d, 0, device=DEVICE)
    _assert_close(spike_and_flat_triton(U_0, U_0[:, 0, :], c.reshape(B), Y), c.unsqueeze(-1).double() * Y.double(),
                  torch.float32)  # fmt: skip
    # k = d with mixed dtypes (fp32 basis, fp16 Y), written in place into Y.
    U_k = _orthogonal(B, d, g)
    top = _rand(B, d, g=g, lo=1.0)
    Y16 = Y.half()
    ref = spike_and_flat_apply(*(x.to(F64) for x in (U_k, top, c, Y16)))
    assert spike_and_flat_triton(U_k, top, c, Y16, out=Y16) is Y16
    _assert_close(Y16, ref, torch.float16)


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "identity"])
@pytest.mark.parametrize("g_dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_track_eigenvalues_matches_reference(
    m: int, n: int, B: int, g_dtype: torch.dtype, weighted: bool
) -> None:
    g = torch.Generator().manual_seed(m * 100 + n + B)
    G_hat = torch.randn(B, m, n, generator=g).to(DEVICE, g_dtype)
    a, b = _rand(B, m, g=g, lo=0.1), _rand(B, n, g=g, lo=0.1)
    w_B = _rand(B, n, g=g, lo=0.1) if weighted else None
    w_A = _rand(B, m, g=g, lo=0.1) if weighted else None
    s_A, s_B = _rand(B, g=g), _rand(B, g=g)
    out = (_nan((B, m), torch.float32), _nan((B, n), torch.float32))
    a_new, b_new = track_eigenvalues_triton(a, b, G_hat, w_B, s_A, w_A, s_B, 0.9, out=out)
    assert a_new is out[0] and b_new is out[1]

    def f64(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(F64)

    ref_a, ref_b = track_eigenvalues(
        f64(a), f64(b), f64(G_hat), Coupling(f64(w_B), f64(s_A), f64(w_A), f64(s_B)), 0.9
    )
    _assert_close(a_new, ref_a, torch.float32)  # fp16 Ĝ converts exactly; outputs are fp32
    _assert_close(b_new, ref_b, torch.float32)


def test_track_eigenvalues_strided_in_place_float_scales() -> None:
    g = torch.Generator().manual_seed(3)
    B, m, n = 2, 40, 23
    G_hat = torch.randn(B, n, m, generator=g).to(DEVICE).transpose(1, 2)
    a, b = _rand(B, m, g=g, lo=0.1), _rand(B, n, g=g, lo=0.1)
    w_B = _rand(B, 2 * n, g=g)[:, 1::2]
    ones = torch.ones(B, dtype=F64)
    ref = track_eigenvalues(
        a.to(F64), b.to(F64), G_hat.to(F64), Coupling(w_B.to(F64), ones / n, None, ones / m), 0.5
    )
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16}
    a_new, b_new = track_eigenvalues_triton(a, b, G_hat, w_B, 1 / n, None, 1 / m, 0.5, out=(a, b), config=cfg)
    assert a_new is a and b_new is b
    _assert_close(a, ref[0], torch.float32)
    _assert_close(b, ref[1], torch.float32)


def test_config_spaces_are_legal() -> None:
    cfgs = precondition_configs()
    assert cfgs and all(keep_bmm_config({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages})
                        for c in cfgs)  # fmt: skip
    tcfgs = track_eigenvalues_configs()
    assert tcfgs and all(
        _keep_track_eigenvalues({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages})
        for c in tcfgs
    )


def _eig_args(B: int = 2, m: int = 4, n: int = 3) -> dict[str, object]:
    return {
        "M": torch.randn(B, m, n),
        "Q_A": torch.eye(m).expand(B, m, m),
        "Q_B": torch.eye(n).expand(B, n, n),
        "s_A": torch.ones(B, m),
        "s_B": torch.ones(B, n),
        "eps": 0.0,
    }


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"M": torch.randn(4, 3)}, "M must be 3-D"),
        ({"M": torch.randn(2, 4, 3, dtype=F64)}, "M must be float32"),
        ({"Q_A": torch.eye(3).expand(2, 3, 3)}, "Q_A must have shape"),
        ({"Q_B": torch.eye(3).expand(1, 3, 3)}, "Q_B must have shape"),
        ({"s_A": torch.ones(2, 3)}, "s_A must have shape"),
        ({"s_B": [1.0, 2.0]}, "s_B must be a torch.Tensor"),
        ({"eps": -1.0}, "eps must lie in"),
        ({"out": torch.empty(2, 3, 4)}, "out must have shape"),
        ({"config": {"BLOCK_Q": 16}}, "config has unknown keys"),
        ({"config": {"BLOCK_M": 24}}, "config is not a legal"),
    ],
)
def test_eigenbasis_precondition_rejects_bad_inputs(override: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        eigenbasis_precondition_triton(**{**_eig_args(), **override})


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"U_k": torch.randn(2, 5, 2)}, "U_k must have shape"),
        ({"top_scales": torch.ones(2, 3)}, "top_scales must have shape"),
        ({"c": torch.ones(3, 1)}, "c must have shape"),
        ({"Y": torch.randn(2, 6, 4, dtype=F64)}, "Y must be float32"),
    ],
)
def test_spike_and_flat_rejects_bad_inputs(override: dict[str, object], match: str) -> None:
    args = {
        "U_k": torch.randn(2, 6, 2),
        "top_scales": torch.ones(2, 2),
        "c": torch.ones(2, 1),
        "Y": torch.randn(2, 6, 4),
    }
    with pytest.raises(ValueError, match=match):
        spike_and_flat_triton(**{**args, **override})


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"beta": 1.5}, "beta must lie in"),
        ({"a": torch.ones(2, 3)}, "a must have shape"),
        ({"left_weight": torch.ones(2, 4)}, "left_weight must have shape"),
        ({"right_scale": torch.ones(3)}, "right_scale must have shape"),
        ({"G_hat": torch.ones(2, 4, 3, dtype=torch.int32)}, "G_hat must be float32"),
    ],
)
def test_track_eigenvalues_rejects_bad_inputs(override: dict[str, object], match: str) -> None:
    args = {
        "a": torch.ones(2, 4),
        "b": torch.ones(2, 3),
        "G_hat": torch.randn(2, 4, 3),
        "left_weight": None,
        "left_scale": torch.ones(2),
        "right_weight": None,
        "right_scale": torch.ones(2),
        "beta": 0.9,
    }
    with pytest.raises(ValueError, match=match):
        track_eigenvalues_triton(**{**args, **override})
