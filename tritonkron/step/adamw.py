"""The AdamW path of :class:`tritonkron.Kron` (parameters with < 2 dims and groups with ``kron=False``).

DTensor parameters (FSDP2 ``fully_shard``) keep DTensor moments laid out like the parameter and are
stepped shard by shard (see :mod:`tritonkron.distributed.shards`); the caller passes the globally agreed ``ok``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tritonkron.distributed.shards import local
from tritonkron.state import EXP_AVG, EXP_AVG_SQ, SKIPPED, STEP


def count_nonfinite(grad: Tensor, state: dict[str, Any], ok: Tensor | None = None) -> Tensor:
    """Return ``ok``, a 0-dim bool tensor: False when ``grad`` has a NaN or Inf, counted in ``skipped_steps``.

    ``ok`` may be given (decided elsewhere, e.g. agreed over the shards of a DTensor); it is then
    only counted. The count is a float32 tensor on the gradient's device (a plain int in checkpoints
    written by tritonkron < 0.2 is converted on first use), so no host read is needed.
    """
    if ok is None:
        ok = torch.isfinite(grad).all()
    skipped = _skip_counter(state, grad.device)
    skipped.add_((~ok).to(skipped.dtype))
    return ok


def _skip_counter(state: dict[str, Any], device: torch.device) -> Tensor:
    """``state["skipped_steps"]`` as a float32 tensor (converted from a plain int of old checkpoints)."""
    skipped = state.get(SKIPPED)
    if not isinstance(skipped, Tensor):
        skipped = torch.tensor(float(skipped or 0), dtype=torch.float32, device=device)
        state[SKIPPED] = skipped
    return skipped


def moment_dtype(p: Tensor) -> torch.dtype:
    """float32 for float16/bfloat16 parameters, else the parameter's dtype."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def _init_state(p: Tensor, state: dict[str, Any]) -> None:
    if not state:
        state[STEP] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
        state[SKIPPED] = torch.tensor(0.0, dtype=torch.float32, device=p.device)
        state[EXP_AVG] = torch.zeros_like(p, dtype=moment_dtype(p), memory_format=torch.preserve_format)
        state[EXP_AVG_SQ] = torch.zeros_like(p, dtype=moment_dtype(p), memory_format=torch.preserve_format)


def adamw_step(p: Tensor, group: dict[str, Any], state: dict[str, Any], ok: Tensor | None = None) -> None:
    r"""One AdamW step (Loshchilov & Hutter), the operations of ``torch.optim.AdamW``'s single-tensor path:

    .. math::
        W \leftarrow (1 - \eta\lambda) W - \frac{\eta}{1-\beta_1^t} \frac{m_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},
        \quad m_t = \beta_1 m + (1-\beta_1) g,\ v_t = \beta_2 v + (1-\beta_2) g^2.

    Moments are float32 for float16/bfloat16 parameters, else the parameter's dtype. The bias
    corrections are computed in float64 from the step tensor (no host read). A gradient with a
    NaN or Inf leaves the parameter and the moments untouched and is counted (masked, not branched).
    ``ok`` overrides the local finiteness test (required for DTensor parameters: every shard must
    make the same decision; :func:`tritonkron.distributed.shards.finite_flags`).
    """
    dtype = moment_dtype(p)
    _init_state(p, state)
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


def adamw_steps(params: list[Tensor], group: dict[str, Any], states: list[dict[str, Any]]) -> None:
    """:func:`adamw_step` for non-empty plain-tensor parameters of one group, device and dtype, with
    multi-tensor (``torch._foreach_*``) ops: one launch per op for all of them instead of one per
    parameter. Same formula and the same per-parameter skip: the gradients' finiteness is one
    ``_foreach_norm(ord=inf)`` and one host read, and when any is not finite every parameter of the
    batch takes :func:`adamw_step` with its flag. Used eagerly for a float ``lr`` (a tensor ``lr``
    and the compiled step take :func:`adamw_step`, whose dtype promotion a tensor ``lr`` affects);
    the results are the same bits as :func:`adamw_step`'s.
    """
    if isinstance(group["lr"], Tensor):
        raise ValueError("adamw_steps needs a float lr; a tensor lr takes adamw_step")
    for p, state in zip(params, states, strict=True):
        _init_state(p, state)
    dtype = moment_dtype(params[0])
    grads = [p.grad.to(dtype) for p in params]
    oks = torch.isfinite(torch.stack(torch._foreach_norm(grads, ord=float("inf"))))
    if not bool(oks.all()):
        for p, state, ok in zip(params, states, oks.unbind(), strict=True):
            adamw_step(p, group, state, ok)
        return
    for p, state in zip(params, states, strict=True):
        _skip_counter(state, p.device)  # nothing to count; converts the counts of old checkpoints
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    steps = [state[STEP] for state in states]
    torch._foreach_add_(steps, 1.0)
    exp_avgs = [state[EXP_AVG] for state in states]
    exp_avg_sqs = [state[EXP_AVG_SQ] for state in states]
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    squares = torch._foreach_mul(grads, 1 - beta2)
    torch._foreach_mul_(squares, grads)
    torch._foreach_add_(exp_avg_sqs, squares)
    step = torch.stack(steps).to(torch.float64)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step).sqrt()
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, list(bias_correction2_sqrt.to(dtype).unbind()))
    torch._foreach_add_(denoms, eps)
    updates = torch._foreach_div(exp_avgs, denoms)
    torch._foreach_mul_(updates, list((lr / bias_correction1).to(dtype).reshape(-1).unbind()))
    if wd != 0:
        decay = 1 - lr * wd
        torch._foreach_mul_(params, decay.reshape(()) if isinstance(decay, Tensor) else decay)
    torch._foreach_sub_(params, [u.to(p.dtype) for u, p in zip(updates, params, strict=True)])
