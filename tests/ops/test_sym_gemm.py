"""The symmetric batched GEMM (``tritonkron.ops._triton.sym_gemm``) in its option combinations.

Reference, in float64 from the very same (already rounded) inputs, with A diag(w) Aᵀ symmetric by
construction (B = Aᵀ, a transposed view) and C symmetric::

    out = α_b·(A diag(w) Aᵀ) + β·C + γ·I,     res summed over tiles = ‖out − I‖²_F

Error metric: relative Frobenius error. Tolerances: fp32 and fp16 operands into fp32 1e-5 (fp32
sums over K = 53; fp16 products are exact in fp32), fp64 1e-12. The output must be exactly
symmetric and fully written (NaN-poisoned buffer), whatever the option.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tritonkron.ops._triton.sym_gemm import launch_sym_gemm, residual_columns

F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
D, K = 37, 53  # three 16-wide tiles per side: diagonal and off-diagonal pairs, masked edges
CONFIG = {"BLOCK_M": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1}
BETA, GAMMA = 0.9, 0.375  # β reaches the kernel as an fp32 (hi, lo) pair, γ as fp32 (exact here)
DTYPES = {"fp32": (torch.float32, torch.float32, 1e-5), "fp16": (torch.float16, torch.float32, 1e-5),
          "fp64": (F64, F64, 1e-12)}  # fmt: skip
OPTIONS = {  # id: (weights w, C, per-block α, residual)
    "plain": (False, False, False, False),
    "w-C-alpha": (True, True, True, False),
    "C-residual": (False, True, False, True),
    "all": (True, True, True, True),
}


def _assert_close(actual: Tensor, expected: Tensor, tol: float) -> None:
    nan = int(actual.isnan().sum())
    assert nan == 0, f"{nan} NaN entries: some element was never written"
    diff = actual.to(F64) - expected
    err = (diff.norm() / expected.norm()).item()
    assert err <= tol, f"relative error {err:.3e} > {tol:.0e} (max abs {diff.abs().max().item():.3e})"


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dtype_id", list(DTYPES))
@pytest.mark.parametrize("option_id", list(OPTIONS))
def test_sym_gemm_matches_float64_reference(option_id: str, dtype_id: str, B: int) -> None:
    has_w, has_c, per_block, residual = OPTIONS[option_id]
    dtype, out_dtype, tol = DTYPES[dtype_id]
    g = torch.Generator().manual_seed(10 * B + len(option_id))
    a = (torch.randn(B, D, K, generator=g, dtype=F64) / K**0.5).to(DEVICE, dtype)
    w = (torch.rand(B, K, generator=g) + 0.1).to(DEVICE) if has_w else None
    R = torch.randn(B, D, D, generator=g, dtype=F64)
    c = (R + R.mT).to(DEVICE, out_dtype) if has_c else None
    alpha = (torch.rand(B, generator=g) + 0.5).to(DEVICE) if per_block else 0.37
    res = torch.zeros(B, residual_columns(D, CONFIG), device=DEVICE) if residual else None
    out = torch.full((B, D, D), float("nan"), dtype=out_dtype, device=DEVICE)

    launch_sym_gemm(a, a.mT, out, CONFIG, w=w, c=c, alpha=alpha, beta=BETA, gamma=GAMMA, res=res)

    a64 = a.to(F64)
    prod = (a64 * (w.to(F64)[:, None, :] if has_w else 1.0)) @ a64.mT
    alpha64 = alpha.to(F64)[:, None, None] if per_block else alpha
    ref = alpha64 * prod + GAMMA * torch.eye(D, dtype=F64, device=DEVICE)
    if has_c:
        ref = ref + BETA * c.to(F64)
    _assert_close(out, ref, tol)
    assert torch.equal(out, out.mT), "output is not exactly symmetric"
    if residual:
        expected = (ref - torch.eye(D, dtype=F64, device=DEVICE)).square().sum((1, 2))
        torch.testing.assert_close(res.sum(-1).to(F64), expected, rtol=1e-5, atol=0.0)


def test_sym_gemm_in_place_on_c() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, D, K, generator=g).to(DEVICE)
    R = torch.randn(2, D, D, generator=g)
    X = (R + R.mT).to(DEVICE)
    ref = 0.5 * (a.to(F64) @ a.to(F64).mT) + BETA * X.to(F64)
    launch_sym_gemm(a, a.mT, X, CONFIG, c=X, alpha=0.5, beta=BETA)  # out is C itself
    _assert_close(X, ref, 1e-5)
