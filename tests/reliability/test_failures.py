"""Forced factorisation failures: last good basis kept, parameters finite, error only after N in a row."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk
import tritonkron.step.dense as preconditioner
from tritonkron.math.basis import Eigenpairs


def _poisoned(X: torch.Tensor, Q: torch.Tensor, steps: int = 1, method: str = "householder") -> Eigenpairs:
    """A refresh whose QR 'failed': NaN bases and eigenvalues."""
    nan = torch.full_like(Q, float("nan"))
    return Eigenpairs(nan[..., 0, :], nan)


def _setup(max_failures: int) -> tuple[torch.Tensor, tk.Kron, torch.Generator]:
    p = torch.randn(6, 4, requires_grad=True)
    opt = tk.Kron([p], lr=0.02, precondition_every=1, max_refresh_failures=max_failures)
    return p, opt, torch.Generator().manual_seed(0)


def _step(p: torch.Tensor, opt: tk.Kron, gen: torch.Generator) -> None:
    p.grad = torch.randn(p.shape, generator=gen)
    opt.step()


def test_failed_refreshes_keep_the_basis_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    p, opt, gen = _setup(max_failures=5)
    for _ in range(3):  # init + two good refreshes
        _step(p, opt, gen)
    blocks = opt.state[p]["blocks"][0]
    basis = blocks["basis_a"].clone()
    monkeypatch.setattr(preconditioner, "subspace_iteration", _poisoned)
    for expected in (1, 2, 3):
        _step(p, opt, gen)
        blocks = opt.state[p]["blocks"][0]
        assert int(blocks["refresh_failures"].max()) == expected
        assert torch.equal(blocks["basis_a"], basis)
        assert torch.isfinite(p).all()
    monkeypatch.undo()
    _step(p, opt, gen)  # a good refresh resets the count
    assert int(opt.state[p]["blocks"][0]["refresh_failures"].max()) == 0


def test_error_names_the_parameter_only_after_n_consecutive_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    p, opt, gen = _setup(max_failures=3)
    _step(p, opt, gen)
    monkeypatch.setattr(preconditioner, "subspace_iteration", _poisoned)
    _step(p, opt, gen)
    _step(p, opt, gen)  # two failures: still fine
    before_step = opt.state[p]["step"].clone()
    with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['params'\]\[0\].*3 consecutive"):
        _step(p, opt, gen)
    assert int(opt.state[p]["step"]) == int(before_step) + 1  # the step itself completed
    assert torch.isfinite(p).all()


def test_max_refresh_failures_is_validated() -> None:
    with pytest.raises(ValueError, match="max_refresh_failures"):
        tk.Kron([torch.zeros(2, 2, requires_grad=True)], max_refresh_failures=0)
