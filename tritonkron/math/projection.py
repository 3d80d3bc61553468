"""Dense Kronecker projections under the three Bregman divergences (docs/maths.md §1–§3).

This is the float64-capable specification of what the optimizer's per-step factor rules
approximate: for a gradient covariance C it returns the exact minimiser

    (A, B) = argmin_{A, B ≻ 0} D_φ(C, A ⊗ B)          (variable in the second argument, docs/maths.md §2.1)

for φ ∈ {Frobenius, von Neumann, LogDet}, the divergences themselves, and the divergence-weighted
residuals that vanish at each projection (docs/maths.md §3.2).

Conventions (docs/maths.md §1): ``vec`` is row-major, g = vec(G) = ``G.reshape(-1)``, so
``kron(A, B) @ vec(X) = vec(A X Bᵀ)``. C = E[g gᵀ] is ``[mn, mn]``; its 4-index view
``C4 = C.reshape(m, n, m, n)`` holds C4[i, j, i', j'] = E[G_ij G_i'j']. A ``[m, m]`` acts on rows,
B ``[n, n]`` on columns. Every function is dense (O((mn)²) memory): it is a reference for tests
and small layers, not a training-time code path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tritonkron.math.checks import check_square
from tritonkron.math.eigh_root import eigh_with_fallback
from tritonkron.options import Divergence, parse_divergence

_DTYPES = (torch.float32, torch.float64)
# Default LogDet stopping tolerance on the relative change of the factors per sweep.
_DEFAULT_TOL = {torch.float64: 1e-13, torch.float32: 1e-5}


# ----------------------------------------------------------------------------- validation


def _check_shape(shape: object) -> tuple[int, int]:
    """Return ``(m, n)`` or raise ``ValueError`` naming ``shape``."""
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) != 2
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ValueError(f"shape must be two positive ints (m, n); got {shape!r}")
    return int(shape[0]), int(shape[1])


def _check_square(X: object, name: str, size: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless X is a square float32/float64 matrix (d = ``size``)."""
    check_square(X, name, ndim=2, dtypes=_DTYPES, size=size)


def _symmetrised(X: Tensor, name: str) -> Tensor:
    """Return (X + Xᵀ)/2 after checking ‖X − Xᵀ‖_max ≤ 1e3·eps·‖X‖_max (else ``ValueError``)."""
    tol = 1e3 * torch.finfo(X.dtype).eps * X.abs().max()
    if (X - X.T).abs().max() > tol:
        raise ValueError(f"{name} must be symmetric")
    return 0.5 * (X + X.T)


def _check_cov(cov: Tensor, shape: object) -> tuple[int, int]:
    """Validate that ``cov`` is an ``[mn, mn]`` matrix for ``shape = (m, n)``; return ``(m, n)``."""
    m, n = _check_shape(shape)
    _check_square(cov, "cov", m * n)
    return m, n


def _clamp_psd(w: Tensor, name: str) -> Tensor:
    """Zero eigenvalues ``w`` within rounding of 0; raise if ``name`` is clearly indefinite."""
    tol = 10 * w.numel() * torch.finfo(w.dtype).eps * w.abs().max()
    if w.min() < -tol:
        raise ValueError(f"{name} must be positive semidefinite; smallest eigenvalue {w.min().item():.3g}")
    return torch.where(w <= tol, torch.zeros_like(w), w)


def _eigh(X: Tensor) -> tuple[Tensor, Tensor]:
    """X = U diag(x) Uᵀ, x ascending, from the eigh ladder without its damping rungs (X's dtype,
    then float64; :func:`~tritonkron.math.eigh_root.eigh_with_fallback`).

    A damped decomposition, or the optimizer's identity fallback, would change the value computed
    from it, so here a decomposition that fails in both dtypes raises ``EighFailure``.
    """
    result = eigh_with_fallback(X, max_damping=0.0)
    return result.eigenvalues, result.eigenvectors


