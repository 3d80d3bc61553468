"""Reference maths of the optimizer: blocking, factor updates, eigenvalue tracking, bases, scales."""

from __future__ import annotations

import pytest
import torch

from tritonkron.math.basis import canonical_degenerate_basis, subspace_iteration
from tritonkron.math.blocking import BlockLayout, split_sizes
from tritonkron.math.divergences import coupling, initial_eigenvalues
from tritonkron.ops.factor_update import update_factors
from tritonkron.ops.factor_update.reference import factor_update_ref, weighted_gram
from tritonkron.ops.precondition.reference import (
    eigenbasis_precondition_ref,
    factor_scales,
    spike_and_flat_apply,
    tail_level,
)
from tritonkron.ops.track_eigenvalues.reference import track_eigenvalues_ref as track_eigenvalues
from tritonkron.options import Divergence, TailRule

F64 = torch.float64


def _orthogonal(batch: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(batch, d, d, generator=g, dtype=F64)).Q


def _spd(batch: int, d: int, g: torch.Generator) -> torch.Tensor:
    X = torch.randn(batch, d, d + 3, generator=g, dtype=F64)
    return X @ X.transpose(-1, -2) / d


@pytest.mark.parametrize(("dim", "block"), [(10, 4), (7, 7), (1, 3), (1025, 1024), (2048, 1024)])
def test_split_sizes_cover_dim_and_respect_block(dim: int, block: int) -> None:
    sizes = split_sizes(dim, block)
    assert sum(sizes) == dim and max(sizes) <= block and max(sizes) - min(sizes) <= 1


def test_block_layout_roundtrip_and_grouping() -> None:
    torch.manual_seed(0)
    W = torch.randn(7, 3, 3)  # viewed as 7 × 9
    layout = BlockLayout.build(W.shape, block_size=4)
    assert layout.matrix == (7, 9)
    assert {g.shape for g in layout.groups} == {(4, 3), (3, 3)}
    matrix = W.reshape(7, 9)
    assert torch.equal(layout.scatter(layout.gather(matrix), torch.empty_like(matrix)), matrix)


@pytest.mark.parametrize(("shape", "block_size"), [((10, 7), 4), ((13, 17), 5), ((6, 6), 6), ((9, 4), 2)])
def test_gathered_blocks_are_the_blocks_at_their_offsets(shape: tuple[int, int], block_size: int) -> None:
    matrix = torch.randn(shape)
    layout = BlockLayout.build(shape, block_size)
    stacks = layout.gather(matrix)
    for group, stack in zip(layout.groups, stacks, strict=True):
        bm, bn = group.shape
        want = torch.stack([matrix[r : r + bm, c : c + bn] for r, c in group.offsets])
        assert torch.equal(stack, want)
    assert torch.equal(layout.scatter(stacks, torch.full_like(matrix, float("nan"))), matrix)


def test_weighted_gram_forms_agree() -> None:
    g = torch.Generator().manual_seed(0)
    G = torch.randn(3, 5, 7, generator=g, dtype=F64)
    Q = _orthogonal(3, 7, g)
    w = torch.rand(3, 7, generator=g, dtype=F64) + 0.1
    dense = (Q * w.unsqueeze(-2)) @ Q.transpose(-1, -2)
    expected = G @ dense @ G.transpose(-1, -2)
    torch.testing.assert_close(weighted_gram(G, "left", (Q, w)), expected)
    torch.testing.assert_close(weighted_gram(G, "left", dense), expected)
    torch.testing.assert_close(weighted_gram(G, "right"), G.transpose(-1, -2) @ G)
    out = factor_update_ref(torch.eye(7, dtype=F64).expand(3, 7, 7), G, 0.9, 0.5, "right")
    torch.testing.assert_close(out, 0.9 * torch.eye(7, dtype=F64) + 0.5 * G.transpose(-1, -2) @ G)
    assert torch.equal(out, out.transpose(-1, -2))


