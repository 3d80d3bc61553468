"""The AdamW path of :class:`tritonkron.Kron` (parameters with < 2 dims and groups with ``kron=False``).

DTensor parameters (FSDP2 ``fully_shard``) keep DTensor moments laid out like the parameter and are
stepped shard by shard (see :mod:`tritonkron.distributed.shards`); the caller passes the globally agreed ``ok``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from tritonkron.distributed.shards import finite_flags, local
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


def count_nonfinite_all(grads: list[Tensor], states: list[dict[str, Any]]) -> list[Tensor]:
    """:func:`count_nonfinite` of many parameters, with ``step`` advanced where ok (the Kronecker
    path's counters), in a few ops per (dtype, device) however many parameters there are.

    ok_i = isfinite(‖g_i‖₁): the sum of |entries| is NaN or Inf exactly when an entry is (an
    overflow of the sum would need entries near 1e34 in float32); the counts are one
    ``_foreach_add_`` each: skipped_steps += 1 − ok, step += ok.
    """
    if not grads:
        return []
    norms = torch._foreach_norm(grads, ord=1)
    batches: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, norm in enumerate(norms):
        batches.setdefault((norm.dtype, norm.device), []).append(i)
    oks: list[Tensor] = [norms[0]] * len(grads)
    for indices in batches.values():
        ok = torch.isfinite(torch.stack([norms[i] for i in indices]))
        device = norms[indices[0]].device
        taken = ok.to(torch.float32)
        skipped = [_skip_counter(states[i], device) for i in indices]
        torch._foreach_add_(skipped, list((1 - taken).unbind()))
        torch._foreach_add_([states[i][STEP] for i in indices], list(taken.unbind()))
        for i, flag in zip(indices, ok.unbind(), strict=True):
            oks[i] = flag
    return oks


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
    r""":func:`adamw_step` for non-empty plain-tensor parameters of one group, device and dtype, with
    multi-tensor (``torch._foreach_*``) ops: one launch per op for all of them instead of one per
    parameter, and no host read. The same update,

    .. math::
        W \leftarrow (1 - \eta\lambda) W - \frac{\eta}{1-\beta_1^t} \frac{m_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon},
        \quad m_t = \beta_1 m + (1-\beta_1) g,\ v_t = \beta_2 v + (1-\beta_2) g^2,

    and the same per-parameter skip, as tensors: a parameter whose gradient has a NaN or Inf gets a
    zero gradient (:func:`_finite_grads`), a step and lerp weight of 0 (:math:`m + 0 \cdot (0 - m) = m`)
    and a factor of 1 on :math:`v` (:math:`1 \cdot v + 0 = v`); its new value is computed and
    discarded by one ``torch.where`` over all the parameters. Used eagerly for a float ``lr`` (a
    tensor ``lr`` and the compiled step take :func:`adamw_step`, whose dtype promotion a tensor
    ``lr`` affects); the results are the same bits as :func:`adamw_step`'s. The dispatched ops do
    not grow with the number of parameters, except one view per parameter of other than 1 dim.
    """
    if isinstance(group["lr"], Tensor):
        raise ValueError("adamw_steps needs a float lr; a tensor lr takes adamw_step")
    for p, state in zip(params, states, strict=True):
        _init_state(p, state)
        _skip_counter(state, p.device)  # converts the counts of old checkpoints
    dtype = moment_dtype(params[0])
    grads, oks, mask = _finite_grads(params, dtype)
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    torch._foreach_add_([state[SKIPPED] for state in states], _per_param(oks, 0.0, 1.0, torch.float32))
    steps = [state[STEP] for state in states]
    torch._foreach_add_(steps, _per_param(oks, 1.0, 0.0, torch.float32))
    exp_avgs = [state[EXP_AVG] for state in states]
    exp_avg_sqs = [state[EXP_AVG_SQ] for state in states]
    torch._foreach_lerp_(exp_avgs, grads, _per_param(oks, 1 - beta1, 0.0, dtype))
    torch._foreach_mul_(exp_avg_sqs, _per_param(oks, beta2, 1.0, dtype))
    squares = torch._foreach_mul(grads, 1 - beta2)
    torch._foreach_mul_(squares, grads)
    torch._foreach_add_(exp_avg_sqs, squares)
    step = torch.stack(steps).to(torch.float64)
    bias_correction1 = 1 - beta1**step  # 0 for a parameter skipped at step 0: its update is discarded
    bias_correction2_sqrt = (1 - beta2**step).sqrt()
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, list(bias_correction2_sqrt.to(dtype).unbind()))
    torch._foreach_add_(denoms, eps)
    updates = torch._foreach_div(exp_avgs, denoms)
    torch._foreach_mul_(updates, list((lr / bias_correction1).to(dtype).unbind()))
    flat = _flatten(params)  # W as in adamw_step, for all the parameters at once; a skipped one keeps W
    new = flat.mul(1 - lr * wd) if wd != 0 else flat
    new = new - _flatten(updates).to(flat.dtype)
    torch._foreach_copy_(params, _unflatten(torch.where(mask, new, flat), params))


def _finite_grads(params: list[Tensor], dtype: torch.dtype) -> tuple[list[Tensor], Tensor, Tensor]:
    """The gradients as ``dtype``, with those that hold a NaN or Inf zeroed (before any arithmetic:
    0 · NaN is NaN); ``oks``, one bool per parameter (its gradient is finite); and ``mask``, the flags
    repeated over the parameters' elements, flattened and concatenated."""
    flat = _flatten([p.grad for p in params]).to(dtype)
    sizes = [p.numel() for p in params]
    not_finite = (~torch.isfinite(flat)).split(sizes)
    oks = ~torch.stack(torch._foreach_max(list(not_finite)))  # no element of the gradient is NaN or Inf
    mask = torch.empty_like(flat, dtype=torch.bool)
    torch._foreach_copy_(list(mask.split(sizes)), list(oks.unbind()))  # copy_ broadcasts each flag
    return _unflatten(torch.where(mask, flat, 0.0), params), oks, mask


def _per_param(oks: Tensor, if_ok: float, if_skipped: float, dtype: torch.dtype) -> list[Tensor]:
    """One 0-dim ``dtype`` tensor per parameter: ``if_ok`` where its gradient is finite, else ``if_skipped``."""
    return list(torch.full_like(oks, if_ok, dtype=dtype).where(oks, if_skipped).unbind())


def _flatten(tensors: list[Tensor]) -> Tensor:
    """The tensors' elements, one after the other, in one vector (no op flattens a 1-D tensor)."""
    return torch.cat([t.flatten() for t in tensors])


def _unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """:func:`_flatten` undone: views of ``flat`` shaped like ``like`` (a 1-D piece is not reshaped)."""
    pieces = flat.split([t.numel() for t in like])
    return [piece if t.dim() == 1 else piece.view(t.shape) for piece, t in zip(pieces, like, strict=True)]


def run_adamw(params: list[tuple[Tensor, dict[str, Any]]], state: dict[Tensor, dict[str, Any]]) -> None:
    """AdamW steps of ``(parameter, group)`` pairs: plain tensors of one group, device and dtype with a
    float lr by :func:`adamw_steps`, the rest one by one; DTensor (FSDP2) parameters are stepped
    shard by shard, their finiteness agreed over the mesh in one collective
    (:mod:`tritonkron.distributed.shards`)."""
    sharded = [i for i, (p, _) in enumerate(params) if isinstance(p.grad, DTensor)]
    agreed = dict(zip(sharded, finite_flags([params[i][0].grad for i in sharded]), strict=True))
    batches: dict[tuple, list[Tensor]] = {}
    for i, (p, group) in enumerate(params):
        if i in agreed or p.numel() == 0 or isinstance(group["lr"], Tensor) or torch.compiler.is_compiling():
            adamw_step(p, group, state[p], agreed.get(i))
        else:
            batches.setdefault((id(group), p.device, p.dtype), []).append(p)
    groups = {id(group): group for _, group in params}
    for (group_id, _, _), batch in batches.items():
        adamw_steps(batch, groups[group_id], [state[p] for p in batch])
