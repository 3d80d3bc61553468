"""Rotation kernels (Q_Aᵀ X Q_B and Q_A X̂ Q_Bᵀ) against their float64 references (CPU: Triton interpreter).

Error metric and tolerances as in test_precondition.py: relative Frobenius error against float64
from the same rounded inputs; fp32 output 1e-5 (two chained fp32 GEMMs of size ≤ 53: measured
≤ 3e-7), fp16 output 2e-3 (final rounding), bf16 GPU only.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_precondition import DEVICE, DTYPES, F64, _assert_close, _nan, _orthogonal
from tritonkron import ops
from tritonkron.kernels.rotation import rotate_triton
from tritonkron.reference.rotation import rotate_back_ref, rotate_ref, rotated_statistics_ref


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
    back = ops.rotate_back(X_hat, Q_A, Q_B, backend="triton")  # through the tritonkron::rotate custom op
    _assert_close(back, X.to(F64), torch.float32)


def test_rotation_rejects_bad_operands() -> None:
    X = torch.zeros(2, 4, 3, device=DEVICE)
    with pytest.raises(ValueError, match="Q_A must have shape"):
        rotate_triton(X, torch.zeros(2, 3, 3, device=DEVICE), torch.zeros(2, 3, 3, device=DEVICE))
    with pytest.raises(ValueError, match="Q_B must be 3-D"):
        rotate_triton(X, torch.zeros(2, 4, 4, device=DEVICE), torch.zeros(3, 3, device=DEVICE), back=True)


@pytest.mark.parametrize("identity", [False, True])
def test_rotated_statistics_triton_path_matches_reference(identity: bool) -> None:
    """ops.rotated_statistics on the Triton path (factor-update kernels + rotate) against float64."""
    g = torch.Generator().manual_seed(9 + identity)
    B, m, n = 2, 21, 13
    A = torch.randn(B, m, m, generator=g)
    B_ = torch.randn(B, n, n, generator=g)
    A, B_ = (A + A.transpose(1, 2)).to(DEVICE), (B_ + B_.transpose(1, 2)).to(DEVICE)
    G = torch.randn(B, m, n, generator=g).to(DEVICE)
    Q_A, Q_B = _orthogonal(B, m, g), _orthogonal(B, n, g)
    w_A = None if identity else torch.rand(B, m, generator=g).to(DEVICE)
    w_B = None if identity else torch.rand(B, n, generator=g).to(DEVICE)
    s_A, s_B = torch.rand(B, generator=g).to(DEVICE), torch.rand(B, generator=g).to(DEVICE)
    got = ops.rotated_statistics(A, B_, G, Q_A, Q_B, w_A, s_A, w_B, s_B, 0.9, backend="triton")
    f64 = [None if t is None else t.to(F64) for t in (A, B_, G, Q_A, Q_B, w_A, s_A, w_B, s_B)]
    for out, ref in zip(got, rotated_statistics_ref(*f64, 0.9), strict=True):
        _assert_close(out, ref, torch.float32)
