"""Factorisations of the optimizer step that never raise: :func:`safe_eigh`, :func:`unread_eigh`
and :func:`safe_svd`.

A failing ``torch.linalg.eigh`` (LAPACK/cuSOLVER "failed to converge", a non-finite result) must
neither stop training nor write NaN into parameters or optimizer state. Every eigendecomposition
reachable from ``Kron.step``, X = V diag(λ) Vᵀ, comes from :func:`safe_eigh` (or, where the
caller rejects a non-finite result on the device, :func:`unread_eigh`), which runs the ladder
of :func:`tritonkron.math.eigh_root.eigh_with_fallback` (X's dtype → float64 → float64 on
X + δ·s·I with s = tr X / d and δ = 1e-10, 1e-8, … , 1e-3; a damped rung's eigenvalues are shifted
back by δ·s, so λ are X's own) and, when every rung fails,

1. retries the members of the batch one at a time, so that one bad matrix does not take the
   others down with it;
2. gives each member that still fails the *identity fallback*: V = I, the basis in whose
   coordinates the caller wrote X (its current basis), and λ_i = X_ii, the Rayleigh quotients of X
   in that basis (the stale-basis estimate the optimizer keeps between refreshes), in eigh's order;
3. marks that member ``ok = False`` and emits one :class:`LinalgFallbackWarning` per call site.

What a failed member means for its block is decided by the caller:

=============================================  ===============================================
call site                                      on failure
=============================================  ===============================================
dense initialisation, eigh of G Gᵀ and Gᵀ G    the block stays uninitialised (no update, as before
(``preconditioner.initial_values``)            its first gradient), ``refresh_failures`` grows,
                                               and it is retried with the next gradient
degenerate-basis canonicalisation              eigh's own basis of the degenerate eigenspace is
(``basis.canonical_degenerate_basis``)         kept (valid, only not scale-canonical)
sketch Rayleigh–Ritz step (``reference.sketch  an eigh that raises: the candidate basis's own
.rayleigh_ritz`` and its Triton twin;          directions with their Rayleigh quotients (trace
:func:`unread_eigh`)                           conserved); a non-finite result, from an eigh that
                                               did not raise or from the rest of the step, is
                                               rejected on the device by
                                               ``sketch_refresh.refreshed_sketches`` (the block keeps
                                               its tracked sketch, ``refresh_failures`` grows)
sketch initialisation, thin SVD of G           the block stays uninitialised, ``refresh_failures``
(``reference.sketch.top_singular_subspaces``)  grows (:func:`safe_svd`: G's dtype, then float64)
=============================================  ===============================================

QR (the basis refresh's power step, the sketch's candidate basis) has no convergence failure; its
non-finite output is caught by the callers' finiteness checks. Under ``torch.compile`` both
functions are opaque custom ops (``tritonkron::safe_eigh``, ``tritonkron::safe_svd``): the retries
are host-side ``try``/``except``. A ``torch.linalg.eigh`` still checks its LAPACK/cuSOLVER error
code on the host (inside ATen: there is no ``eigh_ex``); :func:`unread_eigh` adds no read to it,
where the ladder reads every rung's finiteness.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from tritonkron.math.checks import work_dtype
from tritonkron.math.eigh_root import EighFailure, damping_scale, eigh_ladder

__all__ = [
    "MAX_DAMPING",
    "SITE_CANONICAL",
    "SITE_INIT",
    "SITE_SKETCH",
    "SITE_SKETCH_INIT",
    "Eigenpairs",
    "LinalgFallbackWarning",
    "SafeEigh",
    "SafeSvd",
    "SvdFailure",
    "safe_eigh",
    "safe_svd",
    "sort_descending",
    "unread_eigh",
]

logger = logging.getLogger(__name__)

MAX_DAMPING = 1e-3  # largest relative damping δ of the ladder's last rung
SITE_INIT = "dense initialisation (eigh of G Gᵀ, Gᵀ G)"
SITE_CANONICAL = "degenerate-basis canonicalisation"
SITE_SKETCH = "sketch Rayleigh–Ritz update"
SITE_SKETCH_INIT = "sketch initialisation (SVD of G)"

_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class LinalgFallbackWarning(RuntimeWarning):
    """A factorisation failed in every attempt and its identity fallback was used."""


class SvdFailure(RuntimeError):
    """Both rungs of the SVD ladder (the input's dtype, float64) failed."""


class Eigenpairs(NamedTuple):
    """Eigenvalues ``[B, k]`` in descending order and their eigenvectors ``[B, d, k]`` as columns."""

    values: Tensor
    vectors: Tensor


class SafeEigh(NamedTuple):
    """X = V diag(λ) Vᵀ from :func:`safe_eigh`.

    Attributes:
        values: λ ``[..., d]``, ascending (descending on request).
        vectors: V ``[..., d, d]``, orthonormal columns in the order of ``values``.
        ok: ``[...]`` bool, False where the identity fallback replaced a failed decomposition.
    """

    values: Tensor
    vectors: Tensor
    ok: Tensor


class SafeSvd(NamedTuple):
    """Thin G = U diag(σ) Vh from :func:`safe_svd` (k = min(m, n)).

    Attributes:
        U: ``[..., m, k]``; S: σ ``[..., k]`` descending; Vh: ``[..., k, n]``.
        ok: ``[...]`` bool, False where the fallback U = I, σ = 0, Vh = I replaced a failed SVD.
    """

    U: Tensor
    S: Tensor
    Vh: Tensor
    ok: Tensor


def sort_descending(values: Tensor, vectors: Tensor) -> Eigenpairs:
    """Permute eigenpairs so that ``values`` are descending along the last dim (ties keep order)."""
    order = torch.argsort(values, dim=-1, descending=True, stable=True)
    values = torch.gather(values, -1, order)
    vectors = torch.gather(vectors, -1, order.unsqueeze(-2).expand_as(vectors))
    return Eigenpairs(values, vectors)


Factorisation = Callable[[Tensor], tuple[Tensor, ...]]


def _laid_out(A: Tensor, column_major: bool = False) -> Tensor:
    """``A`` with the canonical strides of a fresh tensor stored row by row or, for ``[..., r, c]``
    matrices, column by column (LAPACK's layout); ``A`` itself when it already has them.

    The layout of a factor decides how the products that use it round, and ``torch.compile``
    guards on strides, so every path (success, per-member retry, fallback; eager or the compiled
    custom op and its fake) hands out the same one.
    """
    if column_major:
        target = A.new_empty(*A.shape[:-2], A.shape[-1], A.shape[-2]).transpose(-1, -2)
    else:
        target = A.new_empty(A.shape)
    return A if A.stride() == target.stride() else target.copy_(A)


def _isolated(
    attempt: Factorisation, fallback: Factorisation, X: Tensor
) -> tuple[tuple[Tensor, ...], Tensor, int]:
    """``attempt`` on the batch ``X [N, ...]``; if it fails, on each member alone, and ``fallback``
    for the members that fail alone. Returns (outputs, ok ``[N]``, number of failed members)."""
    try:
        return attempt(X), torch.ones(X.shape[0], dtype=torch.bool, device=X.device), 0
    except (EighFailure, SvdFailure) as err:
        logger.debug("factorisation of a batch of %d failed: %s", X.shape[0], err)
    if X.shape[0] <= 1:
        return fallback(X), torch.zeros(X.shape[0], dtype=torch.bool, device=X.device), X.shape[0]
    parts = [_isolated(attempt, fallback, X[i : i + 1]) for i in range(X.shape[0])]
    outputs = tuple(torch.cat(column) for column in zip(*(part[0] for part in parts), strict=True))
    return outputs, torch.cat([part[1] for part in parts]), sum(part[2] for part in parts)


def _warn(kind: str, site: str, failed: int, total: int) -> None:
    """Log every fallback; warn once per call site (the message does not vary with the counts)."""
    logger.info("%s failed in every attempt for %d of %d matrices at %s", kind, failed, total, site)
    warnings.warn(
        f"{kind} failed in every attempt at {site}; the affected matrices keep their current basis "
        "(identity fallback), training goes on (what each call site does: tritonkron.math.safe_linalg)",
        LinalgFallbackWarning,
        stacklevel=2,
    )


def _eigh_attempt(S: Tensor) -> tuple[Tensor, Tensor]:
    """Ascending (λ, V) of symmetric ``S [N, d, d]`` from the ladder, in S's dtype; a damped rung's
    λ(S + δ·s·I) are shifted back by δ·s (s = tr S / d), the eigenvectors are S's already."""
    res = eigh_ladder(S, MAX_DAMPING)
    values = res.eigenvalues
    if res.damping > 0:
        values = values - res.damping * damping_scale(S.to(values.dtype)).unsqueeze(-1)
    return values.to(S.dtype), res.eigenvectors.to(S.dtype)


def _eigh_fallback(S: Tensor) -> tuple[Tensor, Tensor]:
    """The Rayleigh–Ritz pairs of the identity basis: λ = diag(S) ascending, V = I with its columns
    in the same order (``S [N, d, d]``)."""
    values, order = torch.sort(S.diagonal(dim1=-2, dim2=-1), dim=-1, stable=True)
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device).expand_as(S)
    return values, eye.gather(-1, order.unsqueeze(-2).expand_as(S))


