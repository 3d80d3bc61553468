"""Reference inverse p-th root: eigh with its fallback ladder, and the coupled Newton iteration.

Accuracy is measured as the relative Frobenius error ‖X − X*‖_F / ‖X*‖_F of the root against an
oracle computed without the code under test: the planted eigenpairs of ``tests._matrices`` (float64),
or ``torch.linalg.eigh`` in float64 called directly. Tolerances (float64) follow first-order
perturbation theory: a backward-stable method perturbs A by ~d·ε‖A‖, which moves A^{-1/p} by at
most ~(κ/p)·d·ε relatively, so

    root:      ‖X − X*‖_F / ‖X*‖_F   ≤ 1e-11 + κ·d·ε/p
    residual:  ‖Xᵖ A − I‖_F / √d      ≤ 1e-11 + κ·d·ε

The 1e-11 floor covers Newton–Schulz stopping at its default tol 1e-12 on ‖M − I‖_F/√d (the root
error is then about tol/p). Measured errors are 10–1000× below these bounds (at κ = 1e6, d = 257:
≈ 8e-12 for both methods against a bound of 3e-8).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from tests import _matrices as mats
from tritonkron.math import checks, eigh_root, safe_linalg
from tritonkron.ops.inverse_root import methods as ir
from tritonkron.ops.inverse_root import reference as newton_schulz
from tritonkron.ops.inverse_root.methods import (
    EighFailure,
    RootNotConverged,
    RootStatus,
    coupled_newton_init,
    coupled_newton_step,
    eigh_with_fallback,
    inverse_root,
    inverse_root_eigh,
    newton_schulz_inverse_root,
    spectral_bound,
)

F32, F64 = torch.float32, torch.float64
EPS64 = torch.finfo(F64).eps
METHODS = ("eigh", "newton_schulz")
_REAL_EIGH = torch.linalg.eigh


def rel_err(X: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ‖X − ref‖_F / ‖ref‖_F, in float64."""
    return float(torch.linalg.norm(X.double() - ref) / torch.linalg.norm(ref))


def residual(X: torch.Tensor, A: torch.Tensor, p: int) -> float:
    """‖Xᵖ A − I‖_F / √d in float64."""
    d = A.shape[-1]
    R = torch.linalg.matrix_power(X.double(), p) @ A.double() - torch.eye(d, dtype=F64)
    return float(torch.linalg.norm(R) / math.sqrt(d))


def eigh_oracle(A: torch.Tensor, p: int) -> torch.Tensor:
    """A^{-1/p} by ``torch.linalg.eigh`` in float64, independent of the code under test."""
    L, Q = _REAL_EIGH(A.double())
    return (Q * L.pow(-1.0 / p)) @ Q.T


# ---------------------------------------------------------------------------------------------
# Accuracy against oracles.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cond", [1.0, 1e3, 1e6], ids=lambda c: f"cond{c:.0e}")
@pytest.mark.parametrize("d", [1, 7, 64, 257], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("p", [2, 4], ids=lambda p: f"p{p}")
@pytest.mark.parametrize("method", METHODS)
def test_inverse_root_matches_planted_oracle_float64(method: str, p: int, d: int, cond: float) -> None:
    K = mats.planted(d, cond, scale=3.0, seed=d + p)
    X = inverse_root(K.matrix, p, method=method)
    assert X.dtype == F64 and X.shape == (d, d)
    assert rel_err(X, K.inverse_root(p)) <= 1e-11 + cond * d * EPS64 / p
    assert residual(X, K.matrix, p) <= 1e-11 + cond * d * EPS64
    if method == "newton_schulz":
        result = newton_schulz_inverse_root(K.matrix, p)
        assert result.status is RootStatus.CONVERGED and bool(result.converged)
        assert result.iterations <= 30  # measured ≤ 22: linear phase ≈ log κ / log((p+1)/p)ᵖ, then quadratic
        assert float(result.residual) <= 1e-12


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["identity", "tridiagonal"])
def test_inverse_root_closed_form_spectra(kind: str, method: str, p: int) -> None:
    K = mats.identity(64) if kind == "identity" else mats.tridiagonal(64)  # tridiagonal: κ ≈ 1.7e3
    cond = float(K.eigenvalues[-1] / K.eigenvalues[0])
    assert (
        rel_err(inverse_root(K.matrix, p, method=method), K.inverse_root(p)) <= 1e-11 + cond * 64 * EPS64 / p
    )


