"""The subspace direction in low-rank form equals the eigenbasis form (docs/maths.md §4.3 damping included)."""

from __future__ import annotations

import pytest
import torch

from tritonkron.ops.precondition.reference import (
    eigenbasis_precondition_ref,
    factor_scales,
    floor_eigenvalues,
)
from tritonkron.options import Divergence, KronSettings, TailRule
from tritonkron.state import BASIS_A, BASIS_B, EIG_A, EIG_B, TRACE
from tritonkron.step.dense import direction, low_rank_is_cheaper, new_group_state


def _orthonormal(b: int, d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(b, d, d, generator=gen, dtype=torch.float64)).Q


@pytest.mark.parametrize("tail", list(TailRule))
@pytest.mark.parametrize(("m", "n", "rank_a", "rank_b"), [(13, 17, 3, 3), (24, 9, 2, None), (20, 20, 1, 5)])
def test_low_rank_direction_equals_eigenbasis_form(tail: TailRule, m: int, n: int, rank_a, rank_b) -> None:
    gen = torch.Generator().manual_seed(m * n + (rank_a or 0))
    b = 3
    state = new_group_state(b, m, n, dtype=torch.float64, device=torch.device("cpu"))
    state[BASIS_A], state[BASIS_B] = _orthonormal(b, m, gen), _orthonormal(b, n, gen)
    state[EIG_A] = (
        torch.rand(b, m, generator=gen, dtype=torch.float64).sort(-1, descending=True).values + 1e-3
    )
    state[EIG_B] = (
        torch.rand(b, n, generator=gen, dtype=torch.float64).sort(-1, descending=True).values + 1e-3
    )
    state[TRACE] = torch.rand(b, generator=gen, dtype=torch.float64) + 0.5
    settings = KronSettings(
        divergence=Divergence.LOGDET,
        rank=max(rank_a, rank_b or 0),
        tail=tail,
        alpha=0.7,
        beta2=0.9,
        eps=0.05,  # large enough that the damping matters
        eig_floor=1e-8,
        init_floor=0.1,
        flat_tail_in_stats=False,
        factor_ranks=(rank_a, rank_b),
    )
    k_a, k_b = rank_a or m, rank_b or n
    assert low_rank_is_cheaper(m, n, k_a, k_b)  # the low-rank form is the one under test
    M = torch.randn(b, m, n, generator=gen, dtype=torch.float64)
    got = direction(state, M, settings)
    s_A = factor_scales(floor_eigenvalues(state[EIG_A], 1e-8), rank_a, tail, 0.7)
    s_B = factor_scales(floor_eigenvalues(state[EIG_B], 1e-8), rank_b, tail, 0.7)
    expected = eigenbasis_precondition_ref(M, state[BASIS_A], state[BASIS_B], s_A, s_B, 0.05)
    rel = (got - expected).norm() / expected.norm()
    assert rel < 1e-12


def test_cost_rule() -> None:
    """Low rank when k_A + k_B ≤ (m + n)/2 (it then saves at least half of 2mn(m + n))."""
    assert low_rank_is_cheaper(128, 512, 8, 8)
    assert low_rank_is_cheaper(100, 100, 50, 50)
    assert not low_rank_is_cheaper(100, 100, 51, 50)
    assert not low_rank_is_cheaper(16, 16, 16, 16)
