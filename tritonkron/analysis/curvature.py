"""The curvature (GGN / Hessian) of the loss in one weight matrix, as an operator, and its top eigenpairs.

Curvature is restricted to one weight matrix W ``[m, n]`` (row-major ``vec``, docs/maths.md §1), all
other parameters fixed, and is only ever applied to vectors (``torch.func``):

* Hessian:      H v = ∂²ℓ/∂w² v                       (``jvp`` of ``grad``)
* Gauss–Newton: G v = Jᵀ (∇²_z ℓ) J v,  z = f(w)       (``jvp`` of f, ``jvp`` of ∇_z ℓ, ``vjp`` of f)

Its top eigenpairs come from Lanczos with full re-orthogonalisation (:func:`lanczos`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, linearize, vjp

__all__ = ["EigenPairs", "Operator", "curvature_operator", "lanczos", "operator_matrix"]

Operator = Callable[[Tensor], Tensor]
"""A symmetric linear map on flat vectors ``[d] -> [d]``."""


class EigenPairs(NamedTuple):
    """Top eigenpairs from :func:`lanczos`.

    Attributes:
        values: ``[k]`` float64, descending.
        vectors: ``[d, k]`` float64, orthonormal columns.
        residuals: ``[k]`` Lanczos residual estimates ‖H v − θ v‖.
    """

    values: Tensor
    vectors: Tensor
    residuals: Tensor


class _Bound(nn.Module):
    """Wraps ``forward(model, batch)`` as a module so that ``functional_call`` can swap one weight."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Any], Tensor]) -> None:
        """Hold ``model`` as a submodule (its tensors become ``model.*`` entries) and ``forward``."""
        super().__init__()
        self.model = model
        self.fn = forward

    def forward(self, batch: Any) -> Tensor:
        """``forward(model, batch)``."""
        return self.fn(self.model, batch)


def curvature_operator(
    model: nn.Module,
    forward: Callable[[nn.Module, Any], Tensor],
    criterion: Callable[[Tensor, Any], Tensor],
    batch: Any,
    name: str,
    kind: str = "ggn",
    rows: Tensor | None = None,
    cols: Tensor | None = None,
) -> tuple[Operator, int]:
    """The GGN or Hessian of the loss with respect to one weight, as a matrix-free operator.

    .. math:: \\ell(w) = \\mathrm{criterion}(f(w), \\mathrm{batch}), \\qquad
              G = J^\\top \\nabla_z^2 \\ell\\, J, \\qquad H = \\nabla_w^2 \\ell

    With ``rows``/``cols`` the operator is the principal sub-matrix on the coordinate sub-grid
    (vectors are embedded with zeros elsewhere), matching a sub-grid covariance.

    Args:
        model: the model (parameters are read, never changed).
        forward: ``forward(model, batch) -> outputs`` z.
        criterion: ``criterion(outputs, batch) -> scalar loss``, twice differentiable in z.
        batch: the batch the curvature is evaluated on.
        name: the parameter (``model.named_parameters()`` key) to restrict to.
        kind: ``"ggn"`` or ``"hessian"``.
        rows: optional sub-grid row indices.
        cols: optional sub-grid column indices.

    Returns:
        ``(op, d)``: ``op(v [d]) -> [d]`` in float64, d = |rows|·|cols| (default mn).

    Raises:
        KeyError: unknown ``name``; ValueError: unknown ``kind``.
    """
    if kind not in ("ggn", "hessian"):
        raise ValueError(f"kind must be 'ggn' or 'hessian'; got {kind!r}")
    params = dict(model.named_parameters())
    if name not in params:
        raise KeyError(f"{name!r} is not a parameter of the model")
    W0 = params[name].detach()
    embed, extract, d = _subgrid_maps(W0, rows, cols)
    out_fn = _weight_function(model, forward, batch, name)
    product = _hessian_product if kind == "hessian" else _ggn_product
    full = product(out_fn, criterion, batch, W0)

    def curvature_vp(v: Tensor) -> Tensor:
        """P M Pᵀ v: the sub-grid block of M (the GGN or the Hessian) applied to v."""
        return extract(full(embed(v)))

    return curvature_vp, d


