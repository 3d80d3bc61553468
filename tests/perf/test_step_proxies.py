"""The step-cost proxies count what they claim: host reads, dispatched ops and factorised matrices."""

from __future__ import annotations

import math

import pytest
import torch

from perf.step_proxies import CONFIGS, _has_bool_index, counting, gpt, measure


def test_host_reads_are_counted() -> None:
    x = torch.randn(5)
    with counting() as counter:
        float(x.sum())
        bool((x > 0).any())
        torch.nonzero(x > 0)  # a data-dependent shape
        (x * 2).add_(1)
    assert counter.host_reads == 3, counter.ops
    assert counter.total >= 7


def test_views_are_not_kernels() -> None:
    x = torch.randn(4, 6)
    with counting() as counter:
        x[1:].view(-1).unsqueeze(0).expand(2, -1)
        x + 1
    assert counter.total >= 5
    assert counter.kernels == 1, counter.ops


def test_boolean_mask_indexing_is_a_host_read() -> None:
    x = torch.randn(5)
    assert _has_bool_index((x, [x > 0]))
    assert not _has_bool_index((x, [torch.tensor([0, 2])]))
    assert not _has_bool_index((x,))


def test_factorisations_that_check_errors_on_the_host_are_host_reads() -> None:
    a = torch.randn(2, 4, 4, dtype=torch.float64)
    spd = a @ a.mT + torch.eye(4, dtype=torch.float64)
    with counting() as counter:
        torch.linalg.eigh(spd)
        torch.linalg.svd(a)
        torch.linalg.cholesky(spd)
    assert counter.host_reads == 3, counter.ops
    with counting() as counter:
        torch.linalg.cholesky_ex(spd)
        torch.linalg.qr(a)
        torch.linalg.solve_triangular(spd, a, upper=True)
    assert counter.host_reads == 0, counter.ops


def test_factorised_matrices_count_every_batch_entry() -> None:
    a = torch.randn(3, 4, 4, dtype=torch.float64)
    with counting() as counter:
        torch.linalg.qr(a)
        torch.linalg.eigh(a @ a.mT)
    assert (counter.qr_matrices, counter.eigh_matrices) == (3, 3)


def test_measure_covers_a_refresh_period() -> None:
    counts = measure(lambda: gpt(1, d_model=16, vocab=11, context=8), {"precondition_every": 3})
    # The refresh step factorises at least one matrix; the mean over the period is below the max.
    assert counts["factorised max"] >= 1
    assert counts["factorised mean"] < counts["factorised max"]
    assert counts["ops max"] >= counts["ops mean"] > 0


def _tiny(depth: int) -> torch.nn.Module:
    return gpt(depth, d_model=16, vocab=11, context=8)


def _kron_params(model: torch.nn.Module) -> int:
    return sum(1 for p in model.parameters() if p.dim() >= 2)


# Kernels a step adds per Kronecker parameter: its gradient gathered into blocks and its update
# scattered back (one copy each when it has several blocks). Every form keeps its momentum as block
# state (M̂, or M in the low-rank and sketched forms of rank=k), advanced in the stacked group step,
# so rank=k adds no more than full rank (it added 6 while M was the parameter's: lerp, skip select,
# gather).
PER_PARAMETER = {"full": 2.0, "rank": 2.0}


@pytest.mark.parametrize(("name", "options"), [("full", {}), ("rank", {"rank": 4})], ids=["full", "rank"])
def test_steady_step_reads_nothing_and_its_kernels_do_not_grow_with_depth(name: str, options: dict) -> None:
    """The GPU-step goals measured on CPU: no host read in any step of a refresh period, and
    launches that grow with depth only by the per-parameter copies (more layers add members to the
    same equal-shape stacks; the bookkeeping of all parameters is a few multi-tensor ops)."""
    counts = {
        depth: measure(lambda d=depth: _tiny(d), {"precondition_every": 4, "block_size": 8, **options})
        for depth in (4, 8)
    }
    for c in counts.values():
        assert c["host reads max"] == 0
    added = _kron_params(_tiny(8)) - _kron_params(_tiny(4))
    growth = (counts[8]["kernels mean"] - counts[4]["kernels mean"]) / added
    assert growth <= PER_PARAMETER[name], (growth, counts)


def _blocks(model: torch.nn.Module, options: dict) -> int:
    """The number of Kronecker blocks ``tk.Kron`` makes of ``model``."""
    import tritonkron as tk

    opt = tk.Kron(model.parameters(), lr=0.0, **options)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    return sum(block["ready"].numel() for state in opt.state.values() for block in state.get("blocks", []))


def test_sketch_factorises_only_its_due_blocks() -> None:
    """``sketch=True`` factorises (a QR and an eigh per factor) only the blocks due for their
    Rayleigh–Ritz step: 4N/T matrices per step on average and at most 4⌈N/T⌉ (every block at every
    step before the refresh schedule); its host reads (the eigh's error checks, per stacked shape
    with a due block) and its kernels do not grow with depth beyond the per-parameter copies."""
    options = {"precondition_every": 8, "block_size": 8, "rank": 2, "sketch": True, "sketch_rank": 4}
    counts = {}
    for depth in (4, 8):
        counts[depth] = measure(lambda d=depth: _tiny(d), options)
        blocks = _blocks(_tiny(depth), options)
        assert counts[depth]["factorised mean"] == 4 * blocks / 8, (blocks, counts[depth])
        assert counts[depth]["factorised max"] <= 4 * math.ceil(blocks / 8), (blocks, counts[depth])
    assert counts[8]["host reads max"] == counts[4]["host reads max"], counts
    added = _kron_params(_tiny(8)) - _kron_params(_tiny(4))
    growth = (counts[8]["kernels mean"] - counts[4]["kernels mean"]) / added
    assert growth <= PER_PARAMETER["rank"], (growth, counts)


def test_rank_8_kernels_per_step_and_per_layer() -> None:
    """The ``rank=8`` rows of ``python -m perf.step_proxies``: about 1161 kernels per step at one
    layer and 42.5 more for the second (perf/results/bounds_2026-12-08.md: 111 of them at one layer
    are the bound's gradient term, M and G through the same launches; 1050 and 30.5 without it,
    perf/results/step_proxies_2026-12-08-momentum.md; 1326 with G's products launched apart)."""
    kernels = {depth: measure(lambda d=depth: gpt(d), CONFIGS["rank=8"])["kernels mean"] for depth in (1, 2)}
    assert kernels[1] <= 1161.0, kernels
    assert kernels[2] - kernels[1] <= 43.0, kernels
