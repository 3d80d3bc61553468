"""The Adam-grafted warm start (``warm_start=W``, :mod:`tritonkron.step.warm_start`, docs/maths.md §5.6).

For the first W steps the update is U' = (1 − w_t) U + w_t (‖U‖/‖D‖) D, D Adam's direction from the
same gradients, w_t = 1 − (t − 1)/W; the statistics never see the graft, the moments equal
``torch.optim.Adam``'s, a skipped step moves nothing, the state survives a checkpoint and is
dropped after W steps, and from step W + 1 on the update is the plain Kronecker one.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

import tritonkron as tk
from tritonkron.state import BLOCKS, WARM_EXP_AVG, WARM_EXP_AVG_SQ
from tritonkron.step.warm_start import graft, warm_weight

W = 4
STEPS = W + 3
NAN_STEP = 2
OPTIONS = {"lr": 1e-2, "betas": (0.9, 0.95), "block_size": 8, "precondition_every": 2}


def _grads(p: torch.Tensor, steps: int, nan_step: int | None = None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for _ in range(steps)]
    if nan_step is not None:
        grads[nan_step][0, 1] = float("nan")
    return grads


def _deltas(opt: tk.Kron, p: torch.Tensor, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    deltas = []
    for g in grads:
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        deltas.append(p.detach() - before)
    return deltas


def test_graft_keeps_the_norm_bound_and_blends() -> None:
    """‖U'‖ ≤ ‖U‖; w = 1 gives D's direction with U's norm; w = 0 gives U exactly; U = 0 gives
    w · first · D."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        U, D = (torch.randn(6, 9, generator=gen, dtype=torch.float64) for _ in range(2))
        for w in (0.0, 0.3, 1.0):
            out = graft(U, D, torch.tensor(w, dtype=torch.float64))
            assert out.norm() <= U.norm() * (1 + 1e-12)
        full = graft(U, D, torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(full, D * U.norm() / D.norm(), rtol=1e-12, atol=0)
        assert torch.equal(graft(U, D, torch.tensor(0.0, dtype=torch.float64)), U)
        zero = torch.zeros_like(U)
        torch.testing.assert_close(graft(zero, D, torch.tensor(0.5, dtype=torch.float64), 0.2), 0.1 * D)


def test_warm_weight_fades_linearly() -> None:
    steps = torch.arange(1, 8, dtype=torch.float32)
    expected = torch.tensor([max(0.0, 1 - (t - 1) / W) for t in range(1, 8)])
    torch.testing.assert_close(warm_weight(steps, W), expected)


def test_update_is_the_graft_of_the_plain_update_onto_adam() -> None:
    """Against a warm_start=0 run on the same gradients (float64): U' follows the graft formula with
    D from torch.optim.Adam's own step (on the initialisation step, where U = 0, Adam's step of the
    uncorrected momentum), and equals U after W steps."""
    torch.manual_seed(0)
    p_plain = nn.Parameter(torch.randn(12, 10, dtype=torch.float64))
    p_warm = nn.Parameter(p_plain.detach().clone())
    p_adam = nn.Parameter(p_plain.detach().clone())
    grads = _grads(p_plain, STEPS)
    plain = _deltas(tk.Kron([p_plain], **OPTIONS), p_plain, grads)
    warm = _deltas(tk.Kron([p_warm], warm_start=W, **OPTIONS), p_warm, grads)
    adam = _deltas(torch.optim.Adam([p_adam], lr=1.0, betas=(0.9, 0.95), eps=1e-8), p_adam, grads)
    for t, (u, u_warm, d) in enumerate(zip(plain, warm, adam, strict=True), start=1):
        if t > W:  # the same update (the deltas differ by the rounding of different weights)
            torch.testing.assert_close(u_warm, u, rtol=1e-12, atol=1e-18)
            continue
        w = max(0.0, 1 - (t - 1) / W)
        if t == 1:  # the blocks only initialise (u = 0): Adam's first step of the uncorrected momentum
            expected = w * (1 - 0.9) * OPTIONS["lr"] * d
        else:
            expected = (1 - w) * u + w * (u.norm() / d.norm()) * d
        rtol = 1e-6 if t == 1 else 1e-10  # 1 − β₁ᵗ is computed from the float32 step count
        torch.testing.assert_close(u_warm, expected, rtol=rtol, atol=1e-14)
    assert plain[0].abs().max() == 0 < warm[0].abs().max()


def test_statistics_are_untouched_and_state_dropped_after_w() -> None:
    torch.manual_seed(1)
    p_plain = nn.Parameter(torch.randn(12, 10))
    p_warm = nn.Parameter(p_plain.detach().clone())
    grads = _grads(p_plain, STEPS)
    opt_plain, opt_warm = tk.Kron([p_plain], **OPTIONS), tk.Kron([p_warm], warm_start=W, **OPTIONS)
    for t, g in enumerate(grads, start=1):
        for p, opt in ((p_plain, opt_plain), (p_warm, opt_warm)):
            p.grad = g.clone()
            opt.step()
        assert (WARM_EXP_AVG in opt_warm.state[p_warm]) == (t <= W)
        blocks = zip(opt_plain.state[p_plain][BLOCKS], opt_warm.state[p_warm][BLOCKS], strict=True)
        for plain_block, warm_block in blocks:
            for key, value in plain_block.items():
                assert torch.equal(warm_block[key], value), (t, key)


def test_moments_match_adam_and_skipped_step_moves_nothing() -> None:
    torch.manual_seed(2)
    p = nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
    p_adam = nn.Parameter(p.detach().clone())
    grads = _grads(p, W, nan_step=NAN_STEP)
    opt = tk.Kron([p], warm_start=W + 5, **OPTIONS)
    adam = torch.optim.Adam([p_adam], lr=1e-2, betas=(0.9, 0.95))
    for t, g in enumerate(grads):
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        if t == NAN_STEP:
            assert torch.equal(p.detach(), before)
            continue
        p_adam.grad = g.clone()
        adam.step()
    state, adam_state = opt.state[p], adam.state[p_adam]
    torch.testing.assert_close(state[WARM_EXP_AVG], adam_state["exp_avg"], rtol=1e-14, atol=0)
    torch.testing.assert_close(state[WARM_EXP_AVG_SQ], adam_state["exp_avg_sq"], rtol=1e-14, atol=0)


def test_checkpoint_during_warm_start_continues_bit_for_bit() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 3))
    grads = [_grads(q, STEPS) for q in model.parameters()]
    opt = tk.Kron(model.parameters(), warm_start=W, **OPTIONS)

    def run(model: nn.Module, opt: tk.Kron, first: int, last: int) -> None:
        for t in range(first, last):
            for q, g in zip(model.parameters(), grads, strict=True):
                q.grad = g[t].clone()
            opt.step()

    run(model, opt, 0, 2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed_model = copy.deepcopy(model)
    resumed = tk.Kron(resumed_model.parameters(), warm_start=W, **OPTIONS)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    run(model, opt, 2, STEPS)
    run(resumed_model, resumed, 2, STEPS)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_first_step_with_bias_correction_is_adams_and_capped() -> None:
    """With bias correction the initialisation step is Adam's first step, D = g/(|g| + ε); with
    ``max_update_rms`` it is capped."""
    torch.manual_seed(5)
    for cap in (None, 0.5):
        p = nn.Parameter(torch.randn(8, 6, dtype=torch.float64))
        before = p.detach().clone()
        p.grad = torch.randn(8, 6, dtype=torch.float64)
        tk.Kron([p], warm_start=W, bias_correction=True, max_update_rms=cap, **OPTIONS).step()
        step = (before - p.detach()) / OPTIONS["lr"]
        adam_first = p.grad / (p.grad.abs() + 1e-8)
        rms = adam_first.square().mean().sqrt()
        expected = adam_first if cap is None else adam_first * min(1.0, cap / float(rms))
        torch.testing.assert_close(step, expected, rtol=1e-6, atol=1e-12)  # float32 step count


@pytest.mark.parametrize("value", [-1, 1.5, True, "8"])
def test_bad_warm_start_is_rejected(value: object) -> None:
    with pytest.raises(ValueError, match="warm_start"):
        tk.Kron([nn.Parameter(torch.zeros(3, 3))], warm_start=value)  # type: ignore[arg-type]


def _mlp_loss(build, seed: int) -> float:  # noqa: ANN001
    """Held-out MSE of a 16 → 32 → 4 tanh MLP after 32 steps of batch 32 at lr 1e-2."""
    g = torch.Generator().manual_seed(10_000 + seed)
    W1, W2 = torch.randn(16, 32, generator=g) / 4, torch.randn(32, 4, generator=g) / math.sqrt(32)
    X = torch.randn(32 * 32 + 512, 16, generator=g)
    Y = torch.tanh(X @ W1) @ W2 + 0.05 * torch.randn(X.shape[0], 4, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = build(model.parameters())
    for t in range(32):
        opt.zero_grad()
        nn.functional.mse_loss(model(X[t * 32 : (t + 1) * 32]), Y[t * 32 : (t + 1) * 32]).backward()
        opt.step()
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(X[-512:]), Y[-512:]))


