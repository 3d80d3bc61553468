"""The precision study runs end to end at tiny sizes and measures what it claims."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk
from perf.precision_study import POLICIES, Settings, counting_roundings, principal_angle, run

TINY = Settings(steps=6, period=3, top_k=2, train_steps=3, seeds=2, tiny=True)


def test_study_writes_every_table(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "precision.md"
    text = run(TINY, out)
    assert out.read_text() == text
    for title in ("(a)–(c) statistics", "(a)–(c) per layer, bf16", "(d) char-LM final validation loss"):
        assert f"## {title}" in text
    for precision in POLICIES:
        assert f"| {precision} " in text
    assert "drift over T=3 (float64)" in text and "TF32 is emulated" in text


@pytest.mark.parametrize("precision", POLICIES)
def test_the_policy_reaches_the_ops(precision: str) -> None:
    """A Kron step rounds operands under TF32 and bf16 and never under IEEE (the study's check)."""
    p = torch.zeros(6, 4, requires_grad=True)
    opt = tk.Kron([p], lr=0.1, precision=precision)
    with counting_roundings() as rounded:
        for seed in range(3):
            p.grad = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed))
            opt.step()
    assert (rounded[0] > 0) == (precision != "ieee"), rounded


def test_principal_angle() -> None:
    Q = torch.eye(3, dtype=torch.float64)
    R = torch.tensor([[1.0, 0, 0], [0, 0.5**0.5, -(0.5**0.5)], [0, 0.5**0.5, 0.5**0.5]], dtype=torch.float64)
    assert abs(principal_angle(Q, Q, 2)) < 1e-6
    assert abs(principal_angle(Q, R, 2) - 45.0) < 1e-6