@pytest.mark.parametrize("divergence", list(Divergence))
def test_tracked_eigenvalues_are_diagonals_of_the_factor_update(divergence: Divergence) -> None:
    """diag(Q_Aᵀ A_new Q_A) = a_new when diag(Q_Aᵀ A Q_A) = a: factor and eigenvalues share one gauge."""
    g = torch.Generator().manual_seed(1)
    m, n = 4, 6
    Q_A, Q_B = _orthogonal(2, m, g), _orthogonal(2, n, g)
    a = torch.rand(2, m, generator=g, dtype=F64) + 0.5
    b = torch.rand(2, n, generator=g, dtype=F64) + 0.5
    A = (Q_A * a.unsqueeze(-2)) @ Q_A.transpose(-1, -2)
    B = (Q_B * b.unsqueeze(-2)) @ Q_B.transpose(-1, -2)
    G = torch.randn(2, m, n, generator=g, dtype=F64)
    rule = coupling(divergence, a, b)
    A_new, B_new = update_factors(A, B, G, Q_A, Q_B, rule, 0.9)
    a_new, b_new = track_eigenvalues(a, b, Q_A.transpose(-1, -2) @ G @ Q_B, rule, 0.9)
    torch.testing.assert_close(torch.diagonal(Q_A.transpose(-1, -2) @ A_new @ Q_A, dim1=-2, dim2=-1), a_new)
    torch.testing.assert_close(torch.diagonal(Q_B.transpose(-1, -2) @ B_new @ Q_B, dim1=-2, dim2=-1), b_new)


def test_logdet_rule_is_the_kl_shampoo_update() -> None:
    g = torch.Generator().manual_seed(2)
    m, n = 3, 5
    Q_B = _orthogonal(1, n, g)
    b = torch.rand(1, n, generator=g, dtype=F64) + 0.2
    a = torch.rand(1, m, generator=g, dtype=F64) + 0.2
    G = torch.randn(1, m, n, generator=g, dtype=F64)
    A0, B0 = torch.zeros(1, m, m, dtype=F64), torch.zeros(1, n, n, dtype=F64)
    A, _ = update_factors(
        A0, B0, G, torch.eye(m, dtype=F64)[None], Q_B, coupling(Divergence.LOGDET, a, b), 0.0
    )
    B_inv = torch.linalg.inv((Q_B * b.unsqueeze(-2)) @ Q_B.transpose(-1, -2))
    torch.testing.assert_close(A, G @ B_inv @ G.transpose(-1, -2) / n)


def test_initial_eigenvalues_have_the_scale_of_the_second_moment() -> None:
    g = torch.Generator().manual_seed(3)
    G = torch.randn(1, 6, 6, generator=g, dtype=F64) * 7.0
    l = torch.linalg.eigvalsh(G @ G.transpose(-1, -2))
    r = torch.linalg.eigvalsh(G.transpose(-1, -2) @ G)
    s = (G * G).sum((-1, -2))
    a, b = initial_eigenvalues(Divergence.LOGDET, l, r, s, init_floor=0.0)
    torch.testing.assert_close(a.mean() * b.mean(), s[0] / 36)
    a2, b2 = initial_eigenvalues(Divergence.LOGDET, 100 * l, 100 * r, 100 * s, init_floor=0.1)
    a1, b1 = initial_eigenvalues(Divergence.LOGDET, l, r, s, init_floor=0.1)
    torch.testing.assert_close(a2, 10 * a1)
    torch.testing.assert_close(b2, 10 * b1)


def test_subspace_iteration_finds_top_k_eigenvectors() -> None:
    g = torch.Generator().manual_seed(4)
    d, k = 12, 3
    Q = _orthogonal(1, d, g)
    spectrum = torch.cat(
        [torch.tensor([10.0, 8.0, 6.0], dtype=F64), torch.linspace(1.0, 0.1, d - k, dtype=F64)]
    )
    X = (Q * spectrum) @ Q.transpose(-1, -2)
    start = torch.linalg.qr(torch.randn(1, d, k, generator=g, dtype=F64)).Q
    pairs = subspace_iteration(X, start, steps=60)
    torch.testing.assert_close(pairs.values, spectrum[None, :k])
    overlap = (Q[..., :k].transpose(-1, -2) @ pairs.vectors).square().sum() / k
    assert overlap > 1 - 1e-10


def test_power_step_refresh_keeps_the_exact_eigenbasis_sorted() -> None:
    g = torch.Generator().manual_seed(5)
    Q = _orthogonal(2, 6, g)
    values = torch.rand(2, 6, generator=g, dtype=F64) + 0.1
    X = (Q * values.unsqueeze(-2)) @ Q.transpose(-1, -2)
    pairs = subspace_iteration(X, Q[..., torch.randperm(6, generator=g)])
    torch.testing.assert_close(pairs.values, values.sort(-1, descending=True).values)
    torch.testing.assert_close(
        pairs.vectors.abs(), Q.gather(-1, values.argsort(-1, descending=True)[:, None].expand(2, 6, 6)).abs()
    )


