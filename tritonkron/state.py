"""Every optimizer state key of :class:`tritonkron.Kron`, once.

A Kronecker parameter's state holds ``step`` (steps taken, a float32 device scalar), ``skipped_steps``,
``clock`` (steps it was given a gradient, skipped ones included: a CPU int64 scalar that schedules
the basis refreshes on the host, :mod:`tritonkron.step.schedule`), ``device_clock`` (the same count
as an int64 scalar on the parameter's device, present after a compiled step or
:meth:`tritonkron.Kron.prepare_capture`: it is then the count, and ``clock`` catches up on the next
eager step) and ``blocks`` (the list of its block groups' states; each group keeps its own momentum,
:mod:`tritonkron.step.momentum`). State written by
earlier versions may hold ``momentum`` (M, the parameter's matrix shape) beside them, converted into
the groups on the next step.
One *block group* is a stack of equal-shape blocks ``[B, m, n]``; its state is a dict of tensors
(checkpoint-friendly: ``torch.load(weights_only=True)`` reads it back):

    factor_a [B, m, m], factor_b [B, n, n]   EMA factor statistics A, B (dense groups)
    basis_a  [B, m, m], basis_b  [B, n, n]   stale eigenbases Q_A, Q_B (columns descending);
                                             [B, m, ℓ], [B, n, ℓ] in sketched groups
    eig_a    [B, m],    eig_b    [B, n]      tracked eigenvalues a, b = diag(Qᵀ X Q) ([B, ℓ] sketched)
    tail_a   [B],       tail_b   [B]         isotropic tail constants of a sketch (sketched groups)
    compression_a [B, ℓ, ℓ], compression_b   H = Uᵀ X̃ U, a sketch in its basis (sketched groups;
                                             diagonal after a Rayleigh–Ritz step, eig = diag(H))
    trace    [B]                             τ = EMA of ‖G‖²_F (von Neumann normaliser)
    ready    [B] bool                        block initialised from a non-zero gradient
    refresh_failures [B]                     consecutive failed basis computations
    momentum_hat [B, m, n]                   rotated momentum Q_Aᵀ M Q_B (eigenbasis-form groups)
    momentum [B, m, n]                       momentum M ← β₁ M + (1 − β₁) G, unrotated (groups in the
                                             low-rank direction form of rank=k, and sketched groups)

A block group with a diagonal side (a matrix dim above ``max_precond_dim``,
:mod:`tritonkron.step.diagonal`) holds no ``factor``/``basis``/``eig`` keys for that side, and
instead

    diag_a   [B, m]  or  diag_b [B, n]       the diagonal factor itself (its basis is I)

beside the dense side's ``factor_*``, ``basis_*``, ``eig_*`` (none when both sides are diagonal),
``trace``, ``ready``, ``refresh_failures`` and ``momentum_hat`` [B, m, n] (M Q_B, Q_Aᵀ M or M:
the momentum rotated by the dense side's basis only).

During the Adam-grafted warm start (``warm_start=W``, :mod:`tritonkron.step.warm_start`) a
Kronecker parameter also holds ``warm_exp_avg`` and ``warm_exp_avg_sq`` (Adam's m and v, its matrix
shape), dropped once its clock passes W.

A parameter on the AdamW path (fewer than 2 dims, or a group with ``kron=False``) holds
``step``, ``exp_avg``, ``exp_avg_sq`` and ``skipped_steps`` (steps skipped for a non-finite
gradient), the names ``torch.optim.AdamW`` uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# A Kronecker parameter.
BLOCKS = "blocks"
MOMENTUM = "momentum"
CLOCK = "clock"
DEVICE_CLOCK = "device_clock"
READY_KNOWN = "ready_known"
"""A Python bool: every block of the parameter is known to be initialised
(:meth:`tritonkron.Kron.prepare_capture`), so a compiled step is traced without the initialisation;
saved with the ``ready`` flags it describes."""

# A block group (dense, rotated or sketched).
FACTOR_A, FACTOR_B = "factor_a", "factor_b"
BASIS_A, BASIS_B = "basis_a", "basis_b"
EIG_A, EIG_B = "eig_a", "eig_b"
TAIL_A, TAIL_B = "tail_a", "tail_b"
COMPRESSION_A, COMPRESSION_B = "compression_a", "compression_b"
TRACE, READY = "trace", "ready"
FAILURES = "refresh_failures"
MOMENTUM_HAT = "momentum_hat"
DIAG_A, DIAG_B = "diag_a", "diag_b"

GROUP_KEYS = (FACTOR_A, FACTOR_B, BASIS_A, BASIS_B, EIG_A, EIG_B, TRACE, READY, FAILURES)
SKETCH_KEYS = (
    BASIS_A,
    BASIS_B,
    COMPRESSION_A,
    COMPRESSION_B,
    EIG_A,
    EIG_B,
    TAIL_A,
    TAIL_B,
    TRACE,
    READY,
    FAILURES,
)

# A Kronecker parameter during the Adam-grafted warm start (tritonkron.step.warm_start).
WARM_EXP_AVG, WARM_EXP_AVG_SQ = "warm_exp_avg", "warm_exp_avg_sq"

# A parameter on the AdamW path.
STEP, SKIPPED = "step", "skipped_steps"
EXP_AVG, EXP_AVG_SQ = "exp_avg", "exp_avg_sq"


def loaded_to_device(value: Any, device: torch.device) -> Any:
    """Deep copy of loaded state onto ``device``, keeping every tensor's dtype; the step count
    (``step``) and the host ``clock`` stay where they were saved (``device_clock`` moves)."""
    if isinstance(value, Tensor):
        return value.detach().to(device=device, copy=True)
    if isinstance(value, dict):
        return {k: v.clone() if k in (STEP, CLOCK) else loaded_to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [loaded_to_device(v, device) for v in value]
    return value
