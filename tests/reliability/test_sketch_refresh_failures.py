"""The sketch's Rayleigh–Ritz refresh decides on its failures on the device.

Its eigh (:func:`tritonkron.math.safe_linalg.unread_eigh`) is not read back: a block whose
eigendecomposition comes out non-finite without raising keeps its tracked sketch and counts one
more failure in ``refresh_failures``, by ``torch.where`` (``sketch_refresh.refreshed_sketches``),
while its batch-mates refresh as if nothing had failed. The only host read left in a steady
sketched step is each ``torch.linalg.eigh``'s own LAPACK/cuSOLVER error check, inside ATen.
"""

from __future__ import annotations

import copy

import pytest
import torch

import tritonkron as tk
from perf.step_proxies import counting, gpt, measure
from tests.reliability._frames import called_from
from tritonkron.math.safe_linalg import safe_eigh, unread_eigh

_REAL_EIGH = torch.linalg.eigh
OPTIONS = {"precondition_every": 1, "block_size": 8, "rank": 2, "sketch": True, "sketch_rank": 3}


def _nan_first_member(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch ``torch.linalg.eigh`` to return NaN eigenpairs, without raising, for the first matrix
    of each batch that the Rayleigh–Ritz step decomposes; returns the batch sizes it spoiled."""
    spoiled: list[int] = []

    def patched(A: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        values, vectors = _REAL_EIGH(A, *args, **kwargs)
        if called_from("rayleigh_ritz"):
            spoiled.append(A.shape[0])
            values, vectors = values.clone(), vectors.clone()
            values[0], vectors[0] = float("nan"), float("nan")
        return torch.return_types.linalg_eigh((values, vectors))

    monkeypatch.setattr(torch.linalg, "eigh", patched)
    return spoiled


def _setup() -> tuple[torch.Tensor, tk.Kron, torch.Generator]:
    gen = torch.Generator().manual_seed(0)
    param = torch.randn(16, 16, generator=gen).requires_grad_()  # four 8 × 8 blocks, one group
    opt = tk.Kron([param], lr=0.02, **OPTIONS)
    param.grad = torch.randn(16, 16, generator=gen)
    opt.step()  # initialise the sketches
    return param, opt, gen


def test_unread_eigh_is_safe_eigh_without_a_read() -> None:
    gen = torch.Generator().manual_seed(3)
    R = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    X = R @ R.mT
    for descending in (False, True):
        values, vectors, _ = safe_eigh(X, site="test", descending=descending)
        with counting() as counter:
            got = unread_eigh(X, site="test", descending=descending)
        assert torch.equal(got[0], values) and torch.equal(got[1], vectors)
        assert got[1].stride() == vectors.stride()
        assert counter.ops["_local_scalar_dense"] == 0, counter.ops
        assert counter.host_reads == counter.ops["_linalg_eigh"] == 1, counter.ops


def test_a_non_finite_refresh_keeps_the_tracked_sketch_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    param, opt, gen = _setup()
    grad = torch.randn(16, 16, generator=gen)
    twin_param = param.detach().clone().requires_grad_()
    twin = tk.Kron([twin_param], lr=0.02, **OPTIONS)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    before = {key: value.clone() for key, value in opt.state[param]["blocks"][0].items()}

    spoiled = _nan_first_member(monkeypatch)
    param.grad = grad.clone()
    opt.step()
    monkeypatch.undo()
    twin_param.grad = grad.clone()
    twin.step()

    assert spoiled == [4, 4]  # both sides' Rayleigh–Ritz matrices, the four blocks stacked
    blocks, clean = opt.state[param]["blocks"][0], twin.state[twin_param]["blocks"][0]
    assert blocks["refresh_failures"].tolist() == [1, 0, 0, 0]
    for key, value in blocks.items():
        assert bool(torch.isfinite(value.float()).all()), key
        assert torch.equal(value[1:], clean[key][1:]), key  # the batch-mates refresh as before
    for key in ("basis_a", "basis_b"):  # the failed block keeps its stale basis, the others move
        assert torch.equal(blocks[key][0], before[key][0])
        assert not torch.equal(clean[key][0], before[key][0])
    assert not torch.equal(blocks["compression_a"][0], before["compression_a"][0])  # tracked
    assert bool(torch.isfinite(param).all())

    param.grad = torch.randn(16, 16, generator=gen)
    opt.step()  # the next refresh succeeds and resets the count
    assert opt.state[param]["blocks"][0]["refresh_failures"].tolist() == [0, 0, 0, 0]


def test_steady_sketched_step_reads_only_the_eighs_own_error_checks() -> None:
    """Per step of a refresh period: no ``.item()``/``bool()`` read, and no host read but the one
    inside each ``torch.linalg.eigh`` (two per stacked shape with a due block: one per side)."""
    options = {**OPTIONS, "precondition_every": 4}
    counts = measure(lambda: gpt(2, d_model=16, vocab=11, context=8), options)
    assert 0 < counts["host reads max"] <= 6, counts  # three stacked shapes at most, two sides each
    model = gpt(2, d_model=16, vocab=11, context=8)
    opt = tk.Kron(model.parameters(), lr=1e-3, **options)
    gen = torch.Generator().manual_seed(0)
    for step in range(12):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        with counting() as counter:
            opt.step()
        if step >= 8:
            assert counter.ops["_local_scalar_dense"] == 0, (step, counter.ops)
            assert counter.host_reads == counter.ops["_linalg_eigh"], (step, counter.ops)