def _cholesky(X: Tensor, name: str) -> Tensor:
    """Lower Cholesky factor of ``X``, or ``ValueError`` saying ``name`` must be positive definite."""
    L, info = torch.linalg.cholesky_ex(X)
    if info.item() != 0:
        raise ValueError(f"{name} must be positive definite")
    return L


def _spd_inverse(X: Tensor, name: str) -> Tensor:
    """X⁻¹ of an SPD matrix from its Cholesky factor (exactly symmetric)."""
    inv = torch.cholesky_inverse(_cholesky(X, name))
    return 0.5 * (inv + inv.T)


# ----------------------------------------------------------------------------- partial traces


def partial_trace_b(cov: Tensor, shape: tuple[int, int], weight: Tensor | None = None) -> Tensor:
    """Weighted partial trace over the column factor, Tr_B[C (I ⊗ W)] = E[G Wᵀ Gᵀ].

    .. math:: \\mathrm{Tr}_B[C(I\\otimes W)]_{ik} = \\sum_{j,l} C_{ij,kl} W_{lj}
              = \\texttt{einsum('ijkl,lj->ik', C4, W)}

    For the symmetric weights used throughout (docs/maths.md §1) this is E[G W Gᵀ].

    Args:
        cov: C ``[mn, mn]``.
        shape: ``(m, n)``, the shape of G.
        weight: W ``[n, n]``; ``None`` means W = I (then the result is E[G Gᵀ]).

    Returns:
        ``[m, m]`` in the dtype of ``cov``.

    Raises:
        ValueError: on a bad ``shape``, a ``cov`` not ``[mn, mn]`` or a ``weight`` not ``[n, n]``.
    """
    m, n = _check_cov(cov, shape)
    C4 = cov.reshape(m, n, m, n)
    if weight is None:
        return torch.einsum("ijkj->ik", C4)
    _check_square(weight, "weight", n)
    return torch.einsum("ijkl,lj->ik", C4, weight)


def partial_trace_a(cov: Tensor, shape: tuple[int, int], weight: Tensor | None = None) -> Tensor:
    """Weighted partial trace over the row factor, Tr_A[C (W ⊗ I)] = E[Gᵀ Wᵀ G].

    .. math:: \\mathrm{Tr}_A[C(W\\otimes I)]_{jl} = \\sum_{i,k} C_{ij,kl} W_{ki}
              = \\texttt{einsum('ijkl,ki->jl', C4, W)}

    For the symmetric weights used throughout (docs/maths.md §1) this is E[Gᵀ W G].

    Args:
        cov: C ``[mn, mn]``.
        shape: ``(m, n)``, the shape of G.
        weight: W ``[m, m]``; ``None`` means W = I (then the result is E[Gᵀ G]).

    Returns:
        ``[n, n]`` in the dtype of ``cov``.

    Raises:
        ValueError: on a bad ``shape``, a ``cov`` not ``[mn, mn]`` or a ``weight`` not ``[m, m]``.
    """
    m, n = _check_cov(cov, shape)
    C4 = cov.reshape(m, n, m, n)
    if weight is None:
        return torch.einsum("ijil->jl", C4)
    _check_square(weight, "weight", m)
    return torch.einsum("ijkl,ki->jl", C4, weight)


def kron_covariance(A: Tensor, B: Tensor) -> Tensor:
    """The Kronecker model S = A ⊗ B ``[mn, mn]`` (``torch.kron``) in the row-major vec convention.

    .. math:: (A\\otimes B)\\,\\mathrm{vec}(X) = \\mathrm{vec}(A X B^\\top),
              \\quad \\mathrm{vec}(X) = \\texttt{X.reshape(-1)}

    Args:
        A: row factor ``[m, m]``.
        B: column factor ``[n, n]``.

    Raises:
        ValueError: if A or B is not a square float matrix.
    """
    _check_square(A, "A")
    _check_square(B, "B")
    return torch.kron(A, B)


# ----------------------------------------------------------------------------- projections


