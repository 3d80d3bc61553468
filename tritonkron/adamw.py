"""The AdamW path of :class:`tritonkron.Kron` (parameters with < 2 dims and groups with ``kron=False``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

STEP, SKIPPED = "step", "skipped_steps"
EXP_AVG, EXP_AVG_SQ = "exp_avg", "exp_avg_sq"


def skip_nonfinite(grad: Tensor, state: dict[str, Any]) -> bool:
    """True (and the parameter's ``skipped_steps`` counted) when ``grad`` has a NaN or Inf."""
    if bool(torch.isfinite(grad).all()):
        return False
    state[SKIPPED] = state.get(SKIPPED, 0) + 1
    return True


def adamw_step(p: Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
    r"""One AdamW step (Loshchilov & Hutter), the operations of ``torch.optim.AdamW``'s single-tensor path:

    .. math::
        W \leftarrow (1 - \eta\lambda) W - \frac{\eta}{1-\beta_1^t} \frac{m_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},
        \quad m_t = \beta_1 m + (1-\beta_1) g,\ v_t = \beta_2 v + (1-\beta_2) g^2.

    Moments are float32 for float16/bfloat16 parameters, else the parameter's dtype.
    """
    dtype = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
    if not state:
        state[STEP] = torch.tensor(0.0, dtype=torch.float32)
        state[EXP_AVG] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        state[EXP_AVG_SQ] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
    grad = p.grad.to(dtype)
    if skip_nonfinite(grad, state):
        return
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    state[STEP] += 1
    step = float(state[STEP].item())
    exp_avg, exp_avg_sq = state[EXP_AVG], state[EXP_AVG_SQ]
    if wd != 0:
        p.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    if isinstance(lr, Tensor) or p.dtype != dtype:
        p.sub_((exp_avg / denom * (lr / bias_correction1)).to(p.dtype))
    else:
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
