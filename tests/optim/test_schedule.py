"""The host-side refresh schedule: every block refreshes once per period, a step refreshes at most
⌈N/T⌉ blocks, the traced slots agree with the host positions, and a steady step reads nothing."""

from __future__ import annotations

import math

import pytest
import torch

import tritonkron as tk
from perf.step_proxies import counting, gpt
from tritonkron.state import BLOCKS, CLOCK, READY
from tritonkron.step.schedule import KNOWN_READY, HostCopy, block_ordinals, due_mask, due_positions


@pytest.mark.parametrize("period", [1, 3, 10])
def test_every_block_refreshes_once_per_period_and_the_load_is_spread(period: int) -> None:
    counts = [5, 1, 3, 12, 2]
    firsts = block_ordinals(counts)
    total = sum(counts)
    for start in range(2 * period):
        seen = [0] * total
        for clock in range(start, start + period):
            due = [
                f + b for f, c in zip(firsts, counts, strict=True) for b in due_positions(clock, f, c, period)
            ]
            assert len(due) <= math.ceil(total / period)
            for g in due:
                seen[g] += 1
        assert seen == [1] * total


@pytest.mark.parametrize(("count", "period"), [(9, 4), (8, 4), (3, 4), (1, 4), (5, 1), (2, 2)])
def test_traced_slots_agree_with_host_positions(count: int, period: int) -> None:
    """The S = ⌈B/T⌉ slots name the due blocks in order; a free slot names one block that is not due."""
    for clock in range(-3, 12):
        slots = due_mask(torch.tensor(clock), 7, count, period, torch.device("cpu"))
        index, valid = slots.index.tolist(), slots.valid.tolist()
        due = due_positions(clock, 7, count, period)
        assert len(index) == math.ceil(count / period)
        assert tuple(i for i, v in zip(index, valid, strict=True) if v) == due
        assert all(0 <= i < count for i in index)
        assert len({i for i, v in zip(index, valid, strict=True) if not v} - set(due)) <= 1
        assert not {i for i, v in zip(index, valid, strict=True) if not v} & set(due)


def test_host_copy_and_known_ready() -> None:
    ready = torch.tensor([True, False])
    assert bool(HostCopy(ready.all()).value()) is False
    assert not KNOWN_READY.all_ready(ready)
    KNOWN_READY.watch(ready)
    assert not KNOWN_READY.all_ready(ready)  # learnt: not every block is ready
    done = torch.tensor([True, True])
    KNOWN_READY.watch(done)
    assert KNOWN_READY.all_ready(done)
    assert not KNOWN_READY.all_ready(done.clone())  # another tensor object is not known


def _blocks(opt: tk.Kron) -> int:
    return sum(int(b[READY].numel()) for s in opt.state.values() for b in s.get(BLOCKS, []))


@pytest.mark.parametrize("options", [{}, {"rank": 4}])
def test_steady_step_reads_nothing_and_refreshes_a_share_of_the_blocks(options: dict) -> None:
    torch.manual_seed(0)
    model = gpt(2, d_model=16, vocab=11, context=8)
    period = 3
    opt = tk.Kron(model.parameters(), lr=1e-3, precondition_every=period, block_size=8, **options)
    idx = torch.randint(0, 11, (2, 9))

    def step() -> None:
        model.zero_grad()
        logits = model(idx[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()

    step()
    step()  # the first steps initialise the blocks and learn that they are ready
    blocks = _blocks(opt)
    for _ in range(2 * period):
        with counting() as counter:
            step()
        assert counter.host_reads == 0, counter.ops
        # a refresh is one QR per factor: two matrices per block
        assert counter.qr_matrices <= 2 * math.ceil(blocks / period)
    assert all(
        s[CLOCK].device.type == "cpu" and int(s[CLOCK]) == 2 + 2 * period
        for s in opt.state.values()
        if CLOCK in s
    )
