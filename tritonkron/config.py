"""Closed sets of options, argument validation and optimizer state keys.

Every user-facing string option is validated here, so that a bad value fails at construction
with a ``ValueError`` naming the parameter and the allowed values.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


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