def test_short_run_reaches_adamw_with_warm_start() -> None:
    """README, "Early training": over 32 steps plain Kron is far behind AdamW; with the warm start
    and bias correction it is within 10 % (mean over 3 seeds)."""

    def mean(build) -> float:  # noqa: ANN001
        return sum(_mlp_loss(build, s) for s in range(3)) / 3

    adamw = mean(lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0))
    plain = mean(lambda ps: tk.Kron(ps, lr=1e-2))
    warm = mean(lambda ps: tk.Kron(ps, lr=1e-2, warm_start=32, bias_correction=True))
    assert plain > 1.5 * adamw
    assert warm <= 1.1 * adamw


def test_compiled_step_matches_eager() -> None:
    """Under torch.compile the moments stay after W (no host decision in the graph) and the graft
    is an exact no-op there: the same bits as the eager step, which drops them."""
    torch.manual_seed(4)
    eager_model = nn.Linear(6, 5)
    compiled_model = copy.deepcopy(eager_model)
    eager = tk.Kron(eager_model.parameters(), lr=1e-2, warm_start=2, bias_correction=True)
    compiled = tk.Kron(compiled_model.parameters(), lr=1e-2, warm_start=2, bias_correction=True)
    compiled_step = torch.compile(compiled.step, backend="aot_eager")
    for t in range(5):
        gen = torch.Generator().manual_seed(t)
        for a, b in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        eager.step()
        compiled_step()
        for a, b in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
            assert torch.equal(a, b), t
    assert WARM_EXP_AVG not in eager.state[eager_model.weight]


