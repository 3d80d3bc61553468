"""``bias_correction`` computed for all parameters of a step at once (``unit._corrected``,
:func:`tritonkron.step.bounds.bias_corrections`) gives the bits of the per-parameter
1/(1 − β₁ᵗ) it replaces, and adds about one op per parameter to a step instead of six."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk
from perf.step_proxies import counting, gpt, measure
from tritonkron.step import unit
from tritonkron.step.bounds import bias_correction, bias_corrections


@pytest.mark.parametrize("beta1", [0.9, 0.95, 0.99, 0.999])
def test_bias_corrections_are_the_per_count_bits(beta1: float) -> None:
    """Over 3000 counts at once (long enough for a vectorised pow, which rounds some β₁ᵗ differently
    on CPU: t = 6 for β₁ = 0.95), each factor is the one-count function's bits."""
    steps = [torch.tensor(float(t)) for t in range(3000)]
    one_by_one = torch.stack([bias_correction(t, beta1) for t in steps])
    assert torch.equal(torch.stack(bias_corrections(steps, beta1)), one_by_one)


def _params(count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4 + i % 3, 3 + i % 2, generator=gen).requires_grad_() for i in range(count)]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    if step in (3, 4):  # two skipped steps of one parameter: its count lags the others'
        grads[1][0, 0] = float("nan")
    return grads


@pytest.mark.parametrize("options", [{}, {"bound": None}, {"max_update_rms": 0.5}], ids=str)
def test_batched_corrections_give_the_per_parameter_steps(
    options: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 40
    batched, single = _params(count), _params(count)
    kw = {"lr": 0.05, "betas": (0.95, 0.99), "bias_correction": True, "precondition_every": 2, **options}
    opt_batched, opt_single = tk.Kron(batched, **kw), tk.Kron(single, **kw)
    for step in range(9):
        pows = []
        for params, opt, per_parameter in ((batched, opt_batched, False), (single, opt_single, True)):
            for p, g in zip(params, _grads(params, step), strict=True):
                p.grad = g
            with monkeypatch.context() as patch, counting() as counter:
                if per_parameter:  # the per-parameter path: finish_unit computes each 1/(1 − β₁ᵗ)
                    patch.setattr(unit, "_corrected", lambda prepared: prepared)
                opt.step()
            pows.append((counter.ops["pow"], counter.ops["_foreach_pow"]))
        assert pows[0][1] == 1 and pows[1][1] == 0 and pows[1][0] - pows[0][0] == count, pows
        for a, b in zip(batched, single, strict=True):
            assert torch.equal(a, b), step
    steps = [float(opt_batched.state[p]["step"]) for p in batched[:3]]
    assert steps == [9.0, 7.0, 9.0]  # the skipped steps were counted out


def _kron_params(model: torch.nn.Module) -> int:
    return sum(1 for p in model.parameters() if p.dim() >= 2)


def test_bias_correction_adds_about_one_op_per_parameter() -> None:
    """The dispatched ops that ``bias_correction=True`` adds to a steady step (``bound=None``):
    a handful for all parameters and one multiplication per parameter (six each one by one)."""

    def tiny() -> torch.nn.Module:
        return gpt(4, d_model=16, vocab=11, context=8)

    options = {"precondition_every": 2, "block_size": 8, "bound": None}
    plain = measure(tiny, options)["ops mean"]
    corrected = measure(tiny, {**options, "bias_correction": True})["ops mean"]
    assert 0 < corrected - plain <= _kron_params(tiny()) + 8, (plain, corrected)