def _safe_eigh(X: Tensor, descending: bool, site: str) -> tuple[Tensor, Tensor, Tensor]:
    """Eager body of :func:`safe_eigh`: (λ, V, ok) with X = V diag(λ) Vᵀ where ok."""
    d = X.shape[-1]
    S = X.to(work_dtype(X.dtype)).reshape(-1, d, d)
    (values, vectors), ok, failed = _isolated(_eigh_attempt, _eigh_fallback, S)
    if failed:
        _warn("eigh", site, failed, S.shape[0])
    return _eigh_output(X, values, vectors, descending) + (_laid_out(ok.reshape(X.shape[:-2])),)


def _eigh_output(X: Tensor, values: Tensor, vectors: Tensor, descending: bool) -> tuple[Tensor, Tensor]:
    """(λ, V) of the flattened ``X [N, d, d]`` in X's dtype and batch shape, sorted on request and
    laid out as every path of :func:`safe_eigh` hands them out (:func:`_laid_out`)."""
    values = values.to(X.dtype).reshape(X.shape[:-1])
    vectors = vectors.to(X.dtype).reshape(X.shape)
    if descending:  # gathered: row-major, like any sorted eigenbasis of the step
        values, vectors = sort_descending(values, vectors)
        return _laid_out(values), _laid_out(vectors)
    return _laid_out(values), _laid_out(vectors, column_major=True)


