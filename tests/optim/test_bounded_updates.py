"""``bound="adam"`` and ``bias_correction`` (docs/maths.md §5.5): the worst update stays within a small
factor of AdamW's on the gradients that blow an unbounded direction up, on every path, and the
corrected momentum moves the first steps as much as an unbiased average would."""

from __future__ import annotations

import math
import re

import pytest
import torch

import tritonkron as tk
from perf.bounds_cases import rare_row, subspace_switch, worst_update, worst_updates
from tritonkron.options import DEFAULTS, kron_settings
from tritonkron.state import BASIS_A, BASIS_B, EIG_A, EIG_B, TRACE
from tritonkron.step.bounds import adam_bound, bounded_low_rank
from tritonkron.step.dense import direction


def _kron(**options: object):
    return lambda params, lr: tk.Kron(params, lr=lr, **options)


def _adamw(params, lr):
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)


@pytest.mark.parametrize("case", [subspace_switch(after=3), rare_row(after=3)], ids=lambda c: c.name)
def test_bound_keeps_the_worst_update_near_adamw(case) -> None:
    reference = worst_update(case, _adamw)
    free = worst_update(case, _kron(bound=None))
    bounded = worst_update(case, _kron())  # the default bound="adam"
    assert free > 10 * reference  # the blow-up the bound is for (fails if the case stops showing it)
    assert bounded <= 3 * reference


@pytest.mark.parametrize("form", [{"rank": 8}, {"rank": 8, "sketch": True}], ids=["low-rank", "sketch"])
def test_low_rank_and_sketched_forms_are_bounded(form: dict) -> None:
    case = subspace_switch(after=3)
    assert worst_update(case, _kron(bound=None, **form)) > 5.0
    bounded = worst_update(case, _kron(**form))
    assert bounded <= adam_bound(0.9, 0.95) * (1 + 1e-4)
    assert bounded <= 3 * worst_update(case, _adamw)  # the gradient term (docs/maths.md §5.5)


def test_low_rank_bound_is_the_plain_direction_when_nothing_is_capped() -> None:
    g = torch.Generator().manual_seed(0)
    M = torch.randn(2, 12, 10, generator=g, dtype=torch.float64)
    U_A = torch.linalg.qr(torch.randn(2, 12, 3, generator=g, dtype=torch.float64))[0]
    U_B = torch.linalg.qr(torch.randn(2, 10, 4, generator=g, dtype=torch.float64))[0]
    s_A, s_B = (
        torch.rand(2, 3, generator=g, dtype=torch.float64),
        torch.rand(2, 4, generator=g, dtype=torch.float64),
    )
    c_A, c_B = torch.full((2,), 0.3, dtype=torch.float64), torch.full((2,), 0.2, dtype=torch.float64)
    free = bounded_low_rank(M, (U_A, U_B), (s_A, c_A), (s_B, c_B), 1e-3, float("inf"))
    P_A = U_A @ torch.diag_embed(s_A - c_A[:, None]) @ U_A.mT + c_A[:, None, None] * torch.eye(
        12, dtype=M.dtype
    )
    P_B = U_B @ torch.diag_embed(s_B - c_B[:, None]) @ U_B.mT + c_B[:, None, None] * torch.eye(
        10, dtype=M.dtype
    )
    undamped = bounded_low_rank(M, (U_A, U_B), (s_A, c_A), (s_B, c_B), 0.0, float("inf"))
    torch.testing.assert_close(undamped, P_A @ M @ P_B)
    assert float((free - undamped).abs().max()) < 1e-2 * float(undamped.abs().max())
    capped = bounded_low_rank(100 * M, (U_A, U_B), (s_A, c_A), (s_B, c_B), 0.0, 0.5)
    assert float(capped.square().mean().sqrt()) <= 0.5 + 1e-12


def test_low_rank_gradient_term_caps_each_part_by_the_current_gradient() -> None:
    """docs/maths.md §5.5: with the current gradient G each part's scale is at most
    1/(√(1 − β₂) r_G), so the momentum of G alone, M = (1 − β₁) G, moves by RMS ≤ (1 − β₁)/√(1 − β₂)
    whatever the eigenvalue scales; without G the same scales give a far larger step."""
    g = torch.Generator().manual_seed(2)
    G = torch.randn(3, 12, 10, generator=g, dtype=torch.float64)
    U_A = torch.linalg.qr(torch.randn(3, 12, 3, generator=g, dtype=torch.float64))[0]
    U_B = torch.linalg.qr(torch.randn(3, 10, 4, generator=g, dtype=torch.float64))[0]
    huge = (torch.full((3, 3), 1e3, dtype=torch.float64), torch.full((3,), 1e3, dtype=torch.float64))
    wide = (torch.full((3, 4), 1e3, dtype=torch.float64), torch.full((3,), 1e3, dtype=torch.float64))
    M = 0.1 * G
    with_grad = bounded_low_rank(M, (U_A, U_B), huge, wide, 0.0, float("inf"), G, 0.95)
    without = bounded_low_rank(M, (U_A, U_B), huge, wide, 0.0, float("inf"))
    limit = 0.1 / math.sqrt(0.05)
    assert float(with_grad.square().mean().sqrt()) <= limit * (1 + 1e-9)
    assert float(without.square().mean().sqrt()) > 100 * limit