@pytest.mark.parametrize("method", METHODS)
def test_inverse_root_wishart_against_float64_eigh(method: str) -> None:
    A = mats.wishart(48, seed=5)
    cond = float(torch.linalg.cond(A))
    X = inverse_root(A, 2, method=method)
    assert rel_err(X, eigh_oracle(A, 2)) <= 1e-11 + cond * 48 * EPS64 / 2
    assert residual(X, A, 2) <= 1e-11 + cond * 48 * EPS64


@pytest.mark.parametrize("method", METHODS)
def test_inverse_root_float32_against_float64_eigh(method: str) -> None:
    # Oracle: the float64 root of the same (float32-rounded) matrix. Measured errors are ≈ 9e-6
    # (eigh) and ≈ 4e-6 (Newton–Schulz) at κ = 1e3, d = 64; 1e-4 leaves a 10× margin. (First-order
    # theory allows κ·d·ε₃₂/p ≈ 4e-3, which would hardly test anything.)
    A = mats.planted(64, 1e3, dtype=F32, seed=11).matrix
    X = inverse_root(A, 2, method=method)
    assert X.dtype == F32
    assert rel_err(X, eigh_oracle(A, 2)) <= 1e-4
    if method == "newton_schulz":
        assert newton_schulz_inverse_root(A, 2).status is RootStatus.CONVERGED  # default tol 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_inverse_root_half_precision_returns_input_dtype(method: str) -> None:
    A = mats.planted(8, 10.0, dtype=torch.bfloat16, seed=2).matrix
    X = inverse_root(A, 2, method=method)
    assert X.dtype == torch.bfloat16
    assert rel_err(X, eigh_oracle(A, 2)) <= 2e-2  # bf16 output rounding (8 bits of mantissa)


# ---------------------------------------------------------------------------------------------
# Batching.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("method", METHODS)
def test_batched_matches_loop(method: str, p: int) -> None:
    # Different condition numbers, so Newton–Schulz members converge after different step counts.
    A = torch.stack([mats.planted(33, c, seed=i).matrix for i, c in enumerate((1.0, 1e3, 1e6))])
    batched = inverse_root(A, p, method=method)
    looped = torch.stack([inverse_root(a, p, method=method) for a in A])
    # Batched BLAS/LAPACK calls may round differently from single ones (measured ≤ 2e-14).
    assert max(rel_err(b, l.double()) for b, l in zip(batched, looped, strict=True)) <= 1e-12


def test_newton_schulz_result_shapes_follow_batch_dims() -> None:
    A = torch.stack([mats.planted(5, 10.0**i, seed=i).matrix for i in range(6)]).reshape(2, 3, 5, 5)
    result = newton_schulz_inverse_root(A, 2)
    assert result.root.shape == (2, 3, 5, 5)
    assert result.residual.shape == (2, 3) and result.converged.shape == (2, 3)
    assert bool(result.converged.all())
    eigh_roots = inverse_root_eigh(A, 2).reshape(6, 5, 5)
    assert (
        max(rel_err(x, y.double()) for x, y in zip(result.root.reshape(6, 5, 5), eigh_roots, strict=True))
        <= 1e-10
    )


@pytest.mark.parametrize("method", METHODS)
def test_empty_inputs(method: str) -> None:
    assert inverse_root(torch.zeros(0, 4, 4), 2, method=method).shape == (0, 4, 4)
    assert inverse_root(torch.zeros(2, 0, 0), 2, method=method).shape == (2, 0, 0)