def _weight_function(
    model: nn.Module, forward: Callable[[nn.Module, Any], Tensor], batch: Any, name: str
) -> Callable[[Tensor], Tensor]:
    """f(W) = ``forward(model, batch)`` with parameter ``name`` replaced by W.

    Every other parameter and buffer is passed detached, so no autograd graph is recorded on the model.
    """
    bound = _Bound(model, forward)
    key = "model." + name
    state = {"model." + k: v.detach() for k, v in model.named_parameters()}
    state.update({"model." + k: v.detach() for k, v in model.named_buffers()})

    def out_fn(W: Tensor) -> Tensor:
        """The model's outputs z = f(W) on the batch."""
        return functional_call(bound, {**state, key: W}, (batch,))

    return out_fn


def _subgrid_maps(
    W0: Tensor, rows: Tensor | None, cols: Tensor | None
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], int]:
    """``(embed, extract, d)`` between flat sub-grid vectors ``[d]`` and full weight-shaped tensors.

    .. math:: \\mathrm{embed}(v) = P^\\top v, \\qquad \\mathrm{extract}(V) = P\\,\\mathrm{vec}(V), \\qquad
              d = |I|\\,|J|

    with P the selection of the coordinates I × J of the matricised ``[m, n]`` weight (all rows /
    columns where ``rows`` / ``cols`` is ``None``); ``embed`` zero-fills the rest and casts to
    W0's dtype, ``extract`` returns float64.
    """
    m, n = W0.shape[0], W0[0].numel()
    r = torch.arange(m) if rows is None else rows
    c = torch.arange(n) if cols is None else cols

    def embed(v: Tensor) -> Tensor:
        """Pᵀ v as a tensor of W0's shape and dtype."""
        V = torch.zeros(m, n, dtype=W0.dtype)
        V[r[:, None], c[None, :]] = v.to(W0.dtype).reshape(len(r), len(c))
        return V.reshape(W0.shape)

    def extract(V: Tensor) -> Tensor:
        """P vec(V) in float64."""
        return V.detach().reshape(m, n)[r[:, None], c[None, :]].reshape(-1).to(torch.float64)

    return embed, extract, len(r) * len(c)


def _hessian_product(
    out_fn: Callable[[Tensor], Tensor], criterion: Callable[[Tensor, Any], Tensor], batch: Any, W0: Tensor
) -> Callable[[Tensor], Tensor]:
    """V ↦ H V at W0, with H = ∇²_W ℓ and ℓ(W) = criterion(f(W), batch) (``jvp`` of ``grad``)."""

    def loss_of_w(W: Tensor) -> Tensor:
        """ℓ(W) = criterion(f(W), batch)."""
        return criterion(out_fn(W), batch)

    grad_fn = grad(loss_of_w)
    return lambda V: jvp(grad_fn, (W0,), (V,))[1]


def _ggn_product(
    out_fn: Callable[[Tensor], Tensor], criterion: Callable[[Tensor, Any], Tensor], batch: Any, W0: Tensor
) -> Callable[[Tensor], Tensor]:
    """V ↦ G V at W0, with G = Jᵀ (∇²_z ℓ) J, z = f(W), J = ∂z/∂W.

    J V and (∇²_z ℓ) u are linearised once (:func:`_linearized`); Jᵀ is the ``vjp`` pullback at W0.
    """
    z0, pullback = vjp(out_fn, W0)
    grad_z = grad(lambda z: criterion(z, batch))
    push, hess_z = _linearized(out_fn, W0), _linearized(grad_z, z0)
    return lambda V: pullback(hess_z(push(V)))[0]


