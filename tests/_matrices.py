"""Symmetric test matrices with known spectra (identity, tridiagonal, planted, Wishart, PSD).

Matrices with a closed-form eigendecomposition come as :class:`KnownSpectrum`, whose eigenpairs
are kept in float64, so that oracles such as A^{-1/p} are computed without ``torch.linalg.eigh``.
Every function takes the size ``d``, a ``dtype`` for the matrix and, where random, a ``seed``
(an int or a ``torch.Generator``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

F64 = torch.float64


class KnownSpectrum(NamedTuple):
    """A = Q diag(λ) Qᵀ with the eigenpairs known in float64.

    Attributes:
        matrix: ``[d, d]`` symmetric, in the requested dtype.
        eigenvalues: ``[d]`` float64, ascending.
        eigenvectors: ``[d, d]`` float64 orthonormal columns.
    """

    matrix: Tensor
    eigenvalues: Tensor
    eigenvectors: Tensor

    def power(self, exponent: float) -> Tensor:
        """A^exponent = Q diag(λ^exponent) Qᵀ in float64 ``[d, d]``."""
        Q = self.eigenvectors
        return (Q * self.eigenvalues.pow(exponent)) @ Q.T

    def inverse_root(self, p: int) -> Tensor:
        """A^{-1/p} in float64 ``[d, d]`` (infinite along the null space of singular A)."""
        return self.power(-1.0 / p)


def _generator(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)


def random_orthogonal(d: int, seed: int | torch.Generator = 0) -> Tensor:
    """Haar-random orthogonal ``[d, d]`` float64 (QR of a Gaussian, signs fixed by diag R)."""
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=_generator(seed), dtype=F64))
    return Q * torch.sign(R.diagonal()).where(R.diagonal() != 0, 1.0)


def with_spectrum(
    eigenvalues: Tensor, *, dtype: torch.dtype = F64, seed: int | torch.Generator = 0
) -> KnownSpectrum:
    """A = Q diag(λ) Qᵀ with the given eigenvalues ``[d]`` and a random orthogonal Q."""
    lam = eigenvalues.to(F64).sort().values
    Q = random_orthogonal(lam.numel(), seed)
    A = (Q * lam) @ Q.T
    return KnownSpectrum((0.5 * (A + A.T)).to(dtype), lam, Q)


def identity(d: int, *, dtype: torch.dtype = F64) -> KnownSpectrum:
    """A = I (condition number 1)."""
    return KnownSpectrum(torch.eye(d, dtype=dtype), torch.ones(d, dtype=F64), torch.eye(d, dtype=F64))


def tridiagonal(d: int, *, dtype: torch.dtype = F64) -> KnownSpectrum:
    """The 1-D Laplacian tridiag(−1, 2, −1): λ_k = 2 − 2cos(kπ/(d+1)), v_k(j) = √(2/(d+1))·sin(jkπ/(d+1)).

    Condition number ≈ 4(d+1)²/π² (≈ 2.7e4 at d = 257).
    """
    k = torch.arange(1, d + 1, dtype=F64)
    theta = k * math.pi / (d + 1)
    lam = 2.0 - 2.0 * torch.cos(theta)
    Q = math.sqrt(2.0 / (d + 1)) * torch.sin(k[:, None] * theta[None, :])  # Q[j, k], j = row
    A = (
        2.0 * torch.eye(d, dtype=F64)
        - torch.diag(torch.ones(d - 1, dtype=F64), 1)
        - torch.diag(torch.ones(d - 1, dtype=F64), -1)
    )
    return KnownSpectrum(A.to(dtype), lam, Q)


def planted(
    d: int, cond: float, *, scale: float = 1.0, dtype: torch.dtype = F64, seed: int | torch.Generator = 0
) -> KnownSpectrum:
    """SPD with eigenvalues geometrically spaced from scale/cond to scale (condition number ``cond``)."""
    lam = (
        scale * torch.logspace(-math.log10(cond), 0.0, d, dtype=F64)
        if d > 1
        else torch.full((d,), scale, dtype=F64)
    )
    return with_spectrum(lam, dtype=dtype, seed=seed)


def rank_deficient_psd(
    d: int, rank: int, *, dtype: torch.dtype = F64, seed: int | torch.Generator = 0
) -> KnownSpectrum:
    """PSD of the given rank: eigenvalue 0 with multiplicity d − rank, the others evenly spaced in [0.1, 1]."""
    lam = torch.cat([torch.zeros(d - rank, dtype=F64), torch.linspace(0.1, 1.0, rank, dtype=F64)])
    return with_spectrum(lam, dtype=dtype, seed=seed)


def wishart(
    d: int, *, samples: int | None = None, dtype: torch.dtype = F64, seed: int | torch.Generator = 0
) -> Tensor:
    """Sample covariance G Gᵀ / n of n = ``samples`` (default 2d) standard Gaussian columns ``[d, n]``.

    SPD almost surely when n ≥ d; its spectrum follows Marchenko–Pastur (no closed form per draw).
    """
    n = 2 * d if samples is None else samples
    G = torch.randn(d, n, generator=_generator(seed), dtype=F64)
    A = G @ G.T / n
    return (0.5 * (A + A.T)).to(dtype)
