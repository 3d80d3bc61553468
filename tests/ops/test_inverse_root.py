"""Coupled Newton (Newton–Schulz) inverse-root kernels against the reference (CPU: Triton interpreter).

Error metric: relative Frobenius error ‖out − ref‖_F / ‖ref‖_F with ref computed in float64 from
the same (already rounded) inputs. The kernels always compute in fp32 (``input_precision="ieee"``).

| comparison | tolerance | measured (interpreter, these cases) |
|---|---|---|
| one step vs ``coupled_newton_step`` (fp32) | 1e-5 | ≤ 2e-7 |
| full iteration vs float64 reference iteration, same tol (fp32 root) | 1e-5 | ≤ 4e-7; same iteration counts |
| full iteration vs eigh (fp32 root) — loose: the iteration stops at r ≤ tol = 1e-6, and the root error is ≈ r·κ/p | 1e-4 | ≤ 4e-7 (κ ≤ 40 here) |
| root returned in float16 / bfloat16 (A given in that dtype, computed in fp32) | 2e-3 / 1e-2 | ≤ 3e-4 / ≤ 2e-3: the final rounding to the output dtype |
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from tritonkron.math.eigh_root import inverse_root_eigh
from tritonkron.ops.inverse_root.reference import (
    RootStatus,
    coupled_newton_init,
    coupled_newton_step,
    newton_schulz_inverse_root,
)
from tritonkron.ops.inverse_root.triton import (
    _keep_newton_schulz,
    coupled_newton_step_triton,
    newton_schulz_configs,
    newton_schulz_triton,
)

TOL_STEP = 1e-5
TOL_ITERATION = 1e-5
TOL_EIGH = 1e-4  # loose on purpose: see the table above
TOL_OUT = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

STEP_CASES = [(1, 1), (3, 7), (1, 33), (3, 33)]  # (B, d); d = 33 crosses a 32-wide tile
ITER_CASES = [(1, 1), (3, 7), (1, 33)]


def _rel_err(actual: Tensor, expected: Tensor) -> float:
    assert not actual.isnan().any(), "output has NaN: some element was never written"
    diff = (actual.to(F64) - expected.to(F64)).norm()
    return (diff / expected.to(F64).norm().clamp_min(torch.finfo(F64).tiny)).item()


def _spd(B: int, d: int, seed: int, cond: float | None = None) -> Tensor:
    """float64 SPD ``[B, d, d]``: a Wishart-like matrix, or a planted spectrum 1 … 1/cond."""
    g = torch.Generator().manual_seed(seed)
    if cond is None:
        G = torch.randn(B, d, d + 5, generator=g, dtype=F64)
        return G @ G.transpose(-1, -2) / d + 0.1 * torch.eye(d, dtype=F64)
    Q = torch.linalg.qr(torch.randn(B, d, d, generator=g, dtype=F64)).Q
    lam = torch.logspace(0, -math.log10(cond), d, dtype=F64)
    return (Q * lam) @ Q.transpose(-1, -2)


def _nan_like(t: Tensor) -> Tensor:
    return torch.full_like(t, float("nan"))


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize(("B", "d"), STEP_CASES, ids=[f"B{b}-d{d}" for b, d in STEP_CASES])
def test_coupled_newton_step_matches_reference_step(B: int, d: int, p: int) -> None:
    A = _spd(B, d, seed=10 * d + B)
    X, M = coupled_newton_init(A, p)
    for _ in range(2):  # a mid-iteration state: M is no longer a multiple of A
        X, M = coupled_newton_step(X, M, p)
    X, M = X.float().to(DEVICE), M.float().to(DEVICE)
    out = (_nan_like(X), _nan_like(M))
    X_new, M_new = coupled_newton_step_triton(X, M, p, out=out)
    assert X_new is out[0] and M_new is out[1]
    X_ref, M_ref = coupled_newton_step(X.to(F64), M.to(F64), p)
    assert _rel_err(X_new, X_ref) <= TOL_STEP
    assert _rel_err(M_new, M_ref) <= TOL_STEP
    # Upper tiles are mirrored: the results are exactly symmetric.
    assert torch.equal(X_new, X_new.transpose(-1, -2)) and torch.equal(M_new, M_new.transpose(-1, -2))


def test_coupled_newton_step_explicit_configs_and_strided_inputs() -> None:
    A = _spd(2, 33, seed=3)
    X, M = coupled_newton_init(A, 4)
    X, M = coupled_newton_step(X, M, 4)
    X, M = (t.float().to(DEVICE).transpose(1, 2) for t in (X, M))  # strided views
    X_ref, M_ref = coupled_newton_step(X.to(F64), M.to(F64), 4)
    for cfg in ({"BLOCK": 16, "BLOCK_K": 32}, newton_schulz_configs()[0]):
        X_new, M_new = coupled_newton_step_triton(X, M, 4, config=cfg)
        assert _rel_err(X_new, X_ref) <= TOL_STEP and _rel_err(M_new, M_ref) <= TOL_STEP


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize(("B", "d"), ITER_CASES, ids=[f"B{b}-d{d}" for b, d in ITER_CASES])
def test_newton_schulz_matches_reference_iteration_and_eigh(B: int, d: int, p: int) -> None:
    A = _spd(B, d, seed=100 * d + B).float().to(DEVICE)
    out = _nan_like(A)
    res = newton_schulz_triton(A, p, tol=1e-6, out=out)
    assert res.root is out
    ref = newton_schulz_inverse_root(A.to(F64), p, tol=1e-6)  # same iteration and stopping, float64
    assert res.status is RootStatus.CONVERGED and bool(res.converged.all())
    assert abs(res.iterations - ref.iterations) <= 1  # a residual within rounding of tol may flip
    assert float(res.residual.max()) <= 1e-6
    assert _rel_err(res.root, ref.root) <= TOL_ITERATION
    exact = inverse_root_eigh(A.to(F64), p)
    assert _rel_err(res.root, exact) <= TOL_EIGH
    # Residual of the root itself: ‖Xᵖ A − I‖_F/√d.
    X = res.root.to(F64)
    r = (
        torch.linalg.matrix_norm(torch.linalg.matrix_power(X, p) @ A.to(F64) - torch.eye(d, dtype=F64))
        / d**0.5
    )
    assert float(r.max()) <= 1e-4


@pytest.mark.parametrize("scaling", ["lambda_max", "frobenius", "trace"])
@pytest.mark.parametrize("p", [2, 4])
def test_newton_schulz_scalings_follow_the_reference(p: int, scaling: str) -> None:
    A = _spd(3, 7, seed=5).float().to(DEVICE)
    res = newton_schulz_triton(A, p, scaling=scaling)
    ref = newton_schulz_inverse_root(A, p, scaling=scaling)  # the reference's own fp32 run
    assert res.status is ref.status is RootStatus.CONVERGED
    assert abs(res.iterations - ref.iterations) <= 1
    assert _rel_err(res.root, ref.root) <= TOL_ITERATION


def test_newton_schulz_freezes_finished_members_like_the_reference() -> None:
    # Member 0 is well conditioned and finishes first; member 1 (κ = 1e3) keeps iterating.
    A = torch.cat([_spd(1, 9, seed=1), _spd(1, 9, seed=2, cond=1e3)]).float().to(DEVICE)
    A = A.transpose(-1, -2).reshape(2, 1, 9, 9)  # leading batch dims and a strided view
    res = newton_schulz_triton(A, 2)
    ref = newton_schulz_inverse_root(A.to(F64), 2, tol=1e-6)
    assert res.status is RootStatus.CONVERGED and res.root.shape == A.shape and res.residual.shape == (2, 1)
    assert abs(res.iterations - ref.iterations) <= 1
    assert _rel_err(res.root, ref.root) <= TOL_ITERATION


def test_newton_schulz_reports_non_convergence() -> None:
    A = _spd(2, 16, seed=4, cond=1e6).float().to(DEVICE)
    res = newton_schulz_triton(A, 4, max_iters=1)
    ref = newton_schulz_inverse_root(A, 4, max_iters=1)
    assert res.status is ref.status is RootStatus.MAX_ITERS
    assert res.iterations == 1 and not bool(res.converged.any())
    assert bool((res.residual > 1e-6).all())
    torch.testing.assert_close(res.residual, ref.residual, rtol=1e-5, atol=0)


def test_newton_schulz_reports_divergence() -> None:
    A = _spd(1, 8, seed=6)
    A = A - 1.5 * torch.linalg.eigvalsh(A)[..., :1, None] * torch.eye(8, dtype=F64)  # indefinite
    A = A.float().to(DEVICE)
    res = newton_schulz_triton(A, 2)
    ref = newton_schulz_inverse_root(A, 2)
    assert res.status is ref.status is RootStatus.DIVERGED
    assert not bool(res.converged.any()) and bool(torch.isfinite(res.root).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_newton_schulz_low_precision_input(dtype: torch.dtype) -> None:
    # The kernel only ever sees fp32 (A is upcast in torch), so bf16 runs under the interpreter too.
    A = _spd(2, 12, seed=7).to(DEVICE, dtype)
    res = newton_schulz_triton(A, 2)
    assert res.root.dtype == dtype and res.status is RootStatus.CONVERGED
    ref = newton_schulz_inverse_root(A.to(F64), 2, tol=1e-6)
    assert _rel_err(res.root, ref.root) <= TOL_OUT[dtype]


def test_empty_and_zero_iterations() -> None:
    empty = newton_schulz_triton(torch.empty(0, 5, 5, device=DEVICE), 2)
    assert empty.status is RootStatus.CONVERGED and empty.root.shape == (0, 5, 5)
    A = _spd(1, 5, seed=8).float().to(DEVICE)
    res = newton_schulz_triton(A, 2, max_iters=0)
    ref = newton_schulz_inverse_root(A, 2, max_iters=0)
    assert res.iterations == 0 and res.status is ref.status is RootStatus.MAX_ITERS
    assert _rel_err(res.root, ref.root) <= TOL_STEP  # X₀ = I/c with the λ_max bound through the kernel


def test_configs_are_legal() -> None:
    cfgs = newton_schulz_configs()
    assert cfgs and all(
        _keep_newton_schulz({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}) for c in cfgs
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"A": torch.eye(3, dtype=F64)}, "A must be float32"),
        ({"A": torch.ones(2, 3)}, "A must be square"),
        ({"A": torch.full((2, 2), float("nan"))}, "A contains non-finite"),
        ({"p": 3}, "p must be 2 or 4"),
        ({"p": 2.0}, "p must be 2 or 4; got 2.0"),
        ({"max_iters": -1}, "max_iters must be"),
        ({"tol": -1.0}, "tol must be"),
        ({"scaling": "spectral"}, "scaling must be one of"),
        ({"out": torch.empty(3, 3, dtype=torch.float16)}, "out must be"),
        ({"config": {"BLOCK": 24}}, "config is not a legal"),
        ({"config": {"BLOCK_M": 32}}, "config has unknown keys"),
    ],
)
def test_newton_schulz_rejects_bad_inputs(kwargs: dict[str, object], match: str) -> None:
    args = {"A": torch.eye(3), "p": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        newton_schulz_triton(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"X": torch.eye(3).expand(2, 3, 3).half()}, "X must be float32"),
        ({"M": torch.eye(4).expand(2, 4, 4)}, "M must have X's shape"),
        ({"X": torch.ones(2, 3, 4)}, r"X must be square with shape \[B, d, d\]"),
        ({"p": 1}, "p must be 2 or 4"),
        ({"out": (torch.empty(2, 3, 3), torch.empty(2, 2, 2))}, r"out\[1\] must have shape"),
    ],
)
def test_coupled_newton_step_rejects_bad_inputs(kwargs: dict[str, object], match: str) -> None:
    args = {"X": torch.eye(3).expand(2, 3, 3), "M": torch.eye(3).expand(2, 3, 3), "p": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        coupled_newton_step_triton(**args)


def test_coupled_newton_step_rejects_aliased_out() -> None:
    X = torch.eye(3).repeat(2, 1, 1)
    M = X.clone()
    with pytest.raises(ValueError, match="out must not alias"):
        coupled_newton_step_triton(X, M, 2, out=(M, torch.empty_like(M)))
