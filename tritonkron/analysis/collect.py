"""Per-layer gradient samples and their covariance (docs/maths.md §1).

**Hook API.** Any model can be studied through one callable,
``loss_fn(model, batch) -> scalar Tensor``: :func:`collect_gradients` calls it once per batch,
differentiates it with respect to the chosen weight matrices and keeps one gradient sample G per
batch and layer. A weight with more than two dimensions (e.g. a convolution kernel) is viewed as
``[shape[0], prod(shape[1:])]``. Example::

    def loss_fn(model, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(model(x), y)

    samples = collect_gradients(model, loss_fn, batches, layers=["0.weight"])
    cov = covariance(samples["0.weight"], damping=1e-3)

**Large layers.** The dense covariance C = E[vec(G) vec(G)ᵀ] of an m × n layer has (mn)² entries.
For mn > ``max_dim`` only a random **sub-grid** of coordinates G[I, J] (|I| |J| ≤ ``max_dim``) is
kept; its covariance is the principal sub-matrix C[(I,J),(I,J)], and a Kronecker model restricts
to it exactly, (A ⊗ B)[(I,J),(I,J)] = A[I,I] ⊗ B[J,J], so the study on the sub-grid is a study of
a smaller Kronecker problem. The full layer's factor statistics L = E[G Gᵀ], R = E[Gᵀ G] and
tr C = E‖G‖²_F (the von Neumann projection S = L ⊗ R / tr C, docs/maths.md §2.2) are always accumulated.
:attr:`LayerSamples.note` says which case applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LayerSamples",
    "LossFn",
    "bootstrap_covariance",
    "collect_gradients",
    "covariance",
    "default_subgrid",
    "kronecker_samples",
    "matrix_layers",
    "noise_samples",
    "spiked_covariance",
]

_CHUNK = 128  # gradient samples per factor-statistics GEMM

LossFn = Callable[[nn.Module, Any], Tensor]
"""``loss_fn(model, batch) -> scalar loss``: the hook through which gradients are sampled."""


@dataclass
class LayerSamples:
    """Gradient samples of one weight matrix.

    Attributes:
        name: parameter name in ``model.named_parameters()``.
        shape: ``(m, n)`` of the full (matricised) weight.
        grads: ``[S, m', n']`` float64 gradient samples: the whole G, or G[rows][:, cols].
        rows: sub-grid row indices ``[m']`` (``None``: all rows).
        cols: sub-grid column indices ``[n']`` (``None``: all columns).
        left: L = E[G Gᵀ] ``[m, m]`` of the full layer, float64.
        right: R = E[Gᵀ G] ``[n, n]`` of the full layer, float64.
        trace: tr C = E‖G‖²_F of the full layer.
    """

    name: str
    shape: tuple[int, int]
    grads: Tensor
    rows: Tensor | None
    cols: Tensor | None
    left: Tensor
    right: Tensor
    trace: float

    @property
    def subset(self) -> bool:
        """Whether only a coordinate sub-grid is kept (the dense study is of that sub-grid)."""
        return self.rows is not None or self.cols is not None

    @property
    def sub_shape(self) -> tuple[int, int]:
        """``(m', n')`` of the kept coordinates."""
        return int(self.grads.shape[1]), int(self.grads.shape[2])

    @property
    def num_samples(self) -> int:
        """S, the number of gradient samples."""
        return int(self.grads.shape[0])

    @property
    def note(self) -> str:
        """One sentence on what the dense covariance of these samples covers."""
        m, n = self.shape
        if not self.subset:
            return f"dense covariance of the full {m}x{n} layer ({m * n} coordinates, {self.num_samples} samples)"
        mp, np_ = self.sub_shape
        return (
            f"{m}x{n} layer too large for a dense covariance ({m * n} coordinates): dense study of a random "
            f"{mp}x{np_} sub-grid of rows x columns ({mp * np_} coordinates, {self.num_samples} samples); "
            f"full-layer factor statistics E[GG^T] ({m}x{m}) and E[G^TG] ({n}x{n}) kept"
        )


def matrix_layers(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, nn.Parameter]:
    """The parameters to study: the named ones, or every trainable parameter with ≥ 2 dims.

    Raises:
        KeyError: a requested name is not a parameter of ``model``.
        ValueError: a requested parameter has fewer than 2 dimensions.
    """
    params = dict(model.named_parameters())
    if layers is None:
        return {k: p for k, p in params.items() if p.dim() >= 2 and p.requires_grad}
    out = {}
    for name in layers:
        if name not in params:
            raise KeyError(f"{name!r} is not a parameter of the model (have: {', '.join(params)})")
        if params[name].dim() < 2:
            raise ValueError(f"{name!r} has shape {tuple(params[name].shape)}; need a matrix (>= 2 dims)")
        out[name] = params[name]
    return out


def default_subgrid(
    shape: tuple[int, int], max_dim: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A random near-square sub-grid I × J of an m × n layer with |I| |J| ≤ ``max_dim``.

    |I| = min(m, ⌊√max_dim⌋), |J| = min(n, ⌊max_dim / |I|⌋), then |I| is grown to
    min(m, ⌊max_dim / |J|⌋). Indices are sorted.
    """
    m, n = shape
    mp = min(m, max(1, math.isqrt(max_dim)))
    np_ = min(n, max(1, max_dim // mp))
    mp = min(m, max(1, max_dim // np_))
    rows = torch.randperm(m, generator=generator)[:mp].sort().values
    cols = torch.randperm(n, generator=generator)[:np_].sort().values
    return rows, cols


def _subgrids(
    params: Mapping[str, nn.Parameter],
    max_dim: int,
    coord_subset: Mapping[str, tuple[Sequence[int], Sequence[int]]] | None,
    seed: int,
) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """The kept coordinates ``(rows, cols)`` of each layer (``None``: all of that axis).

    An explicit ``coord_subset`` entry wins; otherwise a layer with mn > ``max_dim`` gets a random
    :func:`default_subgrid` (drawn in ``params`` order from one generator seeded with ``seed``) and a
    smaller one keeps every coordinate.
    """
    gen = torch.Generator().manual_seed(seed)
    grids: dict[str, tuple[Tensor | None, Tensor | None]] = {}
    for name, p in params.items():
        m, n = p.shape[0], p[0].numel()
        if coord_subset is not None and name in coord_subset:
            r, c = coord_subset[name]
            grids[name] = (torch.as_tensor(r, dtype=torch.long), torch.as_tensor(c, dtype=torch.long))
        elif m * n > max_dim:
            grids[name] = default_subgrid((m, n), max_dim, gen)
        else:
            grids[name] = (None, None)
    return grids


class _FactorSums:
    """Running full-layer factor sums L = Σ_s G_s G_sᵀ and R = Σ_s G_sᵀ G_s, in float64.

    Samples are buffered per layer and added ``_CHUNK`` at a time as two large GEMMs.
    """

    def __init__(self, params: Mapping[str, nn.Parameter]) -> None:
        """Zero sums ``[m, m]`` and ``[n, n]`` for every ``[m, n]`` (matricised) weight."""
        self.pending: dict[str, list[Tensor]] = {k: [] for k in params}
        self.left = {k: torch.zeros(p.shape[0], p.shape[0], dtype=torch.float64) for k, p in params.items()}
        self.right = {
            k: torch.zeros(p[0].numel(), p[0].numel(), dtype=torch.float64) for k, p in params.items()
        }

    def add(self, name: str, G: Tensor) -> None:
        """Buffer one ``[m, n]`` sample of layer ``name``; flush once ``_CHUNK`` are buffered."""
        self.pending[name].append(G)
        if len(self.pending[name]) == _CHUNK:
            self.flush(name)

    def flush(self, name: str) -> None:
        """Add the buffered samples: L += Σ G Gᵀ, R += Σ Gᵀ G (two GEMMs over the whole chunk)."""
        if self.pending[name]:
            Gs = torch.stack(self.pending[name])
            self.left[name] += torch.einsum("sij,skj->ik", Gs, Gs)
            self.right[name] += Gs.reshape(-1, Gs.shape[2]).T @ Gs.reshape(-1, Gs.shape[2])
            self.pending[name].clear()


def _batch_gradients(
    model: nn.Module, loss_fn: LossFn, batch: Any, params: Mapping[str, nn.Parameter]
) -> list[Tensor]:
    """G = ∂ loss_fn(model, batch) / ∂W for each weight, as float64 ``[m, n]`` (zero where unused).

    Raises:
        ValueError: the loss is not a scalar.
    """
    loss = loss_fn(model, batch)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar; got shape {tuple(loss.shape)}")
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return [
        (torch.zeros_like(p) if g is None else g).detach().reshape(p.shape[0], -1).to(torch.float64)
        for p, g in zip(params.values(), grads, strict=True)
    ]


def _restrict(G: Tensor, grid: tuple[Tensor | None, Tensor | None]) -> Tensor:
    """A copy of the kept coordinates G[I, J] of one sample (all of an axis whose index is ``None``)."""
    rows, cols = grid
    if rows is not None:
        G = G[rows]
    if cols is not None:
        G = G[:, cols]
    return G.clone()


def collect_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    layers: Sequence[str] | None = None,
    max_dim: int = 2048,
    coord_subset: Mapping[str, tuple[Sequence[int], Sequence[int]]] | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, LayerSamples]:
    """One gradient sample per batch for each chosen weight matrix (the documented hook).

    For every batch, ``loss_fn(model, batch)`` is differentiated with ``torch.autograd.grad``
    with respect to the chosen weights only (``.grad`` fields are left untouched), so the model is
    not trained. G is the weight's gradient viewed as ``[m, n]`` (``[shape[0], -1]``).

    Args:
        model: any ``nn.Module`` (its mode, train or eval, is left as the caller set it).
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        batches: iterable of batches; S = number of batches.
        layers: parameter names to study; ``None`` means every trainable parameter with ≥ 2 dims.
        max_dim: layers with mn > ``max_dim`` keep only a random sub-grid (:func:`default_subgrid`).
        coord_subset: explicit ``{name: (rows, cols)}`` sub-grids, overriding the random choice.
        seed: seed of the random sub-grids.
        progress: called with 1 after each batch (e.g. a progress bar's ``update``).

    Returns:
        ``{name: LayerSamples}`` with float64 samples and full-layer factor statistics.

    Raises:
        ValueError: no batches, or a non-scalar loss.
    """
    params = matrix_layers(model, layers)
    grids = _subgrids(params, max_dim, coord_subset, seed)
    sums = _FactorSums(params)
    kept: dict[str, list[Tensor]] = {k: [] for k in params}
    count = 0
    for batch in batches:
        for name, G in zip(params, _batch_gradients(model, loss_fn, batch, params), strict=True):
            sums.add(name, G)
            kept[name].append(_restrict(G, grids[name]))
        count += 1
        if progress is not None:
            progress(1)
    if count == 0:
        raise ValueError("batches is empty: need at least one batch")
    out = {}
    for name, p in params.items():
        sums.flush(name)
        L, R = sums.left[name] / count, sums.right[name] / count
        rows, cols = grids[name]
        out[name] = LayerSamples(
            name=name,
            shape=(p.shape[0], p[0].numel()),
            grads=torch.stack(kept[name]),
            rows=rows,
            cols=cols,
            left=L,
            right=R,
            trace=float(L.trace()),
        )
    return out


def covariance(samples: LayerSamples | Tensor, damping: float = 0.0, weights: Tensor | None = None) -> Tensor:
    """Dense uncentred covariance of the kept coordinates, optionally damped.

    .. math:: C = \\frac{1}{S}\\sum_s \\mathrm{vec}(G_s)\\,\\mathrm{vec}(G_s)^\\top
              + \\kappa I, \\qquad \\kappa = \\delta\\,\\mathrm{tr}(C)/mn

    (row-major ``vec``; the damping is Lin et al.'s C + κI, docs/maths.md §2.1, with κ relative to the
    mean eigenvalue so that δ is scale-free).

    Args:
        samples: a :class:`LayerSamples` or a ``[S, m, n]`` tensor of gradients.
        damping: δ ≥ 0.
        weights: optional ``[S]`` non-negative sample weights (e.g. bootstrap counts); normalised.

    Returns:
        ``[mn, mn]`` float64, symmetric.
    """
    grads = samples.grads if isinstance(samples, LayerSamples) else samples
    if damping < 0:
        raise ValueError(f"damping must be >= 0; got {damping}")
    g = grads.reshape(grads.shape[0], -1).to(torch.float64)
    if weights is None:
        C = g.T @ g / g.shape[0]
    else:
        w = weights.to(torch.float64) / weights.sum()
        C = (g * w[:, None]).T @ g
    C = 0.5 * (C + C.T)
    if damping > 0:
        C = C + damping * C.trace() / C.shape[0] * torch.eye(C.shape[0], dtype=C.dtype)
    return C


def bootstrap_covariance(
    samples: LayerSamples | Tensor, damping: float, generator: torch.Generator
) -> Tensor:
    """:func:`covariance` of a bootstrap resample (S draws with replacement) of the samples."""
    grads = samples.grads if isinstance(samples, LayerSamples) else samples
    S = grads.shape[0]
    counts = torch.bincount(torch.randint(S, (S,), generator=generator), minlength=S)
    return covariance(grads, damping, weights=counts)


# ----------------------------------------------------------------------------- synthetic data


def _spd(d: int, cond: float, generator: torch.Generator) -> Tensor:
    """Random SPD matrix with log-spaced eigenvalues from 1 down to 1/cond."""
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    w = torch.logspace(0, -math.log10(cond), d, dtype=torch.float64)
    return (Q * w) @ Q.T


def kronecker_samples(
    m: int, n: int, num_samples: int, seed: int = 0, cond: float = 100.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients whose covariance is exactly Kronecker: G = A₀^{1/2} Z B₀^{1/2}, Z iid N(0, 1).

    Returns:
        ``(grads [S, m, n], A0 [m, m], B0 [n, n])``; E[vec(G) vec(G)ᵀ] = A₀ ⊗ B₀.
    """
    gen = torch.Generator().manual_seed(seed)
    A0, B0 = _spd(m, cond, gen), _spd(n, cond, gen)
    La, Lb = torch.linalg.cholesky(A0), torch.linalg.cholesky(B0)
    Z = torch.randn(num_samples, m, n, generator=gen, dtype=torch.float64)
    return La @ Z @ Lb.T, A0, B0


def spiked_covariance(
    m: int, n: int, spikes: int = 4, strength: float = 0.1, seed: int = 0, cond: float = 100.0
) -> Tensor:
    """Kronecker covariance plus planted non-Kronecker rank-one spikes (docs/maths.md §3.3's toy).

    .. math:: C = A_0 \\otimes B_0 + \\sigma^2\\,\\bar\\lambda\\, mn \\sum_{t=1}^{T} p_t p_t^\\top,
              \\qquad \\bar\\lambda = \\mathrm{tr}(A_0 \\otimes B_0)/mn

    with p_t = vec(P_t)/‖P_t‖_F for dense Gaussian P_t (matrix rank min(m, n), so p_t p_tᵀ is not
    a Kronecker product) and σ = ``strength``: each spike's eigenvalue is about σ² mn times the
    mean eigenvalue of the Kronecker part. This is the population covariance (no sampling noise).

    Returns:
        ``[mn, mn]`` float64, positive definite.
    """
    gen = torch.Generator().manual_seed(seed)
    A0, B0 = _spd(m, cond, gen), _spd(n, cond, gen)
    P = torch.randn(spikes, m * n, generator=gen, dtype=torch.float64)
    P = P / P.norm(dim=1, keepdim=True)
    base = torch.kron(A0, B0)
    mean = base.trace() / (m * n)
    return base + strength**2 * mean * m * n * P.T @ P


def noise_samples(m: int, n: int, num_samples: int, seed: int = 0) -> Tensor:
    """Pure noise: G with iid N(0, 1) entries, ``[S, m, n]`` (E[vec(G) vec(G)ᵀ] = I ⊗ I)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_samples, m, n, generator=gen, dtype=torch.float64)
