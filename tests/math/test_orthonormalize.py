"""Shifted CholeskyQR3 (the GEMM-based basis refresh): orthonormal to float rounding, the same Q as
Householder QR up to column signs, the same refreshed eigenvalues, and selectable per group."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk
from tritonkron.math import basis
from tritonkron.math.basis import cholesky_qr, orthonormalize, subspace_iteration


def _factor(d: int, cond: float, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric PSD factor with eigenvalues spread over ``cond`` and a stale basis near its eigenvectors."""
    U = torch.linalg.qr(torch.randn(batch, d, d, dtype=torch.float64)).Q
    lam = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), d, dtype=torch.float64)
    stale = torch.linalg.qr(U + 1e-3 * torch.randn(batch, d, d, dtype=torch.float64)).Q
    return (U * lam) @ U.mT, stale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cholesky_qr_is_orthonormal_and_matches_householder_up_to_signs(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    Y = torch.randn(4, 40, 24, dtype=dtype) @ torch.diag(torch.logspace(0, 3, 24, dtype=dtype))  # κ ≈ 1e3
    Q = cholesky_qr(Y)
    H = torch.linalg.qr(Y).Q
    tol = 50 * torch.finfo(dtype).eps
    assert Q.dtype == dtype
    assert (Q.mT @ Q - torch.eye(24, dtype=dtype)).abs().amax() < tol
    signs = torch.sign((Q * H).sum(-2, keepdim=True))
    assert (Q - H * signs).abs().amax() < 1e3 * tol  # Q agrees with Householder's to κ·u
    assert torch.equal(orthonormalize(Y, "householder"), H)


@pytest.mark.parametrize("cond", [1e2, 1e8])
def test_refresh_eigenvalues_agree_with_float64_householder(cond: float) -> None:
    torch.manual_seed(1)
    A, stale = _factor(48, cond)
    exact = subspace_iteration(A, stale)  # float64, Householder
    for method in ("householder", "cholesky"):
        got = subspace_iteration(A.float(), stale.float(), method=method)
        err = (got.values.double() - exact.values).abs().amax() / exact.values.abs().amax()
        assert err < 1e-5, (method, err)
        assert (got.vectors.mT @ got.vectors - torch.eye(48)).abs().amax() < 1e-5


@pytest.mark.parametrize(("method", "calls"), [("cholesky", True), ("householder", False), ("auto", False)])
def test_orthonormalize_is_a_group_option(method: str, calls: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refresh uses the group's orthonormaliser ("auto" is Householder off CUDA)."""
    used = []
    monkeypatch.setattr(basis, "cholesky_qr", lambda Y: used.append(Y.shape) or cholesky_qr(Y))
    torch.manual_seed(2)
    W = torch.nn.Parameter(torch.randn(12, 8))
    opt = tk.Kron([W], lr=1e-2, precondition_every=2, orthonormalize=method)
    for _ in range(5):
        W.grad = torch.randn(12, 8)
        opt.step()
    assert torch.isfinite(W).all()
    assert bool(used) == calls
    with pytest.raises(ValueError, match="orthonormalize must be one of"):
        tk.Kron([W], orthonormalize="svd")
