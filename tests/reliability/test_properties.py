"""Property tests: over random shapes, dtypes, divergences, ranks, tail rules and sketching, the step is
finite and deterministic, and the preconditioner it applies is symmetric positive definite."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tritonkron as tk
from tritonkron.math.divergences import preconditioner_eigenvalues
from tritonkron.ops.precondition.reference import factor_scales, floor_eigenvalues
from tritonkron.state import BASIS_A, BASIS_B, EIG_A, EIG_B, TRACE

CONFIG = st.fixed_dictionaries(
    {
        "m": st.integers(1, 12),
        "n": st.integers(1, 12),
        "dtype": st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
        "divergence": st.sampled_from(["logdet", "von_neumann", "frobenius"]),
        "rank": st.one_of(st.none(), st.integers(1, 4)),
        "tail": st.sampled_from(["mean", "kth", "sketchy", "fixed"]),
        "sketch": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def _run(cfg: dict) -> tuple[torch.Tensor, tk.Kron]:
    gen = torch.Generator().manual_seed(cfg["seed"])
    p = torch.randn(cfg["m"], cfg["n"], generator=gen).to(cfg["dtype"]).requires_grad_()
    sketch = cfg["sketch"] and cfg["rank"] is not None
    opt = tk.Kron(
        [p],
        lr=0.01,
        precondition_every=2,
        divergence=cfg["divergence"],
        rank=cfg["rank"],
        tail=cfg["tail"],
        sketch=sketch,
    )
    for _ in range(4):
        p.grad = torch.randn(p.shape, generator=gen).to(cfg["dtype"])
        opt.step()
    return p.detach(), opt


@settings(max_examples=25, deadline=None)
@given(CONFIG)
def test_step_is_finite_and_deterministic(cfg: dict) -> None:
    first, _ = _run(cfg)
    second, _ = _run(cfg)
    assert torch.isfinite(first.float()).all()
    assert torch.equal(first, second)


@settings(max_examples=25, deadline=None)
@given(CONFIG.filter(lambda c: not c["sketch"]))
def test_dense_preconditioner_is_symmetric_positive_definite(cfg: dict) -> None:
    """P_X = Q_X diag(s_X) Q_Xᵀ for the scales the step uses: symmetric, all eigenvalues > 0."""
    _, opt = _run(cfg)
    group = opt.param_groups[0]
    for blocks in next(iter(opt.state.values()))["blocks"]:
        a, b = preconditioner_eigenvalues(
            tk.Divergence(cfg["divergence"]), blocks[EIG_A], blocks[EIG_B], blocks[TRACE]
        )
        for basis, x in ((blocks[BASIS_A], a), (blocks[BASIS_B], b)):
            s = factor_scales(
                floor_eigenvalues(x, group["eig_floor"]), cfg["rank"], tk.TailRule(cfg["tail"]), 1.0
            )
            P = (basis.double() * s.double().unsqueeze(-2)) @ basis.double().transpose(-1, -2)
            assert torch.isfinite(P).all() and torch.allclose(P, P.transpose(-1, -2), atol=1e-10)
            assert torch.isfinite(s).all() and bool((torch.linalg.eigvalsh(P) > 0).all())
