"""Every option of tritonkron, once: the closed sets, the param-group options and their defaults,
their validation and parsing into :class:`KronSettings`, and the environment variables.

- Closed sets: :class:`Divergence`, :class:`TailRule`, :class:`Precision`; every user-facing
  string option is parsed here, so a bad value fails at construction with a ``ValueError`` naming
  the parameter and the allowed values.
- Param-group options: :data:`DEFAULTS` (each can be overridden per param group);
  :func:`validate_group` names the first invalid one and :func:`kron_settings` turns a group into
  the :class:`KronSettings` of the Kronecker path.
- Environment (the only place that reads it):

  - ``TRITONKRON_BACKEND``: default backend of :mod:`tritonkron.ops` ("auto", "triton" or "reference").
  - ``TRITON_INTERPRET``: when "1", Triton kernels run on CPU tensors through the interpreter.
  - ``TRITONKRON_TUNING``: path of the tuning file (from ``python -m autotune``) used when none is passed.

Precision policy (``precision``, docs/maths.md §11). The statistics, rotation and preconditioning
GEMMs of the step (factor update, rotated statistics, rotations, eigenbasis and spike-and-flat
preconditioning, the sketch's thin products; :mod:`tritonkron.ops.precision`) take their operands as

- ``"ieee"``: float32 operands, IEEE float32 products (no TF32), float32 accumulation;
- ``"tf32"``: float32 operands rounded to TF32 (10 explicit mantissa bits) on the tensor cores,
  float32 accumulation;
- ``"bf16"``: operands rounded to bfloat16 (7 mantissa bits), exact products, float32
  accumulation.

Float64 statistics ignore the policy (always IEEE float64), and the QR, the eigendecompositions
and the Newton–Schulz inverse roots always run in IEEE arithmetic.

The default is ``"ieee"``: measured on the char-LM's gradients (``python -m perf.precision_study``,
docs/maths.md §11.4), TF32 keeps the factors within 4e-5 and bf16 within 4e-4 (median relative
error against float64, against 1.9e-5 for float32) and both leave the final loss unchanged (within
0.003 over five seeds), so both are accurate enough; but the speed they buy is a GPU's and was not
measured (on the CPU they are emulated), so ``precision="tf32"`` is the recommended setting on CUDA
GPUs rather than the default.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


class Divergence(str, enum.Enum):
    """Bregman divergence used to project the gradient covariance onto Kronecker products."""

    FROBENIUS = "frobenius"
    VON_NEUMANN = "von_neumann"
    LOGDET = "logdet"


class TailRule(str, enum.Enum):
    """Rule for the isotropic constant applied to the bottom (tail) eigen-subspace of a factor."""

    MEAN = "mean"
    KTH = "kth"
    SKETCHY = "sketchy"
    FIXED = "fixed"


class Precision(str, enum.Enum):
    """Operand precision of the step's GEMMs (docs/maths.md §11): IEEE float32, TF32 or bfloat16."""

    IEEE = "ieee"
    TF32 = "tf32"
    BF16 = "bf16"


def _allowed(values: Iterable[str]) -> str:
    return ", ".join(repr(v) for v in values)