def test_eigenbasis_form_of_direction_is_bounded() -> None:
    """``direction`` with full bases (the eigenbasis form outside the rotated step) caps every entry."""
    g = torch.Generator().manual_seed(1)
    state = {
        BASIS_A: torch.linalg.qr(torch.randn(1, 6, 6, generator=g, dtype=torch.float64))[0],
        BASIS_B: torch.linalg.qr(torch.randn(1, 5, 5, generator=g, dtype=torch.float64))[0],
        EIG_A: torch.tensor([[1.0, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6]], dtype=torch.float64),
        EIG_B: torch.tensor([[1.0, 1e-6, 1e-6, 1e-6, 1e-6]], dtype=torch.float64),
        TRACE: torch.ones(1, dtype=torch.float64),
    }
    M = torch.randn(1, 6, 5, generator=g, dtype=torch.float64)
    settings = kron_settings({**DEFAULTS, "bound": "adam", "divergence": "frobenius"})
    U = direction(state, M, settings)
    assert float(U.square().mean().sqrt()) <= adam_bound(0.9, 0.95) + 1e-12
    free = direction(state, M, kron_settings({**DEFAULTS, "bound": None, "divergence": "frobenius"}))
    assert float(free.square().mean().sqrt()) > 100


def _first_steps(bias_correction: bool, steps: int = 6) -> list[float]:
    """RMS(ΔW)/lr of the first steps on one repeated gradient (W starts at 0)."""
    G = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))
    W = torch.zeros(8, 6, requires_grad=True)
    opt = tk.Kron([W], lr=1e-3, bias_correction=bias_correction)
    out = []
    for _ in range(steps):
        before = W.detach().clone()
        W.grad = G.clone()
        opt.step()
        out.append(float((W.detach() - before).square().mean().sqrt()) / 1e-3)
    return out


def test_bias_correction_makes_the_first_moving_steps_full_size() -> None:
    """On a constant gradient the unbiased momentum is G itself: step t (t = 1, 2, …) moves
    exactly 1/(1 − β₁ᵗ) times the uncorrected step (the statistics do not depend on the momentum),
    so the first moving step is as large as the later ones; uncorrected it is 0.19 of its corrected size."""
    corrected, plain = _first_steps(True), _first_steps(False)
    assert corrected[0] == 0.0 and plain[0] == 0.0  # the initialisation step moves nothing
    for t in range(1, len(corrected)):
        assert abs(corrected[t] * (1 - 0.9 ** (t + 1)) / plain[t] - 1) < 1e-5
    assert corrected[1] > 0.9 * corrected[-1]
    assert plain[1] < 0.25 * corrected[1]


def test_bias_correction_keeps_the_bound() -> None:
    w = worst_updates(subspace_switch(before=3, after=3), _kron(bound="adam", bias_correction=True))
    assert max(w) <= adam_bound(0.9, 0.95) * (1 + 1e-4)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"bound": "gradient"}, "bound"),
        ({"bound": "adam", "betas": (0.99, 0.95)}, "bound"),
        ({"bias_correction": 1}, "bias_correction"),
    ],
)
def test_bad_values_name_the_option(options: dict, name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(name)):
        tk.Kron([torch.zeros(3, 3, requires_grad=True)], **options)


def _spike_steps(
    opt: torch.optim.Optimizer, W: torch.Tensor, seed: int, steps: int, spike: bool = True
) -> list[torch.Tensor]:
    """Gradients in two directions, the last one (``spike``) plus a unit gradient in new
    directions; the W after each step."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, 2, generator=g, dtype=torch.float64)
    out = []
    for step in range(steps):
        grad = basis @ torch.randn(2, 6, generator=g, dtype=torch.float64) * 1e-3
        if spike and step == steps - 1:
            grad = grad + torch.randn(8, 6, generator=g, dtype=torch.float64)
        W.grad = grad
        opt.step()
        out.append(W.detach().clone())
    return out


def test_the_default_is_bounded_and_an_older_state_dict_resumes_unbounded() -> None:
    """``bound="adam"`` is the default; a state dict whose groups predate the option (no ``bound``
    key) continues exactly as the unbounded optimizer that wrote it."""
    W0 = torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    W_free, W_default = W0.clone().requires_grad_(), W0.clone().requires_grad_()
    free = tk.Kron([W_free], lr=1.0, precondition_every=3, bound=None)
    default = tk.Kron([W_default], lr=1.0, precondition_every=3)
    assert default.defaults["bound"] == "adam"
    _spike_steps(free, W_free, seed=1, steps=5, spike=False)
    _spike_steps(default, W_default, seed=1, steps=5, spike=False)
    saved = free.state_dict()
    for group in saved["param_groups"]:
        del group["bound"]
    W_resumed = W_free.detach().clone().requires_grad_()
    resumed = tk.Kron([W_resumed], lr=1.0, precondition_every=3)
    resumed.load_state_dict(saved)
    before = W_default.detach().clone()
    expected = _spike_steps(free, W_free, seed=2, steps=4)
    assert all(
        torch.equal(a, b) for a, b in zip(_spike_steps(resumed, W_resumed, 2, 4), expected, strict=True)
    )
    bounded = _spike_steps(default, W_default, seed=2, steps=4)
    rms = lambda d: float(d.square().mean().sqrt())  # noqa: E731
    assert rms(expected[-1] - expected[-2]) > 10 * rms(bounded[-1] - bounded[-2])
    assert rms(bounded[-1] - bounded[-2]) <= adam_bound(0.9, 0.95) * (1 + 1e-9)
    assert not torch.equal(before, W_default)