# ---------------------------------------------------------------------------------------------
# Newton–Schulz: the step, the scaling, and the status.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_coupled_newton_step_keeps_invariant_and_converges(p: int) -> None:
    K = mats.planted(16, 1e2, seed=p)
    X, M = coupled_newton_init(K.matrix, p)
    X1, M1 = coupled_newton_step(X, M, p)
    T = ((p + 1) * torch.eye(16, dtype=F64) - M) / p
    torch.testing.assert_close(X1, X @ T, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(M1, torch.linalg.matrix_power(T, p) @ M, rtol=1e-13, atol=1e-15)
    for _ in range(30):
        X, M = coupled_newton_step(X, M, p)
    # M_k = X_kᵖ A throughout, and the iteration has converged to A^{-1/p}.
    torch.testing.assert_close(M, torch.linalg.matrix_power(X, p) @ K.matrix, rtol=0.0, atol=1e-12)
    assert rel_err(X, K.inverse_root(p)) <= 1e-12


@pytest.mark.parametrize("scaling", ["lambda_max", "frobenius", "trace"])
def test_spectral_bound_is_an_upper_bound(scaling: str) -> None:
    g = torch.Generator().manual_seed(0)
    for d in (1, 5, 64):
        A = mats.wishart(d, samples=d // 2 + 1, seed=g)  # PSD, possibly singular
        lam_max = float(_REAL_EIGH(A).eigenvalues[-1])
        bound = float(spectral_bound(A, scaling))
        assert lam_max * (1 - 1e-12) <= bound
        if scaling == "lambda_max":
            assert bound <= d ** (1 / 16) * lam_max * (1 + 1e-12)
    # The λ_max bound also holds for indefinite matrices (it bounds max |λ|) and for huge entries.
    S = torch.randn(20, 20, generator=g, dtype=F64)
    S = S + S.T
    rho = float(_REAL_EIGH(S).eigenvalues.abs().max())
    assert rho * (1 - 1e-12) <= float(spectral_bound(S)) <= 20 ** (1 / 16) * rho * (1 + 1e-12)
    big = 1e30 * mats.planted(8, 10.0, dtype=F32, seed=1).matrix
    assert math.isfinite(float(spectral_bound(big, scaling)))


@pytest.mark.parametrize("scaling", ["lambda_max", "frobenius", "trace"])
def test_newton_schulz_scalings_converge(scaling: str) -> None:
    K = mats.planted(32, 1e4, scale=1e-3, seed=4)
    result = newton_schulz_inverse_root(K.matrix, 4, scaling=scaling)
    assert result.status is RootStatus.CONVERGED
    assert rel_err(result.root, K.inverse_root(4)) <= 1e-11 + 1e4 * 32 * EPS64 / 4


def test_newton_schulz_max_iters_status() -> None:
    A = mats.planted(32, 1e6, seed=3).matrix
    result = newton_schulz_inverse_root(A, 2, max_iters=2)
    assert result.status is RootStatus.MAX_ITERS
    assert not bool(result.converged) and result.iterations == 2
    assert float(result.residual) > 1e-12 and torch.isfinite(result.root).all()


def test_newton_schulz_indefinite_input_is_never_converged() -> None:
    K = mats.with_spectrum(torch.tensor([-1e-3, *torch.linspace(0.1, 1.0, 15).tolist()]), seed=3)
    result = newton_schulz_inverse_root(K.matrix, 2)
    assert result.status is RootStatus.DIVERGED
    assert not bool(result.converged)
    # The residual bottoms out at ≈ 0.26 (step 4), exceeds 1.5× that from step 8 on and overflows
    # at step 15: the growth rule (3 such steps in a row) stops the iteration at step 10.
    assert result.iterations == 10
    # The best iterate is kept, and the residual reported is its own: ‖X² A − I‖_F/√d.
    assert torch.isfinite(result.root).all() and float(result.residual) < 0.3
    assert residual(result.root, K.matrix, 2) == pytest.approx(float(result.residual), rel=1e-8)
    with pytest.raises(RootNotConverged) as info:
        inverse_root(K.matrix, 2, method="newton_schulz", fallback=False)
    assert info.value.result.status is RootStatus.DIVERGED


def test_newton_schulz_blow_up_reports_diverged() -> None:
    # "trace" assumes PSD: for spectrum {−10, 10.5}, tr A = 0.5 puts spec(M₀) = {−20, 21},
    # outside (0, p+1), and the iterates overflow within a few steps.
    K = mats.with_spectrum(torch.tensor([-10.0, 10.5]), seed=0)
    result = newton_schulz_inverse_root(K.matrix, 2, scaling="trace")
    assert result.status is RootStatus.DIVERGED
    assert result.iterations < 10
    assert torch.isfinite(result.root).all() and torch.isfinite(result.residual).all()


def test_inverse_root_newton_schulz_fallback_replaces_only_failed_members() -> None:
    good = mats.planted(16, 10.0, seed=1).matrix
    slow = mats.planted(16, 1e6, seed=2).matrix  # needs ≈ 20 steps
    indefinite = mats.with_spectrum(
        torch.tensor([-0.5, *torch.linspace(0.1, 1.0, 15).tolist()]), seed=3
    ).matrix
    A = torch.stack([good, slow, indefinite])
    ns = newton_schulz_inverse_root(A, 2, max_iters=12)
    assert ns.converged.tolist() == [True, False, False]
    assert ns.status is RootStatus.DIVERGED  # the worst over the batch
    with pytest.raises(RootNotConverged, match="2 of 3"):
        inverse_root(A, 2, method="newton_schulz", max_iters=12, fallback=False)
    X = inverse_root(A, 2, method="newton_schulz", max_iters=12)
    torch.testing.assert_close(X[0], ns.root[0], rtol=0.0, atol=0.0)
    torch.testing.assert_close(X[1:], inverse_root_eigh(A[1:], 2), rtol=0.0, atol=0.0)


# ---------------------------------------------------------------------------------------------
# The eigh fallback ladder.
# ---------------------------------------------------------------------------------------------


def _patch_eigh(monkeypatch: pytest.MonkeyPatch, fails) -> list[torch.Tensor]:
    """Replace ``torch.linalg.eigh`` by one that raises when ``fails(B)``; returns the inputs seen."""
    calls: list[torch.Tensor] = []

    def fake(B: torch.Tensor, *args, **kwargs):
        calls.append(B)
        if fails(B):
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge (fake)")
        return _REAL_EIGH(B, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "eigh", fake)
    return calls


def test_eigh_ladder_first_rung_succeeds() -> None:
    A = mats.planted(12, 1e2, dtype=F32, seed=0).matrix
    result = eigh_with_fallback(A)
    assert (result.attempts, result.damping, result.upcast) == (1, 0.0, False)
    assert result.eigenvalues.dtype == F32 and result.eigenvectors.dtype == F32


def test_eigh_ladder_retries_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    K = mats.planted(12, 1e2, dtype=F32, seed=0)
    calls = _patch_eigh(monkeypatch, lambda B: B.dtype == F32)
    result = eigh_with_fallback(K.matrix)
    assert (result.attempts, result.damping, result.upcast) == (2, 0.0, True)
    assert [c.dtype for c in calls] == [F32, F64]
    assert result.eigenvalues.dtype == F32
    torch.testing.assert_close(result.eigenvalues.double(), K.eigenvalues, rtol=1e-6, atol=0.0)


def test_eigh_ladder_rejects_non_finite_output(monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_in_float32(B: torch.Tensor):
        L, Q = _REAL_EIGH(B)
        return (L * float("nan"), Q) if B.dtype == F32 else (L, Q)

    monkeypatch.setattr(torch.linalg, "eigh", nan_in_float32)
    result = eigh_with_fallback(mats.planted(6, 10.0, dtype=F32, seed=0).matrix)
    assert result.attempts == 2 and result.upcast and torch.isfinite(result.eigenvalues).all()


def test_eigh_ladder_adds_damping_until_it_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    K = mats.planted(12, 1e2, scale=2.0, dtype=F32, seed=0)
    S = K.matrix.double()
    s = float(S.trace()) / 12  # the damping scale tr A / d

    def fails(B: torch.Tensor) -> bool:  # succeed only once ≥ 1e-6·s has been added to the diagonal
        return B.dtype != F64 or float((B - S).diagonal().min()) < 0.5e-6 * s

    calls = _patch_eigh(monkeypatch, fails)
    result = eigh_with_fallback(K.matrix)
    assert result.damping == pytest.approx(1e-6) and result.upcast
    assert result.attempts == len(calls) == 5  # float32, float64, 1e-10, 1e-8, 1e-6
    # The damped matrix is what was decomposed: eigenvalues shifted by δ·s, eigenvectors unchanged.
    torch.testing.assert_close(result.eigenvalues.double(), K.eigenvalues + 1e-6 * s, rtol=1e-6, atol=0.0)


def test_eigh_ladder_damping_scale_when_trace_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    A = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=F64)  # tr A = 0 → mean |diag| = 1
    _patch_eigh(monkeypatch, lambda B: float((B - A).diagonal().min()) < 0.5e-8)
    result = eigh_with_fallback(A)
    assert result.damping == pytest.approx(1e-8) and not result.upcast  # float64: no separate retry
    torch.testing.assert_close(result.eigenvalues, torch.tensor([-1.0, 1.0], dtype=F64) + 1e-8)


def test_eigh_ladder_gives_up_with_eigh_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _patch_eigh(monkeypatch, lambda B: True)
    with pytest.raises(EighFailure, match=r"7 attempts .*float32, float64, .*0\.001") as info:
        eigh_with_fallback(mats.planted(6, 10.0, dtype=F32, seed=0).matrix)
    assert len(calls) == 7 and "failed to converge" in str(info.value)
    with pytest.raises(EighFailure, match="2 attempts"):
        eigh_with_fallback(mats.planted(6, 10.0, dtype=F32, seed=0).matrix, max_damping=0.0)
    with pytest.raises(EighFailure):
        inverse_root_eigh(mats.planted(6, 10.0, seed=0).matrix, 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_raises_before_eigh(monkeypatch: pytest.MonkeyPatch, bad: float) -> None:
    calls = _patch_eigh(monkeypatch, lambda B: False)
    A = mats.planted(5, 10.0, seed=0).matrix.clone()
    A[2, 3] = bad
    for fn in (
        eigh_with_fallback,
        lambda M: inverse_root(M, 2),
        lambda M: inverse_root(M, 2, "newton_schulz"),
    ):
        with pytest.raises(ValueError, match="non-finite"):
            fn(A)
    assert calls == []


def test_eigh_symmetrises_its_input() -> None:
    K = mats.planted(9, 10.0, seed=0)
    skew = torch.triu(torch.ones(9, 9, dtype=F64), diagonal=1)
    result = eigh_with_fallback(K.matrix + skew - skew.T)
    torch.testing.assert_close(result.eigenvalues, K.eigenvalues, rtol=1e-12, atol=0.0)


def test_inverse_root_eigh_uses_the_ladder(monkeypatch: pytest.MonkeyPatch) -> None:
    K = mats.planted(10, 1e2, dtype=F32, seed=0)
    _patch_eigh(monkeypatch, lambda B: B.dtype == F32)
    assert rel_err(inverse_root_eigh(K.matrix, 2), eigh_oracle(K.matrix, 2)) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Rank-deficient input and the eigenvalue floor.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("p", [2, 4])
def test_rank_deficient_psd_gives_a_finite_root(dtype: torch.dtype, p: int) -> None:
    K = mats.rank_deficient_psd(16, 5, dtype=dtype, seed=0)
    X = inverse_root_eigh(K.matrix, p)
    assert torch.isfinite(X).all()
    # On the range of A the root is exact. Null-space weights (ε·λ_max)^{-1/p} leak into it at
    # ≈ ε·(ε·λ_max)^{-1/p}·λ_max^{1/p} = ε^{1-1/p} relatively; allow 10× that.
    Qr = K.eigenvectors[:, -5:]
    P = Qr @ Qr.T
    ref = (Qr * K.eigenvalues[-5:].pow(-1.0 / p)) @ Qr.T
    eps = torch.finfo(dtype).eps
    assert rel_err(P @ X.double() @ P, ref) <= 10 * eps ** (1 - 1 / p)


def test_zero_matrix_and_eps_floor() -> None:
    assert torch.isfinite(inverse_root_eigh(torch.zeros(2, 3, 3), 2)).all()
    X = inverse_root_eigh(mats.rank_deficient_psd(8, 2, seed=1).matrix, 2, eps=1e-4)
    assert float(_REAL_EIGH(X).eigenvalues.max()) <= 1e-4**-0.5 * (1 + 1e-10)


# ---------------------------------------------------------------------------------------------
# Argument validation.
# ---------------------------------------------------------------------------------------------

_SPD = mats.planted(4, 10.0, seed=0).matrix


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        pytest.param({"method": "svd"}, r"method must be one of 'eigh', 'newton_schulz'", id="method-svd"),
        pytest.param({"p": 0}, r"p must be a positive integer; got 0", id="p-0"),
        pytest.param({"p": 1.5}, r"p must be a positive integer; got 1\.5", id="p-1.5"),
        pytest.param({"p": True}, r"p must be a positive integer", id="p-bool"),
        pytest.param({"A": torch.ones(3, 4, dtype=F64)}, r"A must be square", id="A-nonsquare"),
        pytest.param({"A": torch.ones(4, dtype=F64)}, r"A must be square", id="A-1d"),
        pytest.param(
            {"A": torch.eye(4, dtype=torch.int64)}, r"A must have a floating-point dtype", id="A-int"
        ),
        pytest.param({"A": [[1.0]]}, r"A must be a torch\.Tensor", id="A-list"),
        pytest.param({"eps": -1.0}, r"eps must be a finite number", id="eps-negative"),
        pytest.param({"method": "newton_schulz", "scaling": "svd"}, r"scaling must be one of", id="scaling"),
        pytest.param({"method": "newton_schulz", "max_iters": -1}, r"max_iters must be", id="max-iters"),
        pytest.param({"method": "newton_schulz", "tol": float("nan")}, r"tol must be", id="tol-nan"),
        pytest.param(
            {"method": "newton_schulz", "fallback": "yes"}, r"fallback must be a bool", id="fallback"
        ),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(kwargs: dict, pattern: str) -> None:
    args = {"A": _SPD, "p": 2, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        inverse_root(args.pop("A"), args.pop("p"), **args)


def test_unknown_keyword_for_method_raises_type_error() -> None:
    with pytest.raises(TypeError, match="max_iters"):
        inverse_root(_SPD, 2, method="eigh", max_iters=5)
    with pytest.raises(ValueError, match="max_damping"):
        eigh_with_fallback(_SPD, max_damping=-1.0)
    with pytest.raises(ValueError, match="p must be"):
        coupled_newton_step(_SPD, _SPD, 0)


@pytest.mark.parametrize(
    "module", [ir, checks, eigh_root, newton_schulz, safe_linalg], ids=lambda m: m.__name__
)
def test_module_never_imports_triton(module: object) -> None:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name == "triton" or name.startswith("triton.") for name in imported)