def _linearized(fn: Callable[[Tensor], Tensor], x0: Tensor) -> Callable[[Tensor], Tensor]:
    """v ↦ J_fn(x0) v, traced once by ``torch.func.linearize`` when possible, else ``jvp`` per call.

    Tracing (``make_fx``) avoids re-running the primal computation on every product (2–3× faster
    here); models it cannot trace fall back to plain ``jvp``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # const-folding and torch.jit notes from the tracer
            _, jvp_fn = linearize(fn, x0)
        return jvp_fn
    except Exception:  # noqa: BLE001 - any tracing failure: use the generic path
        return lambda v: jvp(fn, (x0,), (v,))[1]


def operator_matrix(op: Operator, d: int) -> Tensor:
    """The dense ``[d, d]`` matrix of an operator (d applications; for tests and tiny layers)."""
    eye = torch.eye(d, dtype=torch.float64)
    M = torch.stack([op(eye[i]) for i in range(d)], dim=1)
    return 0.5 * (M + M.T)


def lanczos(
    op: Operator,
    d: int,
    k: int,
    num_iters: int | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> EigenPairs:
    """Top-k eigenpairs of a symmetric operator by Lanczos with full re-orthogonalisation.

    .. math:: H Q_j = Q_j T_j + \\beta_j q_{j+1} e_j^\\top, \\qquad
              T_j = \\mathrm{tridiag}(\\beta, \\alpha, \\beta), \\qquad
              (\\theta_i, Q_j y_i) \\text{ with } T_j y_i = \\theta_i y_i

    Every new Lanczos vector is orthogonalised twice against all previous ones. On breakdown
    (an invariant Krylov subspace, βⱼ ≈ 0) the iteration restarts from a fresh random vector
    orthogonal to the basis, so low-rank operators are handled; with ``num_iters = d`` the result
    is exact up to rounding.

    Args:
        op: symmetric operator ``[d] -> [d]``.
        d: dimension.
        k: number of eigenpairs (≤ d).
        num_iters: Krylov dimension (default min(d, max(3k + 30, 60))).
        seed: seed of the starting vector(s).
        progress: called with 1 per operator application.

    Returns:
        :class:`EigenPairs` with the k largest Ritz pairs.
    """
    if not 1 <= k <= d:
        raise ValueError(f"need 1 <= k <= d; got k={k}, d={d}")
    iters = min(d, num_iters if num_iters is not None else max(3 * k + 30, 60))
    iters = max(iters, k)
    gen = torch.Generator().manual_seed(seed)
    Q = torch.zeros(iters + 1, d, dtype=torch.float64)
    alpha = torch.zeros(iters, dtype=torch.float64)
    beta = torch.zeros(iters, dtype=torch.float64)
    q = torch.randn(d, generator=gen, dtype=torch.float64)
    Q[0] = q / q.norm()
    scale = 0.0
    for j in range(iters):
        w = op(Q[j]).to(torch.float64)
        if progress is not None:
            progress(1)
        alpha[j] = Q[j] @ w
        for _ in range(2):  # full re-orthogonalisation, twice
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = w.norm()
        scale = max(scale, float(alpha[j].abs()), float(b))
        if j + 1 == iters:
            beta[j] = b
            break
        if b <= 1e-10 * max(scale, 1e-300):  # invariant subspace: restart orthogonally
            beta[j] = 0.0
            w = torch.randn(d, generator=gen, dtype=torch.float64)
            for _ in range(2):
                w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
            Q[j + 1] = w / w.norm()
        else:
            beta[j] = b
            Q[j + 1] = w / b
    T = torch.diag(alpha) + torch.diag(beta[:-1], 1) + torch.diag(beta[:-1], -1)
    theta, Y = torch.linalg.eigh(T)
    theta, Y = theta.flip(0)[:k], Y.flip(1)[:, :k]
    vectors = Q[:iters].T @ Y
    residuals = (beta[-1] * Y[-1]).abs()
    return EigenPairs(theta, vectors, residuals)
