"""The sketch's coupling weights and its Rayleigh–Ritz refresh of the due blocks (docs/maths.md §6.2).

Between refreshes a sketched factor keeps its basis U and tracks its compression H = Uᵀ X̃ U
(:func:`tritonkron.step.sketched.track_sketch_statistics`). Every T = ``precondition_every`` steps,
on the host schedule of :mod:`tritonkron.step.schedule`, a block instead takes the Rayleigh–Ritz step
of :func:`tritonkron.ops.sketch.sketch_update` from its state before this step's tracking, with
the stored compression H as the old sketch:

    Q = qr([U, K U]),   Qᵀ (β X̃ + K) Q = Z diag(μ) Zᵀ,   U' = Q Z[:, :ℓ],   H' = diag(μ[:ℓ]),

and τ' from the conserved trace. Only the due blocks are gathered and computed
(:func:`tritonkron.step.traceable.refresh_blocks`), so a step factorises ⌈B/T⌉ or ⌊B/T⌋ of a
group's B blocks, and none on the steps where none is due. A due block whose Rayleigh–Ritz result
is not finite keeps this step's tracked sketch (its stale basis) and counts one more consecutive
failure in ``refresh_failures``; an accepted refresh resets the count. Both are decided on the
device (``torch.where``): the eigh's result is not read back
(:func:`~tritonkron.math.safe_linalg.unread_eigh`), so the refresh adds no host read to the one
inside each ``torch.linalg.eigh`` (its LAPACK/cuSOLVER error check).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from tritonkron.math.divergences import coupling
from tritonkron.ops.precondition.reference import floor_eigenvalues
from tritonkron.ops.sketch import sketch_update
from tritonkron.ops.sketch.reference import virtual_spectrum
from tritonkron.options import KronSettings
from tritonkron.state import (
    BASIS_A,
    BASIS_B,
    COMPRESSION_A,
    COMPRESSION_B,
    EIG_A,
    EIG_B,
    FAILURES,
    TAIL_A,
    TAIL_B,
)
from tritonkron.step.dense import counted_failures, finite_blocks, flatten_tail, masked_where
from tritonkron.step.traceable import Refresh, refresh_blocks

__all__ = ["REFRESH_KEYS", "CouplingWeight", "refresh_sketches", "refreshed_sketches", "sketch_weights"]

REFRESH_KEYS = (BASIS_A, BASIS_B, COMPRESSION_A, COMPRESSION_B, EIG_A, EIG_B, TAIL_A, TAIL_B, FAILURES)
PRIOR_KEYS = (COMPRESSION_A, COMPRESSION_B, EIG_A, EIG_B, TAIL_A, TAIL_B, FAILURES)
_PRIOR = tuple(f"prior_{key}" for key in PRIOR_KEYS) + ("grad",)


class CouplingWeight(NamedTuple):
    """The other factor's weight W = V diag(w) Vᵀ + w_τ (I − V Vᵀ) and the increment's scale s.

    Attributes:
        V: basis ``[B, e, ℓ']`` (ℓ' may be 0: W = w_τ I); w: ``[B, ℓ']``; w_tau: ``[B]``;
        scale: s ``[B]``, including the (1 − β₂) of the EMA.
    """

    V: Tensor
    w: Tensor
    w_tau: Tensor
    scale: Tensor


def _coupling_weight(
    basis: Tensor, weight: Tensor | None, settings: KronSettings
) -> tuple[Tensor, Tensor, Tensor]:
    """(V, w, w_τ) of W = V diag(w) Vᵀ + w_τ (I − V Vᵀ) from a weight vector over the virtual spectrum.

    ``weight`` ``[B, d]`` is the divergence's elementwise weight (1/x or x) of the other factor's
    floored virtual spectrum, or None for W = I. With ``flat_tail_in_stats`` only the top k
    directions keep their own weight (the rest share the tail-mean's weight, set by the caller).
    """
    ell = basis.shape[-1]
    if weight is None:
        ones = torch.ones(basis.shape[0], dtype=basis.dtype, device=basis.device)
        return basis[..., :0], ones[:, None][:, :0], ones
    d = weight.shape[-1]
    if settings.flat_tail_in_stats and settings.rank is not None:
        ell = min(ell, settings.rank)
    V, w = basis[..., :ell], weight[..., :ell]
    # A complete basis has no complement: w_τ multiplies I − V Vᵀ = 0, and 0 keeps W exact.
    w_tau = weight[..., ell] if ell < d else torch.zeros_like(weight[..., 0])
    return V, w, w_tau


def sketch_weights(
    basis_a: Tensor,
    basis_b: Tensor,
    eig_a: Tensor,
    eig_b: Tensor,
    tail_a: Tensor,
    tail_b: Tensor,
    settings: KronSettings,
) -> tuple[CouplingWeight, CouplingWeight]:
    """The weights of the left increment (W from B̃) and of the right one (W from Ã).

    The sketches' floored virtual spectra x = (λ₁…λ_ℓ, τ…τ), λ the tracked eigenvalues diag(H),
    go through the dense rule of docs/maths.md §2.3 (LogDet w = 1/x, Frobenius w = x, von Neumann
    W = I; scales s_A, s_B times 1 − β₂), as the dense path's tracked eigenvalues do.
    """
    m, n = basis_a.shape[-2], basis_b.shape[-2]
    a = floor_eigenvalues(virtual_spectrum(eig_a, tail_a, m), settings.eig_floor)
    b = floor_eigenvalues(virtual_spectrum(eig_b, tail_b, n), settings.eig_floor)
    if settings.flat_tail_in_stats:
        a, b = flatten_tail(a, settings.rank_a), flatten_tail(b, settings.rank_b)
    rule = coupling(settings.divergence, a, b)
    retained = 1 - settings.beta2
    left = CouplingWeight(*_coupling_weight(basis_b, rule.left_weight, settings), retained * rule.left_scale)
    right = CouplingWeight(
        *_coupling_weight(basis_a, rule.right_weight, settings), retained * rule.right_scale
    )
    return left, right


def refreshed_sketches(
    basis_a: Tensor,
    basis_b: Tensor,
    compression_a: Tensor,
    compression_b: Tensor,
    eig_a: Tensor,
    eig_b: Tensor,
    tail_a: Tensor,
    tail_b: Tensor,
    failures: Tensor,
    *prior_and_due: Tensor,
    settings: KronSettings,
) -> tuple[Tensor, ...]:
    """New ``REFRESH_KEYS`` values: the Rayleigh–Ritz step for the ``due`` blocks (pure).

    The first nine arguments are the tracked state of this step (kept where a block is not due
    or its refresh is not finite); ``prior_and_due`` holds the state before the tracking
    (``PRIOR_KEYS`` order), the gradient ``[B, m, n]`` and ``due [B]``. Both factors are refreshed
    from the prior sketches (a simultaneous update, as the tracking).
    """
    comp_a, comp_b, prior_eig_a, prior_eig_b, prior_tail_a, prior_tail_b, prior_failures, G, due = (
        prior_and_due
    )
    left, right = sketch_weights(
        basis_a, basis_b, prior_eig_a, prior_eig_b, prior_tail_a, prior_tail_b, settings
    )
    beta, precision = settings.beta2, settings.precision
    U_a, lam_a, tau_a = sketch_update(
        basis_a, comp_a, prior_tail_a, G, *left, beta, "left", precision=precision
    )
    U_b, lam_b, tau_b = sketch_update(
        basis_b, comp_b, prior_tail_b, G, *right, beta, "right", precision=precision
    )
    accepted = due & finite_blocks(U_a, lam_a, tau_a, U_b, lam_b, tau_b)
    new = (U_a, U_b, torch.diag_embed(lam_a), torch.diag_embed(lam_b), lam_a, lam_b, tau_a, tau_b)
    old = (basis_a, basis_b, compression_a, compression_b, eig_a, eig_b, tail_a, tail_b)
    kept = tuple(masked_where(accepted, v.to(o.dtype), o) for v, o in zip(new, old, strict=True))
    return (*kept, torch.where(due, counted_failures(prior_failures, due, accepted), failures))


def refresh_sketches(
    state: dict[str, Tensor],
    prior: dict[str, Tensor],
    G: Tensor,
    refresh: Refresh,
    active: Tensor,
    settings: KronSettings,
) -> None:
    """Refresh the blocks ``refresh`` selects among ``active [B]`` (:func:`refreshed_sketches`).

    ``state`` holds this step's tracked sketches, ``prior`` the ``PRIOR_KEYS`` values before the
    tracking; only the selected blocks are gathered (:func:`tritonkron.step.traceable.refresh_blocks`).
    """
    work = {**state, **{f"prior_{key}": prior[key] for key in PRIOR_KEYS}, "grad": G}
    fn = partial(refreshed_sketches, settings=settings)
    refresh_blocks(work, REFRESH_KEYS, fn, refresh, active, inputs=_PRIOR)
    state.update({key: work[key] for key in REFRESH_KEYS})
