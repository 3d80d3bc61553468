"""The sketch's refresh period on a planted stream: ``python -m perf.sketch_schedule``.

``Kron(rank=k, sketch=True)`` takes its Rayleigh–Ritz step every T steps and tracks its compression
H = Uᵀ X̃ U in the stale basis U between them (docs/maths.md §6.2). For T in ``--periods`` this runs
the sketched block step on a planted low-rank gradient stream G = L Z Rᵀ + ν N (L, R rank k,
singular values 3·0.7^i, Z and N standard normal, ν = noise/(mn)^¼) and reports, per divergence:

- **direction**: ‖D_diag − D_H‖ / ‖D_H‖ over the steps after a 20-step warm-up, where D_diag is the
  optimizer's direction (from λ = diag(H), the tracked eigenvalues in the stale basis) and D_H the
  direction from H's own eigenpairs (basis U Z, eigenvalues μ, H = Z diag(μ) Zᵀ), both for the same
  momentum (median, 90th percentile and largest);
- **overlap**: the top-k subspace overlap ‖U_kᵀ Q_k‖²_F / k after the last step, Q_k the top-k
  eigenvectors of the dense EMA factor of the same rule with exact eigenbases (:func:`dense_oracle`,
  which ``tests/optim/test_sketch.py`` checks the sketch against too), smaller of the two factors and of the blocks.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from torch import Tensor

from tritonkron.math.divergences import initial_eigenvalues
from tritonkron.ops.precondition.reference import floor_eigenvalues
from tritonkron.ops.sketch.reference import virtual_spectrum
from tritonkron.options import Divergence, KronSettings, TailRule
from tritonkron.step.sketched import new_sketch_state, sketch_direction, sketch_group_step

F64 = torch.float64


def planted_stream(steps: int, count: int, m: int, n: int, k: int, noise: float, seed: int) -> list[Tensor]:
    """G = L Z Rᵀ + ν N, ``[count, m, n]`` per step (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    decay = 3 * 0.7 ** torch.arange(k, dtype=F64)
    L = torch.linalg.qr(torch.randn(count, m, k, generator=g, dtype=F64)).Q * decay
    R = torch.linalg.qr(torch.randn(count, n, k, generator=g, dtype=F64)).Q * decay
    scale = noise / (m * n) ** 0.25
    return [
        L @ torch.randn(count, k, k, generator=g, dtype=F64) @ R.mT
        + scale * torch.randn(count, m, n, generator=g, dtype=F64)
        for _ in range(steps)
    ]


def settings(
    divergence: str, rank: int, ell: int, beta: float = 0.95, tail: str = "mean", flat: bool = False
) -> KronSettings:
    """Sketch settings (retention ``beta``, tail rule, ``flat_tail_in_stats``) with the other
    defaults of ``tk.Kron``."""
    return KronSettings(
        Divergence(divergence),
        rank,
        TailRule(tail),
        1.0,
        beta,
        1e-8,
        1e-8,
        0.1,
        flat,
        sketch=True,
        sketch_rank=ell,
    )


def eigh_desc(X: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of a symmetric X, in descending order."""
    values, vectors = torch.linalg.eigh(X)
    return values.flip(-1), vectors.flip(-1)


def _oracle_weight(
    X: Tensor, st: KronSettings, other_dim: int, flat_beyond: int | None
) -> tuple[Tensor, Tensor]:
    """(W, s) of the rule from the exact eigenpairs of X: LogDet W = X⁻¹, s = 1/d_other; Frobenius
    W = X, s = 1/‖X‖²; von Neumann W = I, s = 1 (its τ normalises outside). ``flat_beyond``: the
    eigenvalues past it replaced by their mean (spike and flat)."""
    x, Q = eigh_desc(X)
    x = floor_eigenvalues(x, st.eig_floor)
    if flat_beyond is not None and flat_beyond < x.shape[-1]:
        x = virtual_spectrum(x[..., :flat_beyond], x[..., flat_beyond:].mean(-1), x.shape[-1])
    ones = torch.ones(X.shape[0], 1, 1, dtype=X.dtype)
    if st.divergence is Divergence.LOGDET:
        return (Q / x.unsqueeze(-2)) @ Q.mT, ones / other_dim
    if st.divergence is Divergence.FROBENIUS:
        return (Q * x.unsqueeze(-2)) @ Q.mT, 1 / (x * x).sum(-1).reshape(-1, 1, 1)
    return torch.eye(X.shape[-1], dtype=X.dtype).expand_as(X), ones


def dense_oracle(
    grads: list[Tensor], st: KronSettings, flat_beyond: int | None = None
) -> tuple[Tensor, Tensor]:
    """The dense EMA factors A ← βA + (1 − β) s_A G W_B Gᵀ, B ← βB + (1 − β) s_B Gᵀ W_A G of the
    sketch's rule, coupled through exact eigendecompositions and started like the optimizer."""
    G = grads[0]
    m, n = G.shape[-2:]
    l, Q_A = eigh_desc(G @ G.mT)
    r, Q_B = eigh_desc(G.mT @ G)
    a, b = initial_eigenvalues(st.divergence, l, r, (G * G).sum((-1, -2)), st.init_floor)
    A, B = (Q_A * a.unsqueeze(-2)) @ Q_A.mT, (Q_B * b.unsqueeze(-2)) @ Q_B.mT
    beta = st.beta2
    for G in grads[1:]:
        W_B, s_A = _oracle_weight(B, st, n, flat_beyond)
        W_A, s_B = _oracle_weight(A, st, m, flat_beyond)
        A, B = (
            beta * A + (1 - beta) * s_A * G @ W_B @ G.mT,
            beta * B + (1 - beta) * s_B * G.mT @ W_A @ G,
        )
    return A, B


def _eigen_direction(state: dict[str, Tensor], M: Tensor, st: KronSettings) -> Tensor:
    """The direction from H's own eigenpairs: basis U Z, eigenvalues μ (H = Z diag(μ) Zᵀ)."""
    full = dict(state)
    for side in ("a", "b"):
        mu, Z = eigh_desc(state[f"compression_{side}"])
        full[f"basis_{side}"], full[f"eig_{side}"] = state[f"basis_{side}"] @ Z, mu
    return sketch_direction(full, M, st)


def run(divergence: str, period: int, grads: list[Tensor], rank: int, ell: int, warmup: int = 20) -> dict:
    """One row: the direction differences and the final subspace overlap (module docstring)."""
    st = settings(divergence, rank, ell)
    count, m, n = grads[0].shape
    state = new_sketch_state(count, m, n, ell, F64, torch.device("cpu"))
    errors = []
    for t, G in enumerate(grads):
        if t > warmup:
            M = 0.5 * (grads[t - 1] + G)
            want = _eigen_direction(state, M, st)
            errors.append(float((sketch_direction(state, M, st) - want).norm() / want.norm()))
        sketch_group_step(state, G, G, st, refresh=t % period == 0)
    overlaps = []
    for side, X in zip(("a", "b"), dense_oracle(grads, st), strict=True):
        Q_k = eigh_desc(X)[1][..., :rank]
        overlaps.append((state[f"basis_{side}"][..., :rank].mT @ Q_k).square().sum((-1, -2)) / rank)
    e = torch.tensor(errors)
    return {
        "divergence": divergence,
        "T": period,
        "direction median": float(e.median()),
        "direction 90%": float(e.quantile(0.9)),
        "direction max": float(e.max()),
        "overlap": float(torch.cat(overlaps).min()),
    }


def main(argv: list[str] | None = None) -> None:
    """Print one row per (divergence, period)."""
    parser = argparse.ArgumentParser(
        prog="python -m perf.sketch_schedule", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--periods", default="1,10", help="comma-separated refresh periods T (default 1,10)")
    parser.add_argument("--noise", type=float, default=1.0, help="noise level ν·(mn)^¼ (default 1)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--shape", default="64,48", help="block shape m,n (default 64,48)")
    parser.add_argument("--rank", type=int, default=4, help="k, also the planted rank (default 4)")
    parser.add_argument("--sketch-rank", type=int, default=8, help="ℓ (default 8)")
    args = parser.parse_args(argv)
    m, n = (int(x) for x in args.shape.split(","))
    grads = planted_stream(args.steps, 2, m, n, args.rank, args.noise, seed=2)
    rows = [
        run(divergence, int(period), grads, args.rank, args.sketch_rank)
        for divergence in ("logdet", "von_neumann", "frobenius")
        for period in args.periods.split(",")
    ]
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