@pytest.mark.parametrize("divergence", ["logdet", "von_neumann", "frobenius"])
def test_one_gradient_direction_grows_the_weakest_singular_directions(divergence: str) -> None:
    """docs/maths.md §5.6: with statistics from one gradient G = U S Vᵀ the next direction along G
    is ∝ U S⁻¹ Vᵀ, whose cosine with G is r/(‖S‖_F ‖S⁻¹‖_F), below Adam's sign direction's."""
    gen = torch.Generator().manual_seed(6)
    U, _ = torch.linalg.qr(torch.randn(8, 5, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    S = torch.tensor([4.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    G = U @ torch.diag(S) @ V.T
    p = nn.Parameter(torch.zeros(8, 5, dtype=torch.float64))
    opt = tk.Kron([p], lr=1.0, bound=None, eps=0.0, init_floor=1e-9, divergence=divergence)
    for _ in range(2):
        p.grad = G.clone()
        opt.step()
    step = -p.detach()  # the first step only initialises
    expected = U @ torch.diag(1 / S) @ V.T
    torch.testing.assert_close(step / step.norm(), expected / expected.norm(), rtol=1e-8, atol=1e-10)
    cosine = float((step * G).sum() / (step.norm() * G.norm()))
    assert cosine == pytest.approx(5 / float(S.norm() * (1 / S).norm()), rel=1e-8)
    sign_cosine = float(G.abs().sum() / (G.numel() ** 0.5 * G.norm()))
    assert cosine < sign_cosine