def _balance(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Move to the gauge tr(A)/m = tr(B)/n (= √(tr S / mn)) along (A, B) ~ (cA, B/c)."""
    m, n = A.shape[0], B.shape[0]
    c = torch.sqrt(m * B.trace() / (n * A.trace()))
    return A * c, B / c


def _frobenius_factors(cov: Tensor, m: int, n: int) -> tuple[Tensor, Tensor]:
    """Nearest Kronecker product from the top singular triple of R(C) (Van Loan–Pitsianis)."""
    R = cov.reshape(m, n, m, n).permute(0, 2, 1, 3).reshape(m * m, n * n)  # R[(i,i'),(j,j')]
    U, s, Vh = torch.linalg.svd(R, full_matrices=False)
    A = U[:, 0].reshape(m, m) * s[0].sqrt()
    B = Vh[0].reshape(n, n) * s[0].sqrt()
    # The singular pair is defined up to a joint sign; choose the PSD one (tr A > 0).
    if A.trace() < 0:
        A, B = -A, -B
    return A, B


def _von_neumann_factors(cov: Tensor, m: int, n: int) -> tuple[Tensor, Tensor]:
    """Closed form A ⊗ B = Tr_B(C) ⊗ Tr_A(C) / tr C (Shampoo's statistics, docs/maths.md §2.2)."""
    A = partial_trace_b(cov, (m, n))
    B = partial_trace_a(cov, (m, n)) / cov.trace()
    return A, B


def _logdet_factors(cov: Tensor, m: int, n: int, max_iters: int, tol: float) -> tuple[Tensor, Tensor]:
    """Alternate A = Tr_B[C(I⊗B⁻¹)]/n, B = Tr_A[C(A⁻¹⊗I)]/m (the matrix-normal "flip-flop").

    Each half-step is the exact minimiser of D_LD over one factor. A is renormalised to tr A = m
    every sweep so that the change of the pair measures the change of A ⊗ B.
    """
    A = torch.eye(m, dtype=cov.dtype, device=cov.device)
    B = torch.eye(n, dtype=cov.dtype, device=cov.device)
    for _ in range(max_iters):
        A_new = partial_trace_b(cov, (m, n), _spd_inverse(B, "cov (logdet factor B)")) / n
        A_new = A_new * (m / A_new.trace())
        B_new = partial_trace_a(cov, (m, n), _spd_inverse(A_new, "cov (logdet factor A)")) / m
        change = torch.maximum(
            torch.linalg.norm(A_new - A) / torch.linalg.norm(A_new),
            torch.linalg.norm(B_new - B) / torch.linalg.norm(B_new),
        )
        A, B = A_new, B_new
        if change <= tol:
            return A, B
    raise RuntimeError(
        f"logdet Kronecker projection did not converge in max_iters={max_iters} sweeps "
        f"(last relative change {change.item():.3g} > tol={tol:.3g})"
    )


def kronecker_projection(
    cov: Tensor,
    shape: tuple[int, int],
    divergence: str | Divergence,
    *,
    max_iters: int = 1000,
    tol: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Factors (A, B) of the Bregman projection of C onto Kronecker products (docs/maths.md §2.1–§2.2).

    .. math:: (A, B) = \\arg\\min_{A, B \\succ 0} D_\\varphi(C, A \\otimes B)

    - ``"frobenius"``: nearest Kronecker product, A ⊗ B = σ₁ mat(u₁) ⊗ mat(v₁) with (σ₁, u₁, v₁)
      the top singular triple of R(C) ∈ R^{m²×n²}, R[(i,i'),(j,j')] = C[i,j,i',j']
      (Van Loan–Pitsianis). It satisfies A = Tr_B[C(I⊗B)]/‖B‖²_F, B = Tr_A[C(A⊗I)]/‖A‖²_F. The
      joint sign is chosen so that A, B are PSD; they may be nearly singular.
    - ``"von_neumann"``: closed form A ⊗ B = Tr_B(C) ⊗ Tr_A(C) / tr C = E[GGᵀ] ⊗ E[GᵀG] / tr C.
    - ``"logdet"``: the coupled fixed point A = Tr_B[C(I⊗B⁻¹)]/n, B = Tr_A[C(A⁻¹⊗I)]/m
      (KL-Shampoo), solved by alternating exact minimisations until the relative change of the
      factors (in the gauge tr A = m) per sweep is ≤ ``tol``. C must be positive definite.

    Gauge: the pair is returned in the balanced gauge tr(A)/m = tr(B)/n (both equal
    √(tr S / mn), S = A ⊗ B), which fixes the ambiguity (A, B) ~ (cA, B/c).

    Args:
        cov: symmetric PSD covariance C = E[vec(G) vec(G)ᵀ] ``[mn, mn]``, float32 or float64.
        shape: ``(m, n)``, the shape of G.
        divergence: ``"frobenius"``, ``"von_neumann"`` or ``"logdet"``.
        max_iters: maximal number of LogDet sweeps (ignored by the closed forms).
        tol: LogDet stopping tolerance; ``None`` means 1e-13 in float64 and 1e-5 in float32.

    Returns:
        ``(A [m, m], B [n, n])``, symmetric, in the dtype of ``cov``.

    Raises:
        ValueError: on an unknown ``divergence``, a bad ``shape``, a ``cov`` that is not a
            symmetric ``[mn, mn]`` matrix with positive trace, or (LogDet) a singular ``cov``.
        RuntimeError: if the LogDet alternation does not converge within ``max_iters`` sweeps.
    """
    kind = parse_divergence(divergence)
    m, n = _check_cov(cov, shape)
    cov = _symmetrised(cov, "cov")
    if not cov.trace() > 0:
        raise ValueError("cov must have a positive trace (a non-zero PSD covariance)")
    if kind is Divergence.FROBENIUS:
        A, B = _frobenius_factors(cov, m, n)
    elif kind is Divergence.VON_NEUMANN:
        A, B = _von_neumann_factors(cov, m, n)
    else:
        if not isinstance(max_iters, int) or max_iters < 1:
            raise ValueError(f"max_iters must be a positive int; got {max_iters!r}")
        if tol is None:
            tol = _DEFAULT_TOL[cov.dtype]
        A, B = _logdet_factors(cov, m, n, max_iters, tol)
    A, B = _balance(A, B)
    return 0.5 * (A + A.T), 0.5 * (B + B.T)  # exactly symmetric (einsum rounding is not)


# ----------------------------------------------------------------------------- divergences


def _von_neumann_divergence(X: Tensor, Y: Tensor) -> Tensor:
    """tr(X log X − X log Y − X + Y) from the eigendecompositions of X (PSD) and Y (SPD)."""
    x, U = _eigh(X)
    y, V = _eigh(Y)
    if not y.min() > 0:
        raise ValueError("Y must be positive definite for the von Neumann divergence")
    x = _clamp_psd(x, "X")
    # tr(X log Y) = Σ_pq x_p (Uᵀ V)²_pq log y_q.
    x_log_y = ((U.T @ V).square() * x[:, None] * y.log()[None, :]).sum()
    return torch.xlogy(x, x).sum() - x_log_y - x.sum() + y.sum()


def _logdet_divergence(X: Tensor, Y: Tensor) -> Tensor:
    """Σ (μ − log μ − 1) over the eigenvalues μ of Y^{-1/2} X Y^{-1/2} (Cholesky-whitened)."""
    L = _cholesky(Y, "Y")
    M = torch.linalg.solve_triangular(L, X, upper=False)  # L⁻¹ X
    M = torch.linalg.solve_triangular(L, M.T, upper=False)  # L⁻¹ X L⁻ᵀ
    mu = _clamp_psd(_eigh(0.5 * (M + M.T))[0], "X")
    if (mu == 0).any():
        return torch.tensor(float("inf"), dtype=X.dtype, device=X.device)
    return (mu - mu.log() - 1).sum()


def bregman_divergence(X: Tensor, Y: Tensor, divergence: str | Divergence) -> Tensor:
    """Matrix Bregman divergence D_φ(X, Y) = φ(X) − φ(Y) − ⟨∇φ(Y), X − Y⟩ (docs/maths.md §2.1).

    .. math::
        D_F(X, Y) = \\tfrac12 \\|X - Y\\|_F^2, \\qquad
        D_{vN}(X, Y) = \\mathrm{tr}(X\\log X - X\\log Y - X + Y), \\qquad
        D_{LD}(X, Y) = \\mathrm{tr}(XY^{-1}) - \\log\\det(XY^{-1}) - d

    von Neumann: X PSD (0·log 0 = 0), Y SPD, matrix logarithms via ``eigh``. LogDet: Y SPD; it
    equals 2·KL(N(0, X) ‖ N(0, Y)); a (numerically) singular X gives +inf. Eigenvalues within
    10·d·eps·max|λ| of zero count as zero.

    Args:
        X: symmetric ``[d, d]`` (first argument, e.g. the covariance C).
        Y: symmetric ``[d, d]`` (second argument, e.g. the model S = A ⊗ B).
        divergence: ``"frobenius"``, ``"von_neumann"`` or ``"logdet"``.

    Returns:
        0-d tensor in the dtype of X.

    Raises:
        ValueError: on an unknown ``divergence``, non-square, mismatched or non-symmetric X, Y,
            X / Y outside the domain stated above, or non-finite entries (von Neumann, LogDet).
        EighFailure: an eigendecomposition failed in X's dtype and in float64.
    """
    kind = parse_divergence(divergence)
    _check_square(X, "X")
    _check_square(Y, "Y", X.shape[0])
    X, Y = _symmetrised(X, "X"), _symmetrised(Y, "Y")
    if kind is Divergence.FROBENIUS:
        return 0.5 * (X - Y).square().sum()
    if kind is Divergence.VON_NEUMANN:
        return _von_neumann_divergence(X, Y)
    return _logdet_divergence(X, Y)


def divergence_weighted_residuals(
    cov: Tensor, A: Tensor, B: Tensor, divergence: str | Divergence
) -> tuple[Tensor, Tensor]:
    """Partial traces of the residual E = C − A⊗B weighted by the opposite factor (docs/maths.md §3.2).

    .. math::
        F:\\ \\mathrm{Tr}_B[E(I\\otimes B)],\\ \\mathrm{Tr}_A[E(A\\otimes I)] \\qquad
        vN:\\ \\mathrm{Tr}_B[E],\\ \\mathrm{Tr}_A[E] \\qquad
        LD:\\ \\mathrm{Tr}_B[E(I\\otimes B^{-1})],\\ \\mathrm{Tr}_A[E(A^{-1}\\otimes I)]

    Both vanish exactly at the projection of the same divergence (its stationarity conditions,
    the tangent-space projection of ∇²φ(S)[E]) and generally not at another divergence's.

    Args:
        cov: C ``[mn, mn]``.
        A: row factor ``[m, m]`` (SPD for LogDet).
        B: column factor ``[n, n]`` (SPD for LogDet).
        divergence: ``"frobenius"``, ``"von_neumann"`` or ``"logdet"``.

    Returns:
        ``(R_A [m, m], R_B [n, n])``, the residuals of the A- and B-conditions.

    Raises:
        ValueError: on an unknown ``divergence``, inconsistent sizes, or non-SPD factors (LogDet).
    """
    kind = parse_divergence(divergence)
    _check_square(A, "A")
    _check_square(B, "B")
    shape = (A.shape[0], B.shape[0])
    _check_cov(cov, shape)
    E = cov - torch.kron(A, B)
    if kind is Divergence.FROBENIUS:
        w_b, w_a = B, A
    elif kind is Divergence.VON_NEUMANN:
        w_b, w_a = None, None
    else:
        w_b, w_a = _spd_inverse(B, "B"), _spd_inverse(A, "A")
    return partial_trace_b(E, shape, w_b), partial_trace_a(E, shape, w_a)
