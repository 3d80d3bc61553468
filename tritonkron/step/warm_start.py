"""The Adam-grafted warm start (``warm_start=W``, docs/maths.md §5.6).

While the statistics fill, the Kronecker direction of a few gradients is poorly aligned with the
gradient (whitening by factors estimated from t ≪ d samples amplifies their weakest directions), so
for the first W steps of a parameter its update takes Adam's direction, with the Kronecker update's
norm, fading out linearly:

    D = m̂/(√v̂ + ε),   m̂ = m/(1 − β₁ᵗ),  v̂ = v/(1 − β₂ᵗ)       (Adam's direction, per entry)
    U' = (1 − w_t) U + w_t (‖U‖_F/‖D‖_F) D,   w_t = clamp(1 − (t − 1)/W, 0, 1)

with t the parameter's step count. ‖U'‖_F ≤ ‖U‖_F (triangle inequality), so ``bound`` and
``max_update_rms`` caps of U still hold; a skipped step (U = 0) stays zero; the statistics never
see the graft (they depend on the gradients only), and from step W + 1 on U' = U exactly.

State: m and v (``warm_exp_avg``, ``warm_exp_avg_sq``, the parameter's matrix shape) exist only
during the warm start. Eagerly they are created on a parameter's first step and dropped once its
clock (steps given a gradient, a host scalar) passes W; under ``torch.compile`` they are kept after
W (no host decision in the graph; they are created on the first compiled step when missing) and
the graft is an exact no-op there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tritonkron.options import KronSettings
from tritonkron.state import CLOCK, STEP, WARM_EXP_AVG, WARM_EXP_AVG_SQ
from tritonkron.step.unit import PreparedUnit

__all__ = ["adam_direction", "graft", "warm_started", "warm_weight"]


def warm_weight(step: Tensor, steps: int) -> Tensor:
    """w_t = clamp(1 − (t − 1)/W, 0, 1): 1 on the first step, 0 from step W + 1 on."""
    return (1 - (step - 1) / steps).clamp(0, 1)


def adam_direction(exp_avg: Tensor, exp_avg_sq: Tensor, step: Tensor, settings: KronSettings) -> Tensor:
    """D = m̂/(√v̂ + ε), m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ): Adam's update direction (t ≥ 1)."""
    t = step.clamp_min(1)
    m_hat = exp_avg / (1 - torch.pow(settings.beta1, t))
    v_hat = exp_avg_sq / (1 - torch.pow(settings.beta2, t))
    return m_hat / (v_hat.sqrt() + settings.eps)


def graft(update: Tensor, direction: Tensor, weight: Tensor) -> Tensor:
    """U' = (1 − w) U + w (‖U‖_F/‖D‖_F) D: D's direction with U's norm, blended with U by w."""
    tiny = torch.finfo(direction.dtype).tiny
    scale = update.norm() / direction.norm().clamp_min(tiny)
    return (1 - weight) * update + (weight * scale) * direction


def _advance_moments(state: dict[str, Any], grad: Tensor, ok: Tensor, settings: KronSettings) -> None:
    """m ← β₁ m + (1 − β₁) g, v ← β₂ v + (1 − β₂) g² where the step is taken (``ok``), else kept."""
    g = torch.where(ok, grad, torch.zeros_like(grad))
    m, v = state[WARM_EXP_AVG], state[WARM_EXP_AVG_SQ]
    m.copy_(torch.where(ok, m.lerp(g, 1 - settings.beta1), m))
    v.copy_(torch.where(ok, v.mul(settings.beta2).addcmul(g, g, value=1 - settings.beta2), v))


def _active(state: dict[str, Any], steps: int, grad: Tensor) -> bool:
    """Whether the warm start runs this step; creates its moments on a parameter's first step and
    drops them (eagerly) once the clock has passed W."""
    compiling = torch.compiler.is_compiling()
    if WARM_EXP_AVG in state:
        if compiling or int(state[CLOCK]) <= steps:
            return True
        del state[WARM_EXP_AVG], state[WARM_EXP_AVG_SQ]
        return False
    if not compiling and int(state[CLOCK]) > 1:  # configured after the first step: not started
        return False
    state[WARM_EXP_AVG] = torch.zeros_like(grad)
    state[WARM_EXP_AVG_SQ] = torch.zeros_like(grad)
    return True


def warm_started(update: Tensor, ok: Tensor, state: dict[str, Any], prepared: PreparedUnit) -> Tensor:
    """The update U (shaped like the parameter) grafted onto Adam's direction during the warm start
    (module docstring); U itself when ``warm_start`` is 0 or the warm start is over. ``state``: the
    parameter's; ``prepared.grad``: its gradient in matrix shape (NaN/Inf where ``ok`` is False)."""
    if not prepared.jobs:
        return update
    settings, grad = prepared.jobs[0].settings, prepared.grad
    steps = settings.warm_start
    if steps == 0 or not _active(state, steps, grad):
        return update
    _advance_moments(state, grad, ok, settings)
    direction = adam_direction(state[WARM_EXP_AVG], state[WARM_EXP_AVG_SQ], state[STEP], settings)
    return graft(update, direction.reshape(update.shape).to(update.dtype), warm_weight(state[STEP], steps))
