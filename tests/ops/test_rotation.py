"""Rotation kernels (Q_Aᵀ X Q_B and Q_A X̂ Q_Bᵀ) against their float64 references (CPU: Triton interpreter).

Error metric and tolerances as in test_precondition.py: relative Frobenius error against float64
from the same rounded inputs; fp32 output 1e-5 (two chained fp32 GEMMs of size ≤ 53: measured
≤ 3e-7), fp16 output 2e-3 (final rounding), bf16 GPU only. The shared-product statistics kernel is
checked in fp32 and fp64.
"""

from __future__ import annotations

import pytest
import torch

from tests.ops.test_precondition import DEVICE, DTYPES, F64, _assert_close, _nan, _orthogonal
from tritonkron.ops.rotated_statistics import rotated_statistics
from tritonkron.ops.rotated_statistics.reference import rotated_statistics_ref
from tritonkron.ops.rotated_statistics.triton import rotated_statistics_triton
from tritonkron.ops.rotation import rotate_back
from tritonkron.ops.rotation.reference import rotate_back_ref, rotate_ref
from tritonkron.ops.rotation.triton import rotate_triton


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize(("m", "n"), [(37, 53), (5, 3), (1, 1)])
@pytest.mark.parametrize("back", [False, True])
def test_rotation_matches_reference(m: int, n: int, B: int, dtype: torch.dtype, back: bool) -> None:
    g = torch.Generator().manual_seed(m * 100 + n + B + 7 * back)
    X = torch.randn(B, m, n, generator=g).to(DEVICE, dtype)
    Q_A, Q_B = _orthogonal(B, m, g), _orthogonal(B, n, g)
    out = _nan((B, m, n), dtype)
    reference = rotate_back_ref if back else rotate_ref
    got = rotate_triton(X, Q_A, Q_B, back=back, out=out)
    assert got is out and got.dtype == dtype
    _assert_close(got, reference(*(x.to(F64) for x in (X, Q_A, Q_B))), dtype)


def test_rotation_round_trip_non_contiguous_and_custom_op() -> None:
    g = torch.Generator().manual_seed(5)
    B, m, n = 2, 19, 33
    X = torch.randn(B, n, m, generator=g).to(DEVICE).transpose(1, 2)  # strided view [B, m, n]
    Q_A, Q_B = _orthogonal(B, m, g).transpose(1, 2), _orthogonal(B, n, g)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}
    X_hat = rotate_triton(X, Q_A, Q_B, config=cfg)
    _assert_close(X_hat, rotate_ref(*(x.to(F64) for x in (X, Q_A, Q_B))), torch.float32)
    back = rotate_back(X_hat, Q_A, Q_B, backend="triton")  # through the tritonkron::rotate custom op
    _assert_close(back, X.to(F64), torch.float32)


def test_rotation_rejects_bad_operands() -> None:
    X = torch.zeros(2, 4, 3, device=DEVICE)
    with pytest.raises(ValueError, match="Q_A must have shape"):
        rotate_triton(X, torch.zeros(2, 3, 3, device=DEVICE), torch.zeros(2, 3, 3, device=DEVICE))
    with pytest.raises(ValueError, match="Q_B must be 3-D"):
        rotate_triton(X, torch.zeros(2, 4, 4, device=DEVICE), torch.zeros(3, 3, device=DEVICE), back=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("m", "n"), [(21, 13), (9, 26)])
@pytest.mark.parametrize("weights", ["both", "none", "left only"])
def test_rotated_statistics_triton_matches_reference(
    m: int, n: int, weights: str, dtype: torch.dtype
) -> None:
    """The shared-product kernel (rotated_statistics, Triton path) against float64, both
    branches of Ĝ (m ≥ n: R Q_B; m < n: Q_Aᵀ P), weighted and W = I factors; fp32 tolerance 1e-5,
    fp64 1e-12 (measured ≤ 1.3e-7 and ≤ 5e-16)."""
    g = torch.Generator().manual_seed(m + 2 * n + len(weights))
    B = 2
    A = torch.randn(B, m, m, generator=g, dtype=F64)
    B_ = torch.randn(B, n, n, generator=g, dtype=F64)
    A, B_ = (A + A.transpose(1, 2)).to(DEVICE, dtype), (B_ + B_.transpose(1, 2)).to(DEVICE, dtype)
    G = torch.randn(B, m, n, generator=g, dtype=F64).to(DEVICE, dtype)
    # Orthogonal to float64 rounding: for W = I the kernel uses Q Qᵀ = I.
    Q_A, Q_B = (
        torch.linalg.qr(torch.randn(B, d, d, generator=g, dtype=F64)).Q.to(DEVICE, dtype) for d in (m, n)
    )
    w_A = torch.rand(B, m, generator=g, dtype=F64).to(DEVICE, dtype) if weights == "both" else None
    w_B = torch.rand(B, n, generator=g, dtype=F64).to(DEVICE, dtype) if weights != "none" else None
    s_A, s_B = (torch.rand(B, generator=g, dtype=F64).to(DEVICE, dtype) for _ in range(2))
    got = rotated_statistics(A, B_, G, Q_A, Q_B, w_A, s_A, w_B, s_B, 0.9, backend="triton")
    f64 = [None if t is None else t.to(F64) for t in (A, B_, G, Q_A, Q_B, w_A, s_A, w_B, s_B)]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for out, ref in zip(got, rotated_statistics_ref(*f64, 0.9), strict=True):
        assert out.dtype == dtype
        err = (out.to(F64) - ref).norm() / ref.norm()
        assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"
    assert torch.equal(got[0], got[0].transpose(1, 2)) and torch.equal(got[1], got[1].transpose(1, 2))


def test_rotated_statistics_rejects_bad_operands() -> None:
    B, m, n = 2, 4, 3
    z = {"device": DEVICE}
    args = [torch.zeros(B, m, m, **z), torch.zeros(B, n, n, **z), torch.zeros(B, m, n, **z),
            torch.zeros(B, m, m, **z), torch.zeros(B, n, n, **z), None, torch.ones(B, **z), None,
            torch.ones(B, **z), 0.9]  # fmt: skip
    bad_q = list(args)
    bad_q[3] = torch.zeros(B, n, n, **z)
    with pytest.raises(ValueError, match="Q_A must have shape"):
        rotated_statistics_triton(*bad_q)
    bad_w = list(args)
    bad_w[5] = torch.zeros(B, n, **z)
    with pytest.raises(ValueError, match="w_A must have shape"):
        rotated_statistics_triton(*bad_w)
    bad_s = list(args)
    bad_s[8] = torch.ones(B + 1, **z)
    with pytest.raises(ValueError, match="s_B must be a tensor with B = 2 elements"):
        rotated_statistics_triton(*bad_s)
