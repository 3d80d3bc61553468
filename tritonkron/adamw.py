"""The AdamW path of :class:`tritonkron.Kron` (parameters with < 2 dims and groups with ``kron=False``).

DTensor parameters (FSDP2 ``fully_shard``) keep DTensor moments laid out like the parameter and are
stepped shard by shard (see :mod:`tritonkron.shards`); the caller passes the globally agreed ``ok``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tritonkron.shards import local

STEP, SKIPPED = "step", "skipped_steps"
EXP_AVG, EXP_AVG_SQ = "exp_avg", "exp_avg_sq"


def count_nonfinite(grad: Tensor, state: dict[str, Any], ok: Tensor | None = None) -> Tensor:
    """Return ``ok``, a 0-dim bool tensor: False when ``grad`` has a NaN or Inf, counted in ``skipped_steps``.

    ``ok`` may be given (decided elsewhere, e.g. agreed over the shards of a DTensor); it is then
    only counted. The count is a float32 tensor on the gradient's device (a plain int in checkpoints
    written by tritonkron < 0.2 is converted on first use), so no host read is needed.
    """
    if ok is None:
        ok = torch.isfinite(grad).all()
    skipped = state.get(SKIPPED)
    if not isinstance(skipped, Tensor):
        skipped = torch.tensor(float(skipped or 0), dtype=torch.float32, device=grad.device)
        state[SKIPPED] = skipped
    skipped.add_((~ok).to(skipped.dtype))
    return ok


def adamw_step(p: Tensor, group: dict[str, Any], state: dict[str, Any], ok: Tensor | None = None) -> None:
    r"""One AdamW step (Loshchilov & Hutter), the operations of ``torch.optim.AdamW``'s single-tensor path:

    .. math::
        W \leftarrow (1 - \eta\lambda) W - \frac{\eta}{1-\beta_1^t} \frac{m_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},
        \quad m_t = \beta_1 m + (1-\beta_1) g,\ v_t = \beta_2 v + (1-\beta_2) g^2.

    Moments are float32 for float16/bfloat16 parameters, else the parameter's dtype. The bias
    corrections are computed in float64 from the step tensor (no host read). A gradient with a
    NaN or Inf leaves the parameter and the moments untouched and is counted (masked, not branched).
    ``ok`` overrides the local finiteness test (required for DTensor parameters: every shard must
    make the same decision; :func:`tritonkron.shards.finite_flags`).
    """
    dtype = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
    if not state:
        state[STEP] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
        state[SKIPPED] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
        state[EXP_AVG] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        state[EXP_AVG_SQ] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
    grad = local(p.grad).to(dtype)
    ok = count_nonfinite(grad, state, ok)
    grad = torch.where(ok, grad, torch.zeros_like(grad))
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    step_tensor = state[STEP]
    step_tensor.add_(ok.to(step_tensor.dtype))
    step = step_tensor.to(torch.float64)
    exp_avg, exp_avg_sq = local(state[EXP_AVG]), local(state[EXP_AVG_SQ])
    p = local(p)
    exp_avg.copy_(torch.where(ok, exp_avg.lerp(grad, 1 - beta1), exp_avg))
    exp_avg_sq.copy_(torch.where(ok, exp_avg_sq * beta2 + (1 - beta2) * grad * grad, exp_avg_sq))
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step).sqrt()
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.to(dtype)).add_(eps)
    new = p.mul(1 - lr * wd) if wd != 0 else p
    new = new - (exp_avg / denom * (lr / bias_correction1).to(dtype)).to(p.dtype)
    p.copy_(torch.where(ok, new, p))
