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
  eigenvectors of the dense EMA factor of the same rule with exact eigenbases (the oracle of
  ``tests/optim/test_sketch.py``), smaller of the two factors and of the blocks.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from torch import Tensor

from tritonkron.math.divergences import coupling, initial_eigenvalues
from tritonkron.ops.precondition.reference import floor_eigenvalues
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


def settings(divergence: str, rank: int, ell: int) -> KronSettings:
    """Sketch settings with β₂ = 0.95 and the defaults of ``tk.Kron`` otherwise."""
    return KronSettings(
        Divergence(divergence),
        rank,
        TailRule.MEAN,
        1.0,
        0.95,
        1e-8,
        1e-8,
        0.1,
        False,
        sketch=True,
        sketch_rank=ell,
    )


def _eigh_desc(X: Tensor) -> tuple[Tensor, Tensor]:
    values, vectors = torch.linalg.eigh(X)
    return values.flip(-1), vectors.flip(-1)


def dense_oracle(grads: list[Tensor], st: KronSettings) -> tuple[Tensor, Tensor]:
    """The dense EMA factors A, B of the sketch's rule, coupled through exact eigendecompositions."""
    G = grads[0]
    m, n = G.shape[-2:]
    l, Q_A = _eigh_desc(G @ G.mT)
    r, Q_B = _eigh_desc(G.mT @ G)
    a, b = initial_eigenvalues(st.divergence, l, r, (G * G).sum((-1, -2)), st.init_floor)
    A, B = (Q_A * a.unsqueeze(-2)) @ Q_A.mT, (Q_B * b.unsqueeze(-2)) @ Q_B.mT
    for G in grads[1:]:
        (x_a, Q_A), (x_b, Q_B) = _eigh_desc(A), _eigh_desc(B)
        rule = coupling(
            st.divergence, floor_eigenvalues(x_a, st.eig_floor), floor_eigenvalues(x_b, st.eig_floor)
        )
        W_B = (
            torch.eye(n, dtype=F64)
            if rule.left_weight is None
            else (Q_B * rule.left_weight.unsqueeze(-2)) @ Q_B.mT
        )
        W_A = (
            torch.eye(m, dtype=F64)
            if rule.right_weight is None
            else (Q_A * rule.right_weight.unsqueeze(-2)) @ Q_A.mT
        )
        s_A, s_B = (1 - st.beta2) * rule.left_scale, (1 - st.beta2) * rule.right_scale
        A, B = (
            st.beta2 * A + s_A.reshape(-1, 1, 1) * G @ W_B @ G.mT,
            st.beta2 * B + s_B.reshape(-1, 1, 1) * G.mT @ W_A @ G,
        )
    return A, B


def _eigen_direction(state: dict[str, Tensor], M: Tensor, st: KronSettings) -> Tensor:
    """The direction from H's own eigenpairs: basis U Z, eigenvalues μ (H = Z diag(μ) Zᵀ)."""
    full = dict(state)
    for side in ("a", "b"):
        mu, Z = _eigh_desc(state[f"compression_{side}"])
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
        Q_k = _eigh_desc(X)[1][..., :rank]
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
