"""The precision study runs end to end at tiny sizes and measures what it claims."""

from __future__ import annotations

import torch

from perf.precision_study import POLICIES, Settings, policy_installed, principal_angle, run
from tritonkron.ops.rotation.reference import rotate_back_ref

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


def test_policy_reaches_the_ops_and_is_removed_afterwards() -> None:
    import tritonkron.step.rotated as rotated

    before = rotated.rotate_back
    with policy_installed("bf16") as rounded:
        X = torch.randn(1, 4, 3)
        Q_A, Q_B = torch.eye(4).expand(1, 4, 4), torch.eye(3).expand(1, 3, 3)
        out = rotated.rotate_back(X, Q_A, Q_B)
        assert rounded[0] > 0 and torch.equal(out, rotate_back_ref(X, Q_A, Q_B, "bf16"))
    assert rotated.rotate_back is before


def test_principal_angle() -> None:
    Q = torch.eye(3, dtype=torch.float64)
    R = torch.tensor([[1.0, 0, 0], [0, 0.5**0.5, -(0.5**0.5)], [0, 0.5**0.5, 0.5**0.5]], dtype=torch.float64)
    assert abs(principal_angle(Q, Q, 2)) < 1e-6
    assert abs(principal_angle(Q, R, 2) - 45.0) < 1e-6
