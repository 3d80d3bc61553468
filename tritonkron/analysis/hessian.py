"""Alignment of the layer curvature (GGN / Hessian) with the gradient covariance (docs/maths.md §3.4).

The curvature operators and Lanczos are in :mod:`tritonkron.analysis.curvature`. The
alignment diagnostics (docs/maths.md §3.4 protocol, a reconstruction) are

* the subspace overlap  o(k) = ‖U_kᵀ V_k‖²_F / k  ∈ [0, 1] between the top-k eigenvectors U_k of C
  (or of a Kronecker model A ⊗ B) and V_k of the curvature; for a uniformly random U_k,
  E[o(k)] = k / d;
* Rayleigh quotients ρᵢ = uᵢᵀ H uᵢ of C's eigenvectors (normalised by λ_max(H));
* their stability across minibatch resamples (bootstrap C, fresh curvature batch): the spread of
  ρᵢ and |⟨uᵢ⁽ʳ⁾, uᵢ⟩| against the full-sample eigenvector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tritonkron.analysis.collect import LayerSamples, bootstrap_covariance
from tritonkron.analysis.curvature import EigenPairs, Operator, curvature_operator, lanczos, operator_matrix
from tritonkron.analysis.measures import kronecker_eigh

__all__ = [
    "AlignmentResult",
    "EigenPairs",
    "factor_alignment",
    "Operator",
    "curvature_operator",
    "hessian_alignment",
    "kronecker_top_eigenvectors",
    "lanczos",
    "operator_matrix",
    "probe_indices",
    "rayleigh_quotients",
    "subspace_overlap",
]


def subspace_overlap(U: Tensor, V: Tensor, ks: Sequence[int]) -> Tensor:
    """o(k) = ‖U_kᵀ V_k‖²_F / k for each k, U_k and V_k the first k columns (orthonormal).

    Equal to 1 when the two top-k subspaces coincide, 0 when orthogonal, k/d in expectation for
    a uniformly random subspace of R^d.

    Returns:
        ``[len(ks)]`` float64.
    """
    M = (U.to(torch.float64).T @ V.to(torch.float64)).square()
    return torch.tensor([float(M[:k, :k].sum()) / k for k in ks], dtype=torch.float64)


def kronecker_top_eigenvectors(A: Tensor, B: Tensor, k: int) -> Tensor:
    """The k leading eigenvectors ``[mn, k]`` of A ⊗ B, qᵢ ⊗ r_j ordered by descending aᵢ b_j."""
    _, Qa = torch.linalg.eigh(A)
    _, Qb = torch.linalg.eigh(B)
    _, i, j = kronecker_eigh(A, B)
    i, j = i[:k], j[:k]
    return (Qa[:, i][:, None, :] * Qb[:, j][None, :, :]).reshape(-1, len(i))


def rayleigh_quotients(op: Operator, U: Tensor) -> Tensor:
    """ρᵢ = uᵢᵀ H uᵢ for each (unit) column uᵢ of U, ``[k]`` float64."""
    return torch.stack([U[:, i] @ op(U[:, i]) for i in range(U.shape[1])])


def probe_indices(d: int, top: int, tail: int = 32) -> Tensor:
    """Eigen-indices to probe: 0..top−1 and ``tail`` log-spaced indices in [top, d − 1]."""
    head = torch.arange(min(top, d))
    if top >= d:
        return head
    rest = torch.logspace(
        torch.log10(torch.tensor(float(top))), torch.log10(torch.tensor(float(d - 1))), tail
    )
    rest = torch.unique(rest.round().long().clamp(top, d - 1))
    return torch.cat([head, rest])


@dataclass
class AlignmentResult:
    """Hessian/GGN alignment of one layer's covariance eigenvectors, over R resamples.

    Attributes:
        ks: the k values of the overlap curves.
        overlap: basis name → ``[R, len(ks)]`` overlaps with the curvature's top-k eigenvectors
            (``"C"``: eigenvectors of the resampled C; ``"kron:<div>"``: of A ⊗ B).
        random: ``[len(ks)]`` the random-subspace baseline k / d.
        curvature_values: ``[R, K]`` top curvature eigenvalues (Lanczos).
        index: ``[P]`` probed eigen-indices of C (0-based).
        cov_values: ``[P]`` λ of the full-sample C at those indices.
        rayleigh: ``[R, P]`` ρᵢ / λ_max(H) of the resample's uᵢ under the resample's curvature.
        cosine: ``[R, P]`` |⟨uᵢ⁽ʳ⁾, uᵢ⟩| against the full-sample eigenvector.
    """

    ks: list[int]
    overlap: dict[str, Tensor]
    random: Tensor
    curvature_values: Tensor
    index: Tensor
    cov_values: Tensor
    rayleigh: Tensor
    cosine: Tensor


def hessian_alignment(
    samples: LayerSamples,
    operators: Sequence[Operator],
    eigenvalues: Tensor,
    eigenvectors: Tensor,
    factors: Mapping[str, tuple[Tensor, Tensor]],
    k_max: int = 64,
    damping: float = 1e-3,
    top: int = 32,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> AlignmentResult:
    """Overlap-vs-k, Rayleigh quotients and resample stability for one layer (docs/maths.md §3.4).

    Resample r uses a bootstrap C⁽ʳ⁾ of the gradient samples and the curvature operator
    ``operators[r]`` (a different minibatch each); the Kronecker bases use the full-sample
    projections in ``factors``.

    Args:
        samples: the layer's gradient samples (its sub-grid if it has one).
        operators: one curvature operator per resample, on the same coordinates as ``samples``.
        eigenvalues: λ ``[d]`` of the full-sample (damped) C, descending.
        eigenvectors: ``[d, d]`` matching eigenvectors.
        factors: ``{divergence: (A, B)}`` Kronecker projections of the full-sample C.
        k_max: largest k of the overlap curves (clamped to d).
        damping: relative damping of the bootstrap covariances (as for the full-sample C).
        top: the probed indices are 0..top−1 plus a log-spaced tail (:func:`probe_indices`).
        seed: seed of the bootstrap and of Lanczos.
        progress: called with 1 after each resample.

    Returns:
        The :class:`AlignmentResult`.
    """
    d = eigenvectors.shape[0]
    K = min(k_max, d)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, K) if k <= K})
    index = probe_indices(d, top)
    gen = torch.Generator().manual_seed(seed)
    kron_bases = {f"kron:{div}": kronecker_top_eigenvectors(A, B, K) for div, (A, B) in factors.items()}
    overlap: dict[str, list[Tensor]] = {"C": [], **{name: [] for name in kron_bases}}
    curv, rq, cos = [], [], []
    for r, op in enumerate(operators):
        Cr = bootstrap_covariance(samples, damping, gen)
        _, Ur = torch.linalg.eigh(Cr)
        Ur = Ur.flip(1)
        pairs = lanczos(op, d, K, seed=seed + r)
        curv.append(pairs.values)
        overlap["C"].append(subspace_overlap(Ur[:, :K], pairs.vectors, ks))
        for name, basis in kron_bases.items():
            overlap[name].append(subspace_overlap(basis, pairs.vectors, ks))
        probes = Ur[:, index]
        rq.append(rayleigh_quotients(op, probes) / pairs.values[0])
        cos.append((probes * eigenvectors[:, index]).sum(0).abs())
        if progress is not None:
            progress(1)
    return AlignmentResult(
        ks=ks,
        overlap={name: torch.stack(v) for name, v in overlap.items()},
        random=torch.tensor([k / d for k in ks], dtype=torch.float64),
        curvature_values=torch.stack(curv),
        index=index,
        cov_values=eigenvalues[index],
        rayleigh=torch.stack(rq),
        cosine=torch.stack(cos),
    )


def factor_alignment(
    model: nn.Module,
    forward: Callable[[nn.Module, Any], Tensor],
    criterion: Callable[[Tensor, Any], Tensor],
    batches: Sequence[Any],
    samples: LayerSamples,
    k_max: int = 64,
    kind: str = "ggn",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[int], Tensor]:
    """Overlap of the full layer's factor statistics with its full-layer curvature (large layers).

    The basis is the top-k eigenvectors of L ⊗ R, L = E[G Gᵀ], R = E[Gᵀ G] (the von Neumann
    projection, docs/maths.md §2.2, which needs no dense covariance); the curvature's top-k come from
    Lanczos on the whole mn-dimensional layer, one batch per resample.

    Returns:
        ``(ks, overlap [len(batches), len(ks)])``.
    """
    d = samples.shape[0] * samples.shape[1]
    K = min(k_max, d)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, K) if k <= K})
    basis = kronecker_top_eigenvectors(samples.left, samples.right, K)
    rows = []
    for r, batch in enumerate(batches):
        op, _ = curvature_operator(model, forward, criterion, batch, samples.name, kind)
        rows.append(subspace_overlap(basis, lanczos(op, d, K, seed=seed + r).vectors, ks))
        if progress is not None:
            progress(1)
    return ks, torch.stack(rows)
