"""Applying the Kronecker updates to the parameters: W ← (1 − ηλ) W − η U where the step is taken."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["apply_update", "apply_updates"]

_BATCHED_DTYPES = (torch.float32, torch.float64)


def apply_update(p: Tensor, update: Tensor, lr: float | Tensor, weight_decay: float, ok: Tensor) -> None:
    """W ← (1 − ηλ) W − η U where ``ok`` holds; W unchanged where the step was skipped."""
    new = p.mul(1 - lr * weight_decay) if weight_decay != 0 else p
    new = new - (update * lr).to(p.dtype)
    p.copy_(torch.where(ok, new, p))


def apply_updates(
    params: Sequence[Tensor],
    updates: Sequence[Tensor],
    oks: Sequence[Tensor],
    groups: Sequence[dict[str, Any]],
) -> None:
    """:func:`apply_update` of many parameters, with multi-tensor ops for the float32/float64
    parameters of a group with a float lr (one launch per op and batch instead of one per
    parameter), the same bits:

        W ← W · d − η U,  d = 1 − ηλ where ok, 1 where skipped

    (d in float64, rounded to W's dtype as a Python scalar would be). A skipped parameter's
    direction is exactly zero (its blocks are masked), so W · 1 − η · 0 = W. Other parameters
    (low-precision ones, a tensor lr) take :func:`apply_update`.
    """
    batches: dict[tuple, list[int]] = {}
    for i, (p, group) in enumerate(zip(params, groups, strict=True)):
        if p.dtype in _BATCHED_DTYPES and not isinstance(group["lr"], Tensor):
            batches.setdefault((id(group), p.dtype, p.device), []).append(i)
        else:
            apply_update(p, updates[i], group["lr"], group["weight_decay"], oks[i])
    for indices in batches.values():
        group = groups[indices[0]]
        lr, weight_decay = group["lr"], group["weight_decay"]
        batch = [params[i] for i in indices]
        if weight_decay != 0:
            taken = torch.stack([oks[i] for i in indices]).to(torch.float64)
            decay = (1 - lr * weight_decay * taken).to(batch[0].dtype)
            torch._foreach_mul_(batch, list(decay.unbind()))
        torch._foreach_sub_(batch, torch._foreach_mul([updates[i] for i in indices], lr))
