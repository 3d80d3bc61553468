"""The ``precision`` param-group option (``tritonkron.options``): default, parsing, validation."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk
from tritonkron.options import DEFAULTS, Precision, kron_settings, validate_group

ALLOWED = "precision must be one of 'ieee', 'tf32', 'bf16'"


def _group(**overrides: object) -> dict:
    return {**DEFAULTS, "params": [], **overrides}


def test_default_is_ieee_and_groups_without_the_key_parse() -> None:
    assert DEFAULTS["precision"] == "ieee"
    group = _group()
    del group["precision"]  # a group saved before the option existed
    validate_group(group)
    assert kron_settings(group).precision is Precision.IEEE


@pytest.mark.parametrize("name", ["ieee", "tf32", "bf16"])
def test_each_policy_parses(name: str) -> None:
    group = _group(precision=name)
    validate_group(group)
    settings = kron_settings(group)
    assert settings.precision is Precision(name) and settings.precision.value == name


@pytest.mark.parametrize("bad", ["fp16", "TF32", "", None, 16])
def test_bad_policy_names_the_option_and_the_allowed_values(bad: object) -> None:
    with pytest.raises(ValueError, match=ALLOWED):
        validate_group(_group(precision=bad))


def test_a_param_group_with_a_bad_policy_fails_at_construction() -> None:
    p = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match=ALLOWED + "; got 'fp8'"):
        tk.Kron([{"params": [p], "precision": "fp8"}])
    opt = tk.Kron([{"params": [p], "precision": "bf16"}])
    assert opt.param_groups[0]["precision"] == "bf16"