def test_canonical_degenerate_basis_depends_only_on_the_subspace() -> None:
    g = torch.Generator().manual_seed(6)
    d = 7
    Q = _orthogonal(1, d, g)
    mask = torch.tensor([[False, False, False, True, True, True, True]])
    rotation = torch.eye(d, dtype=F64)
    rotation[3:, 3:] = _orthogonal(1, 4, g)[0]
    first = canonical_degenerate_basis(Q, mask)
    second = canonical_degenerate_basis(Q @ rotation, mask)
    torch.testing.assert_close(first.abs(), second.abs())
    torch.testing.assert_close(first[..., :3].abs(), Q[..., :3].abs())
    torch.testing.assert_close(first.transpose(-1, -2) @ first, torch.eye(d, dtype=F64)[None])


DESCENDING = torch.tensor([[16.0, 9.0, 4.0, 1.0, 0.25, 0.04]], dtype=F64)


def test_mean_tail_constant_and_acceleration_bound() -> None:
    k, alpha = 3, 1.0
    s = factor_scales(DESCENDING, k, TailRule.MEAN, alpha)
    tau = DESCENDING[:, k:].mean()
    torch.testing.assert_close(s[:, :k], DESCENDING[:, :k].rsqrt())
    torch.testing.assert_close(s[:, k:], torch.full((1, 3), float(tau.rsqrt()), dtype=F64))
    assert bool((s[:, k:] >= DESCENDING[:, k - 1].rsqrt()).all())  # c ≥ x_k^{-1/2}
    torch.testing.assert_close(tail_level(DESCENDING, k), tau.reshape(1, 1))


def test_other_tail_rules() -> None:
    k = 2
    kth = factor_scales(DESCENDING, k, TailRule.KTH, 0.5)
    torch.testing.assert_close(kth[:, k:], torch.full((1, 4), 0.5 / 3.0, dtype=F64))
    fixed = factor_scales(DESCENDING, k, TailRule.FIXED, 0.7)
    torch.testing.assert_close(fixed[:, k:], torch.full((1, 4), 0.7, dtype=F64))
    sketchy = factor_scales(DESCENDING, k, TailRule.SKETCHY, 1.0)
    tau = DESCENDING[:, k:].mean()
    torch.testing.assert_close(sketchy[:, :k], (DESCENDING[:, :k] + tau).rsqrt())
    torch.testing.assert_close(sketchy[:, k:], tau.rsqrt().expand(1, 4))


def test_spike_and_flat_low_rank_form_equals_full_basis_form() -> None:
    g = torch.Generator().manual_seed(7)
    m, n, k = 8, 5, 3
    Q_A = _orthogonal(2, m, g)
    x = torch.rand(2, m, generator=g, dtype=F64).sort(-1, descending=True).values + 0.1
    s = factor_scales(x, k, TailRule.MEAN, 1.0)
    M = torch.randn(2, m, n, generator=g, dtype=F64)
    full = Q_A @ (s.unsqueeze(-1) * (Q_A.transpose(-1, -2) @ M))
    low_rank = spike_and_flat_apply(Q_A[..., :k], s[:, :k], s[:, k:][:, :1], M)
    torch.testing.assert_close(low_rank, full)
    P = (Q_A * s.unsqueeze(-2)) @ Q_A.transpose(-1, -2)
    assert bool((torch.linalg.eigvalsh(P) > 0).all())  # the preconditioner is SPD


def test_eigenbasis_preconditioning_is_the_kronecker_inverse_root() -> None:
    """U = A^{-1/2} M B^{-1/2} in vec form: (A ⊗ B)^{-1/2} vec(M) when ε = 0."""
    g = torch.Generator().manual_seed(8)
    m, n = 4, 3
    A, B = _spd(1, m, g), _spd(1, n, g)
    a, Q_A = torch.linalg.eigh(A)
    b, Q_B = torch.linalg.eigh(B)
    M = torch.randn(1, m, n, generator=g, dtype=F64)
    U = eigenbasis_precondition_ref(M, Q_A, Q_B, a.rsqrt(), b.rsqrt(), eps=0.0)
    S = torch.kron(A[0], B[0])
    evals, evecs = torch.linalg.eigh(S)
    expected = (evecs * evals.rsqrt()) @ evecs.T @ M[0].reshape(-1)
    torch.testing.assert_close(U[0].reshape(-1), expected)