def parse_enum(value: object, enum_type: type[enum.Enum], name: str) -> enum.Enum:
    """Return ``enum_type(value)`` or raise ``ValueError`` naming ``name`` and the allowed values."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        allowed = _allowed(member.value for member in enum_type)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}") from None


def parse_divergence(value: object, name: str = "divergence") -> Divergence:
    """Parse a divergence name ("frobenius", "von_neumann" or "logdet")."""
    return parse_enum(value, Divergence, name)  # type: ignore[return-value]


def parse_tail_rule(value: object, name: str = "tail") -> TailRule:
    """Parse a tail rule name ("mean", "kth", "sketchy" or "fixed")."""
    return parse_enum(value, TailRule, name)  # type: ignore[return-value]


def parse_precision(value: object, name: str = "precision") -> Precision:
    """Parse a precision policy ("ieee", "tf32" or "bf16")."""
    return parse_enum(value, Precision, name)  # type: ignore[return-value]


@dataclass(frozen=True)
class KronSettings:
    """Hyperparameters of the Kronecker path, parsed from one param group.

    Attributes:
        divergence: factor rule (docs/maths.md §2.3).
        rank: subspace rank k per factor, or None for full eigenvalue preconditioning.
        tail: isotropic tail rule (docs/maths.md §4.2).
        alpha: tail multiplier α.
        beta2: retention of the factor and eigenvalue EMAs.
        eps: ε of the 1/(√(a_i b_j) + ε) damping.
        eig_floor: relative floor of eigenvalues, x ≥ eig_floor · max x.
        init_floor: floor of the initial eigenvalues relative to their mean.
        flat_tail_in_stats: use the spike-and-flat eigenvalues inside the LogDet/Frobenius coupling.
        sketch: keep each factor as a rank-ℓ low-rank-plus-isotropic sketch (:mod:`tritonkron.step.sketched`).
        sketch_rank: ℓ, the sketch rank (≥ rank); None when ``sketch`` is False.
        factor_ranks: (k_A, k_B) when the two factors have their own ranks (``rank="auto"``).
        beta1: retention of the momentum (used by the rotated-momentum step, :mod:`tritonkron.step.rotated`).
        bound: None, or "adam": every entry of the rotated direction bounded by Adam's worst case
            (:mod:`tritonkron.step.bounds`, docs/maths.md §5.5).
        bias_correction: divide the update by 1 − β₁ᵗ, t the parameter's step count (docs/maths.md §5.5).
        warm_start: W, the steps of the Adam-grafted warm start (:mod:`tritonkron.step.warm_start`,
            docs/maths.md §5.6); 0: off.
        precision: operand precision of the step's GEMMs (module docstring, docs/maths.md §11).
        orthonormalize: how a basis refresh orthonormalises X Q (docs/maths.md §2.4): "householder"
            (LAPACK/cuSOLVER QR), "cholesky" (shifted CholeskyQR3 in float64: GEMMs and batched
            Cholesky), or "auto" (cholesky on CUDA, where per-matrix QR dominated the step, else householder).
        max_precond_dim: a matrix dim above it is not blocked and gets a diagonal factor
            (:mod:`tritonkron.step.diagonal`, docs/maths.md §9.4); None: off. Always None for
            sketched groups, which keep O(dℓ) state already. Default 16384: vocabulary-sized dims
            (GPT-2's 50304, Llama's 32000) go diagonal, hidden and MLP dims (Llama-7B's 11008) stay
            dense (``perf/results/max_precond_dim_2026-12-08.md``).
    """

    divergence: Divergence
    rank: int | None
    tail: TailRule
    alpha: float
    beta2: float
    eps: float
    eig_floor: float
    init_floor: float
    flat_tail_in_stats: bool
    sketch: bool = False
    sketch_rank: int | None = None
    factor_ranks: tuple[int | None, int | None] | None = None
    beta1: float = 0.9
    bound: str | None = None
    bias_correction: bool = False
    warm_start: int = 0
    precision: Precision = Precision.IEEE
    orthonormalize: str = "auto"
    max_precond_dim: int | None = None

    @property
    def rank_a(self) -> int | None:
        """Subspace rank of the left factor A (``factor_ranks`` when tuned per factor, else ``rank``)."""
        return self.rank if self.factor_ranks is None else self.factor_ranks[0]

    @property
    def rank_b(self) -> int | None:
        """Subspace rank of the right factor B."""
        return self.rank if self.factor_ranks is None else self.factor_ranks[1]


BACKENDS = ("auto", "triton", "reference")


def default_backend() -> str:
    """The library-wide default backend from ``TRITONKRON_BACKEND`` (default "auto")."""
    value = os.environ.get("TRITONKRON_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        allowed = ", ".join(repr(b) for b in BACKENDS)
        raise ValueError(f"TRITONKRON_BACKEND must be one of {allowed}; got {value!r}")
    return value


def triton_interpret() -> bool:
    """Whether Triton runs in interpreter mode (kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tuning_path() -> str | None:
    """The tuning file named by ``TRITONKRON_TUNING``, or None when it is unset or empty."""
    value = os.environ.get("TRITONKRON_TUNING", "").strip()
    return value or None


AUTO = "auto"

COMM_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# Keys torch.optim and LR schedulers put into param groups themselves.
EXTRA_GROUP_KEYS = {"params", "param_names", "name", "initial_lr"}

DEFAULTS: dict[str, Any] = {
    "lr": 3e-4,
    "betas": (0.9, 0.95),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "divergence": "logdet",
    "rank": None,
    "tail": "mean",
    "alpha": 1.0,
    "precondition_every": 10,
    "block_size": 1024,
    "kron": True,
    "flat_tail_in_stats": False,
    "eig_floor": 1e-8,
    "init_floor": 0.1,
    "sketch": False,
    "sketch_rank": None,
    "nonfinite": "skip",
    "max_refresh_failures": 10,
    "max_update_rms": None,
    "bound": "adam",
    "bias_correction": False,
    "warm_start": 0,
    "precision": "ieee",
    "orthonormalize": "auto",
    "max_precond_dim": 16384,
}
NONFINITE_POLICIES = ("skip", "raise")
BOUNDS = (None, "adam")
ORTHONORMALIZERS = ("auto", "householder", "cholesky")


def _check_number(
    name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False
) -> None:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be a number or a one-element tensor; got a tensor of shape {tuple(value.shape)}"
            )
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number; got {value!r}")
    below = value <= low if low_open else value < low
    if below or value > high or math.isnan(value):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}]; got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def validate_group(group: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first invalid hyperparameter of a param group."""
    unknown = set(group) - set(DEFAULTS) - EXTRA_GROUP_KEYS
    if unknown:
        raise ValueError(f"unknown param-group options {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
    _check_number("lr", group["lr"], 0.0)
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2) in [0, 1); got {betas!r}")
    _check_number("betas[0]", betas[0], 0.0, 1.0 - 1e-12)
    _check_number("betas[1]", betas[1], 0.0, 1.0 - 1e-12)
    _check_number("eps", group["eps"], 0.0)
    _check_number("weight_decay", group["weight_decay"], 0.0)
    parse_divergence(group["divergence"], "divergence")
    rank = group["rank"]
    if (
        rank is not None
        and rank != AUTO
        and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1)
    ):
        raise ValueError(
            f"rank must be None (full preconditioning), a positive int or 'auto' (from the tuning file); got {rank!r}"
        )
    parse_tail_rule(group["tail"], "tail")
    _check_number("alpha", group["alpha"], 0.0, low_open=True)
    _check_positive_int("precondition_every", group["precondition_every"])
    _check_positive_int("block_size", group["block_size"])
    for flag in ("kron", "flat_tail_in_stats"):
        if not isinstance(group[flag], bool):
            raise ValueError(f"{flag} must be True or False; got {group[flag]!r}")
    _check_number("eig_floor", group["eig_floor"], 0.0, 1.0)
    _check_number("init_floor", group["init_floor"], 0.0, 1.0)
    _validate_sketch(group)
    _check_positive_int("max_refresh_failures", group["max_refresh_failures"])
    if group["max_update_rms"] is not None:
        _check_number("max_update_rms", group["max_update_rms"], 0.0, low_open=True)
    if group["nonfinite"] not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}; got {group['nonfinite']!r}")
    _validate_bounds(group)
    group_precision(group)
    group_max_precond_dim(group)
    if group.get("orthonormalize", DEFAULTS["orthonormalize"]) not in ORTHONORMALIZERS:
        raise ValueError(f"orthonormalize must be one of {ORTHONORMALIZERS}; got {group['orthonormalize']!r}")


def _validate_bounds(group: dict[str, Any]) -> None:
    """The ``bound`` (None or "adam", which needs β₁² < β₂), ``bias_correction`` (bool) and
    ``warm_start`` (int ≥ 0) options."""
    bound = group.get("bound")  # a group saved before the option ran unbounded
    if not any(bound is b or bound == b for b in BOUNDS):
        raise ValueError(f"bound must be one of {', '.join(map(repr, BOUNDS))}; got {bound!r}")
    beta1, beta2 = group["betas"]
    if bound is not None and float(beta1) ** 2 >= float(beta2):
        raise ValueError(
            f"bound='adam' (the default) needs betas[0]² < betas[1]; got betas={tuple(group['betas'])!r}; "
            "pass bound=None for an unbounded direction"
        )
    if not isinstance(group.get("bias_correction", DEFAULTS["bias_correction"]), bool):
        raise ValueError(f"bias_correction must be True or False; got {group['bias_correction']!r}")
    warm_start = group.get("warm_start", DEFAULTS["warm_start"])
    if isinstance(warm_start, bool) or not isinstance(warm_start, int) or warm_start < 0:
        raise ValueError(f"warm_start must be an int ≥ 0 (steps; 0: off); got {warm_start!r}")


def _validate_sketch(group: dict[str, Any]) -> None:
    """The ``sketch`` / ``sketch_rank`` options: sketching needs an int rank k and ℓ ≥ k."""
    if not isinstance(group["sketch"], bool):
        raise ValueError(f"sketch must be True or False; got {group['sketch']!r}")
    ell = group["sketch_rank"]
    if ell is not None and (isinstance(ell, bool) or not isinstance(ell, int) or ell < 1):
        raise ValueError(f"sketch_rank must be None (2·rank) or a positive int; got {ell!r}")
    if not group["sketch"]:
        return
    rank = group["rank"]
    if rank is None:
        raise ValueError(
            "sketch=True needs rank=k (an int): the sketch keeps only the top-k subspace and a tail"
        )
    if ell is not None and isinstance(rank, int) and ell < rank:
        raise ValueError(f"sketch_rank must be >= rank ({rank}); got {ell!r}")


def group_max_precond_dim(group: dict[str, Any]) -> int | None:
    """The group's ``max_precond_dim``, validated: None (off) or an int ≥ 1; None for a group saved
    before the option existed, whose state has the blocked layout."""
    value = group.get("max_precond_dim")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            f"max_precond_dim must be None (every dim dense, split at block_size) or an int >= 1 "
            f"(larger dims get a diagonal factor); got {value!r}"
        )
    return value


def group_precision(group: dict[str, Any]) -> Precision:
    """The group's precision policy, validated (the default when a group predates the option)."""
    return parse_precision(group.get("precision", DEFAULTS["precision"]), "precision")


def kron_settings(group: dict[str, Any]) -> KronSettings:
    """The Kronecker-path settings of a validated param group (``sketch_rank`` defaults to 2·rank)."""
    return KronSettings(
        divergence=parse_divergence(group["divergence"]),
        rank=group["rank"],
        tail=parse_tail_rule(group["tail"]),
        alpha=float(group["alpha"]),
        beta2=float(group["betas"][1]),
        beta1=float(group["betas"][0]),
        eps=float(group["eps"]),
        bound=group.get("bound"),  # absent in groups saved before the option: unbounded, as written
        bias_correction=group.get("bias_correction", DEFAULTS["bias_correction"]),
        warm_start=group.get("warm_start", DEFAULTS["warm_start"]),
        eig_floor=float(group["eig_floor"]),
        init_floor=float(group["init_floor"]),
        flat_tail_in_stats=group["flat_tail_in_stats"],
        sketch=group["sketch"],
        sketch_rank=(group["sketch_rank"] or 2 * group["rank"])
        if group["sketch"] and group["rank"] != AUTO
        else None,
        precision=group_precision(group),
        orthonormalize=group.get("orthonormalize", DEFAULTS["orthonormalize"]),
        max_precond_dim=None if group["sketch"] else group_max_precond_dim(group),
    )


def statistics_dtype(p: Tensor) -> torch.dtype:
    """Dtype of a parameter's factors and statistics: float64 for float64 parameters, else float32."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32