def unread_eigh(X: Tensor, *, site: str, descending: bool = False) -> tuple[Tensor, Tensor]:
    """X = V diag(λ) Vᵀ (λ, V) as :func:`safe_eigh` gives them, with no read of the result on the host.

    One ``torch.linalg.eigh`` of X in its work dtype: where it succeeds, the same bits as
    :func:`safe_eigh`. Its output is not checked: a member whose eigendecomposition is not finite
    stays not finite, for the caller to reject on the device (``torch.where``, as the sketch's
    refresh does, :func:`tritonkron.step.sketch_refresh.refreshed_sketches`). Only an eigh that
    raises (its own LAPACK/cuSOLVER error check) takes :func:`safe_eigh`'s ladder and fallback.
    Under ``torch.compile`` it is :func:`safe_eigh`'s custom op.
    """
    if torch.compiler.is_compiling():
        return safe_eigh(X, site=site, descending=descending)[:2]
    d = X.shape[-1]
    try:
        values, vectors = torch.linalg.eigh(X.to(work_dtype(X.dtype)).reshape(-1, d, d))
    except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
        if isinstance(err, _OOM):
            raise
        return safe_eigh(X, site=site, descending=descending)[:2]
    return _eigh_output(X, values, vectors, descending)


@torch.library.custom_op("tritonkron::safe_eigh", mutates_args=())
def _safe_eigh_op(X: Tensor, descending: bool, site: str) -> tuple[Tensor, Tensor, Tensor]:
    return _safe_eigh(X, descending, site)


@_safe_eigh_op.register_fake
def _(X, descending, site):  # noqa: ANN001, ANN202 - signature mirrors the op
    vectors = X.new_empty(X.shape)
    ok = X.new_empty(X.shape[:-2], dtype=torch.bool)
    return X.new_empty(X.shape[:-1]), _laid_out(vectors, column_major=not descending), ok


