"""Dense Kronecker projections and Bregman divergences (docs/maths.md §2–§3) against float64 oracles.

The oracles below never call the module under test: the Frobenius one takes the SVD of a
rearrangement built by explicit loops, the von Neumann one sums partial traces by loops, and the
LogDet one minimises D_LD(C, A ⊗ B) directly by a damped Newton method (autograd Hessian) on
explicit mn × mn Kronecker matrices. Their objective, ``_objective``, is written independently of
``bregman_divergence`` too.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from tritonkron.math.projection import (
    bregman_divergence,
    divergence_weighted_residuals,
    kron_covariance,
    kronecker_projection,
    partial_trace_a,
    partial_trace_b,
)

F64 = torch.float64
DIVERGENCES = ["frobenius", "von_neumann", "logdet"]
SHAPES = [(3, 4), (4, 5), (5, 6)]
ORACLE_RTOL = 1e-8  # projection vs independent oracle, relative Frobenius error on S = A ⊗ B
EXACT_RTOL = 1e-10  # exactly Kronecker C and scale identities
STATIONARY_RTOL = 1e-9  # divergence-weighted residuals at their own projection


# ----------------------------------------------------------------------------- helpers


def _rel(X: Tensor, Y: Tensor) -> float:
    return (torch.linalg.norm(X - Y) / torch.linalg.norm(Y)).item()


def _spd(d: int, g: torch.Generator, ridge: float = 0.5) -> Tensor:
    X = torch.randn(d, d, dtype=F64, generator=g)
    return X @ X.T / d + ridge * torch.eye(d, dtype=F64)


def _sym(d: int, g: torch.Generator) -> Tensor:
    X = torch.randn(d, d, dtype=F64, generator=g)
    return 0.5 * (X + X.T)


def _kron(A: Tensor, B: Tensor) -> Tensor:
    """A ⊗ B from the index definition S[(i,j),(k,l)] = A[i,k] B[j,l] (row-major vec)."""
    m, n = A.shape[0], B.shape[0]
    return (A[:, None, :, None] * B[None, :, None, :]).reshape(m * n, m * n)


def _non_kronecker_cov(m: int, n: int, seed: int, spikes: int = 4) -> Tensor:
    """A0 ⊗ B0 plus ``spikes`` random (non-Kronecker) rank-one terms plus a small ridge; tr C = mn."""
    g = torch.Generator().manual_seed(seed)
    C = _kron(_spd(m, g), _spd(n, g))
    V = torch.randn(m * n, spikes, dtype=F64, generator=g)
    C = C + V @ V.T / m + 1e-2 * torch.eye(m * n, dtype=F64)
    return C * (m * n / C.trace())


def _sym_logm(X: Tensor) -> Tensor:
    w, Q = torch.linalg.eigh(X)
    return (Q * w.log()) @ Q.T


def _objective(C: Tensor, S: Tensor, divergence: str) -> Tensor:
    """D_φ(C, S) written independently of the module (C and S SPD)."""
    d = C.shape[0]
    if divergence == "frobenius":
        return 0.5 * ((C - S) ** 2).sum()
    if divergence == "von_neumann":
        return torch.trace(C @ _sym_logm(C) - C @ _sym_logm(S) - C + S)
    M = torch.linalg.solve(S, C)
    return torch.trace(M) - torch.linalg.slogdet(M).logabsdet - d


# ----------------------------------------------------------------------------- oracles


def _oracle_frobenius(C: Tensor, m: int, n: int) -> Tensor:
    """σ₁ mat(u₁) ⊗ mat(v₁) from the SVD of R(C) built entry by entry."""
    R = torch.empty(m * m, n * n, dtype=F64)
    for i in range(m):
        for i2 in range(m):
            for j in range(n):
                for j2 in range(n):
                    R[i * m + i2, j * n + j2] = C[i * n + j, i2 * n + j2]
    U, s, Vh = torch.linalg.svd(R)
    return s[0] * _kron(U[:, 0].reshape(m, m), Vh[0].reshape(n, n))


def _oracle_von_neumann(C: Tensor, m: int, n: int) -> tuple[Tensor, Tensor]:
    """(E[GGᵀ], E[GᵀG] / tr C) with the partial traces summed by loops."""
    L = torch.zeros(m, m, dtype=F64)
    R = torch.zeros(n, n, dtype=F64)
    for j in range(n):
        L += C[j::n, j::n]  # rows/cols (i, j) for fixed j
    for i in range(m):
        R += C[i * n : (i + 1) * n, i * n : (i + 1) * n]
    return L, R / torch.trace(C)


def _oracle_logdet(C: Tensor, m: int, n: int) -> Tensor:
    """Minimise D_LD(C, A ⊗ B) by damped Newton on the free entries of symmetric A, B.

    A gauge penalty (tr A/m − tr B/n)² removes the null direction (cA, B/c) of the Hessian
    without moving the minimiser of S = A ⊗ B. Started from the (looped) von Neumann factors.
    """
    iu_a, iu_b = torch.triu_indices(m, m), torch.triu_indices(n, n)
    na = iu_a.shape[1]

    def unpack(x: Tensor) -> tuple[Tensor, Tensor]:
        A = torch.zeros(m, m, dtype=F64).index_put((iu_a[0], iu_a[1]), x[:na])
        B = torch.zeros(n, n, dtype=F64).index_put((iu_b[0], iu_b[1]), x[na:])
        return A + A.T - torch.diag(A.diagonal()), B + B.T - torch.diag(B.diagonal())

    logdet_c = torch.linalg.slogdet(C).logabsdet

    def f(x: Tensor) -> Tensor:
        A, B = unpack(x)
        S = _kron(A, B)
        L, info = torch.linalg.cholesky_ex(S)
        if info.item() != 0:
            return torch.tensor(math.inf, dtype=F64)
        M = torch.cholesky_solve(C, L)
        gauge = (torch.trace(A) / m - torch.trace(B) / n) ** 2
        return torch.trace(M) + 2 * L.diagonal().log().sum() - logdet_c - m * n + gauge

    A, B = _oracle_von_neumann(C, m, n)
    c = math.sqrt(m * torch.trace(B).item() / (n * torch.trace(A).item()))
    x = torch.cat([(c * A)[iu_a[0], iu_a[1]], (B / c)[iu_b[0], iu_b[1]]])
    for _ in range(100):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(xg), xg)
        if grad.norm() < 1e-13:
            break
        H = torch.autograd.functional.hessian(f, x)
        step = -torch.linalg.solve(H, grad)
        if grad @ step >= 0:  # not a descent direction: fall back to steepest descent
            step = -grad
        fx, t = f(x), 1.0
        while f(x + t * step) > fx + 1e-4 * t * (grad @ step) and t > 1e-12:
            t *= 0.5
        x = x + t * step
    A, B = unpack(x)
    return _kron(A, B)


def _oracle(C: Tensor, m: int, n: int, divergence: str) -> Tensor:
    if divergence == "frobenius":
        return _oracle_frobenius(C, m, n)
    if divergence == "von_neumann":
        return _kron(*_oracle_von_neumann(C, m, n))
    return _oracle_logdet(C, m, n)


# ----------------------------------------------------------------------------- projections


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"m{s[0]}-n{s[1]}")
@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_projection_matches_oracle(divergence: str, shape: tuple[int, int]) -> None:
    m, n = shape
    C = _non_kronecker_cov(m, n, seed=10 * m + n)
    A, B = kronecker_projection(C, shape, divergence)
    S = kron_covariance(A, B)
    S_oracle = _oracle(C, m, n, divergence)
    assert _rel(S, S_oracle) <= ORACLE_RTOL

    value, value_oracle = _objective(C, S, divergence), _objective(C, S_oracle, divergence)
    assert value_oracle <= value * (1 + 1e-10)
    assert value <= value_oracle * (1 + 1e-10)

    # Local optimality: Kronecker perturbations (A + ε dA) ⊗ (B + ε dB) never do better.
    g = torch.Generator().manual_seed(1)
    eps = 1e-4
    for _ in range(10):
        dA = _sym(m, g) * (torch.linalg.norm(A) / math.sqrt(m))
        dB = _sym(n, g) * (torch.linalg.norm(B) / math.sqrt(n))
        assert _objective(C, _kron(A + eps * dA, B + eps * dB), divergence) >= value * (1 - 1e-12)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_projection_of_exact_kronecker_is_identity(divergence: str) -> None:
    g = torch.Generator().manual_seed(2)
    m, n = 4, 5
    C = _kron(_spd(m, g), _spd(n, g))
    A, B = kronecker_projection(C, (m, n), divergence)
    assert _rel(kron_covariance(A, B), C) <= EXACT_RTOL


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_projection_gauge_and_symmetry(divergence: str) -> None:
    m, n = 4, 6
    C = _non_kronecker_cov(m, n, seed=3)
    A, B = kronecker_projection(C, (m, n), divergence)
    assert A.shape == (m, m) and B.shape == (n, n) and A.dtype == B.dtype == F64
    assert torch.equal(A, A.T) and torch.equal(B, B.T)
    assert math.isclose(torch.trace(A).item() / m, torch.trace(B).item() / n, rel_tol=1e-12)
    assert torch.linalg.eigvalsh(A).min() > 0 and torch.linalg.eigvalsh(B).min() > 0


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_stationarity_of_divergence_weighted_residuals(divergence: str) -> None:
    m, n = 4, 5
    C = _non_kronecker_cov(m, n, seed=4)
    c_norm = torch.linalg.norm(C)
    for other in DIVERGENCES:
        A, B = kronecker_projection(C, (m, n), other)
        weights = {
            "frobenius": (B, A),
            "von_neumann": (torch.eye(n, dtype=F64), torch.eye(m, dtype=F64)),
            "logdet": (torch.linalg.inv(B), torch.linalg.inv(A)),
        }[divergence]
        R_A, R_B = divergence_weighted_residuals(C, A, B, divergence)
        rel = max(
            (torch.linalg.norm(R) / (c_norm * torch.linalg.matrix_norm(W, ord=2))).item()
            for R, W in zip((R_A, R_B), weights, strict=True)
        )
        if other == divergence:
            assert rel <= STATIONARY_RTOL
        else:  # the three projections differ on a non-Kronecker C
            assert rel >= 1e-3


def test_scale_identities() -> None:
    m, n = 5, 4
    C = _non_kronecker_cov(m, n, seed=5)
    S_vn = kron_covariance(*kronecker_projection(C, (m, n), "von_neumann"))
    S_ld = kron_covariance(*kronecker_projection(C, (m, n), "logdet"))
    S_f = kron_covariance(*kronecker_projection(C, (m, n), "frobenius"))
    assert math.isclose(torch.trace(S_vn).item(), torch.trace(C).item(), rel_tol=EXACT_RTOL)
    assert math.isclose(torch.trace(torch.linalg.solve(S_ld, C)).item(), m * n, rel_tol=EXACT_RTOL)
    assert math.isclose((S_f**2).sum().item(), (C * S_f).sum().item(), rel_tol=EXACT_RTOL)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_projection_directional_derivative_vanishes(divergence: str) -> None:
    m, n = 3, 5
    C = _non_kronecker_cov(m, n, seed=6)
    g = torch.Generator().manual_seed(7)
    h = 1e-5

    def derivative(A: Tensor, B: Tensor, dA: Tensor, dB: Tensor) -> float:
        def d_at(t: float) -> float:
            return bregman_divergence(C, kron_covariance(A + t * dA, B + t * dB), divergence).item()

        return (d_at(h) - d_at(-h)) / (2 * h)

    A, B = kronecker_projection(C, (m, n), divergence)
    other = DIVERGENCES[(DIVERGENCES.index(divergence) + 1) % 3]
    A_o, B_o = kronecker_projection(C, (m, n), other)
    scale = bregman_divergence(C, kron_covariance(A, B), divergence).item()
    for _ in range(5):
        dA, dB = _sym(m, g), _sym(n, g)
        assert abs(derivative(A, B, dA, dB)) <= 1e-6 * scale
        # The same check fails away from the projection (another divergence's factors).
        assert abs(derivative(A_o, B_o, dA, dB)) >= 1e-3 * scale


def test_logdet_nonconvergence_raises() -> None:
    C = _non_kronecker_cov(4, 5, seed=8)
    with pytest.raises(RuntimeError, match="max_iters=2"):
        kronecker_projection(C, (4, 5), "logdet", max_iters=2)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_projection_float32(divergence: str) -> None:
    C = _non_kronecker_cov(3, 4, seed=9)
    A32, B32 = kronecker_projection(C.float(), (3, 4), divergence)
    A, B = kronecker_projection(C, (3, 4), divergence)
    assert A32.dtype == B32.dtype == torch.float32
    assert _rel(kron_covariance(A32, B32).double(), kron_covariance(A, B)) <= 1e-4


# ----------------------------------------------------------------------------- partial traces


def test_partial_traces_and_kron_convention() -> None:
    g = torch.Generator().manual_seed(10)
    m, n, samples = 3, 4, 50
    G = torch.randn(samples, m, n, dtype=F64, generator=g)
    C = torch.einsum("sa,sb->ab", G.reshape(samples, -1), G.reshape(samples, -1)) / samples
    W_n, W_m = _sym(n, g), _sym(m, g)
    torch.testing.assert_close(partial_trace_b(C, (m, n), W_n), (G @ W_n @ G.mT).mean(0))
    torch.testing.assert_close(partial_trace_a(C, (m, n), W_m), (G.mT @ W_m @ G).mean(0))
    torch.testing.assert_close(partial_trace_b(C, (m, n)), (G @ G.mT).mean(0))
    torch.testing.assert_close(partial_trace_a(C, (m, n)), (G.mT @ G).mean(0))
    # Non-symmetric weights pin the index order of Tr_B[C(I⊗W)], Tr_A[C(W⊗I)] (= E[G Wᵀ Gᵀ] etc.).
    V_n, V_m = torch.randn(n, n, dtype=F64, generator=g), torch.randn(m, m, dtype=F64, generator=g)
    CW_b, CW_a = C @ torch.kron(torch.eye(m, dtype=F64), V_n), C @ torch.kron(V_m, torch.eye(n, dtype=F64))
    tr_b = sum(CW_b[j::n, j::n] for j in range(n))  # Σ_j M[(i,j),(k,j)]
    tr_a = sum(CW_a[i * n : (i + 1) * n, i * n : (i + 1) * n] for i in range(m))  # Σ_i M[(i,j),(i,l)]
    torch.testing.assert_close(partial_trace_b(C, (m, n), V_n), tr_b)
    torch.testing.assert_close(partial_trace_a(C, (m, n), V_m), tr_a)
    A, B, X = _sym(m, g), _sym(n, g), G[0]
    torch.testing.assert_close(kron_covariance(A, B) @ X.reshape(-1), (A @ X @ B.T).reshape(-1))


# ----------------------------------------------------------------------------- divergences


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergence_zero_on_diagonal_and_nonnegative(divergence: str) -> None:
    g = torch.Generator().manual_seed(11)
    for _ in range(5):
        X, Y = _spd(6, g, ridge=0.1), _spd(6, g, ridge=0.1)
        assert abs(bregman_divergence(X, X, divergence).item()) <= 1e-12
        assert bregman_divergence(X, Y, divergence).item() > 0


def test_logdet_divergence_is_twice_gaussian_kl() -> None:
    g = torch.Generator().manual_seed(12)
    X, Y = _spd(5, g), _spd(5, g)
    zero = torch.zeros(5, dtype=F64)
    kl = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(zero, covariance_matrix=X),
        torch.distributions.MultivariateNormal(zero, covariance_matrix=Y),
    )
    assert math.isclose(bregman_divergence(X, Y, "logdet").item(), 2 * kl.item(), rel_tol=1e-12)


def test_logdet_divergence_singular_first_argument_is_inf() -> None:
    g = torch.Generator().manual_seed(13)
    v = torch.randn(4, 1, dtype=F64, generator=g)
    assert bregman_divergence(v @ v.T, _spd(4, g), "logdet").item() == math.inf


def test_von_neumann_divergence_commuting_diagonal() -> None:
    x = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=F64)  # 0·log 0 = 0
    y = torch.tensor([0.2, 1.5, 1.0, 0.7], dtype=F64)
    terms = [xi * math.log(xi / yi) if xi > 0 else 0.0 for xi, yi in zip(x.tolist(), y.tolist(), strict=True)]
    expected = sum(terms) - x.sum().item() + y.sum().item()
    g = torch.Generator().manual_seed(14)
    Q = torch.linalg.qr(torch.randn(4, 4, dtype=F64, generator=g)).Q  # a common eigenbasis
    X, Y = Q @ torch.diag(x) @ Q.T, Q @ torch.diag(y) @ Q.T
    assert math.isclose(bregman_divergence(X, Y, "von_neumann").item(), expected, rel_tol=1e-12)


def test_frobenius_divergence_is_half_squared_distance() -> None:
    g = torch.Generator().manual_seed(15)
    X, Y = _sym(5, g), _sym(5, g)
    expected = 0.5 * torch.linalg.matrix_norm(X - Y) ** 2
    assert math.isclose(bregman_divergence(X, Y, "frobenius").item(), expected.item(), rel_tol=1e-14)


# ----------------------------------------------------------------------------- docs/maths.md §3.3 toy


def _toy_cov(seed: int, m: int = 6, n: int = 8, spikes: int = 4, spike: float = 0.3) -> Tensor:
    """Kronecker noise A0 ⊗ B0 (factor spectra log-spaced over one decade, λ_max = 1) plus
    ``spikes`` random unit-norm non-Kronecker rank-one terms of strength ``spike``."""
    g = torch.Generator().manual_seed(seed)

    def factor(d: int) -> Tensor:
        Q = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=g)).Q
        return (Q * torch.logspace(0, -1, d, dtype=F64)) @ Q.T

    C = _kron(factor(m), factor(n))
    V = torch.randn(m * n, spikes, dtype=F64, generator=g)
    V = V / V.norm(dim=0)
    return C + spike * V @ V.T


def _toy_statistics(C: Tensor, m: int, n: int, top: int) -> dict[str, tuple[float, float]]:
    """Per divergence: (λ_max of S^{-1/2} C S^{-1/2}, median_{i ≤ top} |log(u_iᵀ S u_i / λ_i)|)."""
    lam, U = torch.linalg.eigh(C)
    lam, U = lam.flip(0), U.flip(1)  # descending
    out = {}
    for divergence in DIVERGENCES:
        S = kron_covariance(*kronecker_projection(C, (m, n), divergence))
        L = torch.linalg.cholesky(S)
        W = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, C, upper=False).T, upper=False)
        rayleigh = ((U.T @ S) * U.T).sum(1)  # u_iᵀ S u_i
        top_error = (rayleigh / lam).log().abs()[:top].median().item()
        out[divergence] = (torch.linalg.eigvalsh(W).max().item(), top_error)
    return out


def test_toy_spectral_preferences() -> None:
    """F fits the top of C's spectrum best; LD gives the best-bounded whitened spectrum (§3.3).

    Moderate spikes (0.3·λ_max of the noise, about twice its mean eigenvalue), as in the paper's
    "moderate" row. The whitening order LD < vN < F holds on every seed; F's top-8 advantage is a
    strong tendency, not a law: on seed 2 vN edges it (0.167 vs 0.170), so it is asserted on 9 of
    10 seeds and on the mean over seeds.
    """
    m, n, top, seeds = 6, 8, 8, range(10)
    stats = [_toy_statistics(_toy_cov(seed, m, n), m, n, top) for seed in seeds]
    for seed, s in zip(seeds, stats, strict=True):
        assert s["logdet"][0] < s["von_neumann"][0] < s["frobenius"][0], seed
    f_best = [s["frobenius"][1] < min(s["von_neumann"][1], s["logdet"][1]) for s in stats]
    assert sum(f_best) >= 9, f_best
    mean_top = {d: sum(s[d][1] for s in stats) / len(stats) for d in DIVERGENCES}
    assert mean_top["frobenius"] < mean_top["von_neumann"] < mean_top["logdet"], mean_top


# ----------------------------------------------------------------------------- bad inputs

ERROR_CASES = [
    ("divergence", lambda C: kronecker_projection(C, (3, 4), "kl")),
    ("cov", lambda C: kronecker_projection(C[:-1, :-1], (3, 4), "logdet")),
    ("cov", lambda C: kronecker_projection(C, (4, 4), "frobenius")),
    ("cov", lambda C: kronecker_projection(C + torch.triu(torch.ones_like(C), 1), (3, 4), "von_neumann")),
    ("shape", lambda C: kronecker_projection(C, (12, 0), "logdet")),
    ("shape", lambda C: kronecker_projection(C, 12, "logdet")),
    ("divergence", lambda C: bregman_divergence(C, C, "kl")),
    ("X", lambda C: bregman_divergence(C[:, :-1], C, "frobenius")),
    ("Y", lambda C: bregman_divergence(C, C[:-1, :-1], "frobenius")),
    ("Y", lambda C: bregman_divergence(C, -C, "logdet")),
    ("Y", lambda C: bregman_divergence(C, -C, "von_neumann")),
    ("X", lambda C: bregman_divergence(-C, C, "von_neumann")),
    ("X", lambda C: bregman_divergence(-C, C, "logdet")),
    ("X", lambda C: bregman_divergence(torch.triu(C), C, "frobenius")),
    ("weight", lambda C: partial_trace_b(C, (3, 4), torch.eye(3, dtype=F64))),
    (
        "cov",
        lambda C: divergence_weighted_residuals(
            C, torch.eye(4, dtype=F64), torch.eye(4, dtype=F64), "logdet"
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "call"), ERROR_CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(ERROR_CASES)]
)
def test_bad_inputs_raise_value_error_naming_parameter(name: str, call) -> None:
    C = _non_kronecker_cov(3, 4, seed=16)
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call(C)