def safe_eigh(X: Tensor, *, site: str, descending: bool = False) -> SafeEigh:
    """X = V diag(λ) Vᵀ for symmetric ``X [..., d, d]`` with the fallback ladder; never raises.

    X is read like ``torch.linalg.eigh`` reads it (lower triangle): symmetrise it first where
    rounding may have made it asymmetric. Ladder, fallback and the meaning of ``ok``: module doc.
    On success the result is exactly that of ``torch.linalg.eigh`` in X's dtype (float16/bfloat16
    are computed in float32), cast back to X's dtype.

    Args:
        X: symmetric matrices ``[..., d, d]``, floating point (may contain NaN/Inf: those members fail).
        site: name of the call site, used in the warning.
        descending: order λ descending (ties keep eigh's order, :func:`sort_descending`) instead of
            eigh's ascending order.

    Returns:
        :class:`SafeEigh` ``(values [..., d], vectors [..., d, d], ok [...])`` in X's dtype.
    """
    op = _safe_eigh_op if torch.compiler.is_compiling() else _safe_eigh
    return SafeEigh(*op(X, descending, site))


def _svd_attempt(G: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of ``G [N, m, n]`` in G's dtype, else in float64 (cast back); finite or raises."""
    errors: list[str] = []
    for dtype in dict.fromkeys((G.dtype, torch.float64)):
        try:
            U, S, Vh = torch.linalg.svd(G.to(dtype), full_matrices=False)
        except RuntimeError as err:  # torch.linalg.LinAlgError is a RuntimeError
            if isinstance(err, _OOM):
                raise
            errors.append(f"{type(err).__name__}: {err}")
            continue
        if bool(torch.isfinite(U).all() & torch.isfinite(S).all() & torch.isfinite(Vh).all()):
            return U.to(G.dtype), S.to(G.dtype), Vh.to(G.dtype)
        errors.append("non-finite SVD")
    raise SvdFailure("; ".join(errors))


def _svd_fallback(G: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """U = I ``[N, m, k]``, σ = 0 ``[N, k]``, Vh = I ``[N, k, n]`` (k = min(m, n))."""
    batch, m, n = G.shape
    k = min(m, n)
    kw = {"dtype": G.dtype, "device": G.device}
    eye_m, eye_n = torch.eye(m, k, **kw), torch.eye(k, n, **kw)
    return eye_m.repeat(batch, 1, 1), torch.zeros(batch, k, **kw), eye_n.repeat(batch, 1, 1)


def _safe_svd(G: Tensor, site: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Eager body of :func:`safe_svd`: (U, σ, Vh, ok) with G = U diag(σ) Vh where ok."""
    m, n = G.shape[-2:]
    k = min(m, n)
    batch = G.shape[:-2]
    flat = G.to(work_dtype(G.dtype)).reshape(-1, m, n)
    (U, S, Vh), ok, failed = _isolated(_svd_attempt, _svd_fallback, flat)
    if failed:
        _warn("SVD", site, failed, flat.shape[0])
    U, S, Vh = (
        t.to(G.dtype) for t in (U.reshape(*batch, m, k), S.reshape(*batch, k), Vh.reshape(*batch, k, n))
    )
    return (
        _laid_out(U, column_major=True),
        _laid_out(S),
        _laid_out(Vh, column_major=True),
        _laid_out(ok.reshape(batch)),
    )


@torch.library.custom_op("tritonkron::safe_svd", mutates_args=())
def _safe_svd_op(G: Tensor, site: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _safe_svd(G, site)


@_safe_svd_op.register_fake
def _(G, site):  # noqa: ANN001, ANN202 - signature mirrors the op
    *batch, m, n = G.shape
    k = min(m, n)
    return (
        _laid_out(G.new_empty(*batch, m, k), column_major=True),
        G.new_empty(*batch, k),
        _laid_out(G.new_empty(*batch, k, n), column_major=True),
        G.new_empty(batch, dtype=torch.bool),
    )


def safe_svd(G: Tensor, *, site: str) -> SafeSvd:
    """Thin SVD G = U diag(σ) Vh of ``G [..., m, n]``, retried in float64; never raises.

    On success the result is exactly ``torch.linalg.svd(G, full_matrices=False)`` (float16/bfloat16
    computed in float32). Members that fail in both dtypes (or contain NaN/Inf) get U = I, σ = 0,
    Vh = I and ``ok = False``, with one :class:`LinalgFallbackWarning` per call site.

    Args:
        G: ``[..., m, n]`` floating point.
        site: name of the call site, used in the warning.

    Returns:
        :class:`SafeSvd` ``(U [..., m, k], S [..., k], Vh [..., k, n], ok [...])`` in G's dtype.
    """
    op = _safe_svd_op if torch.compiler.is_compiling() else _safe_svd
    return SafeSvd(*op(G, site))
