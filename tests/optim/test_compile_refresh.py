"""The compiled step refreshes the S = ⌈B/T⌉ due slots of each block group, not all B blocks.

One optimizer with both dense forms (eigenbasis and ``rank=2`` low-rank) over parameters of 15, 10
and 2 blocks of 4 × 4 with T = 4 (T divides none of them) is stepped eagerly and compiled
(``fullgraph=True``, ``aot_eager``: the same ATen ops as eager, so the same bits) for 2T + 2 steps;
the compiled run's graphs are kept and inspected: the QR batches of the steady graph are the slot
counts, and the steady graph builds no tensor from Python values and reads nothing on the host.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import tritonkron as tk
from tritonkron.state import BLOCKS, READY
from tritonkron.step.schedule import DueSlots
from tritonkron.step.traceable import refresh_blocks

PERIOD = 4
STEPS = 2 * PERIOD + 2
BLOCKS_PER_WEIGHT = {(20, 12): 15, (8, 20): 10, (4, 8): 2}  # block_size=4: 5 × 3, 2 × 5, 1 × 2


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 20),
        torch.nn.Tanh(),
        torch.nn.Linear(20, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 4),
    )


def _graph_modules(gm: torch.fx.GraphModule):
    yield gm
    for sub in gm.children():
        if isinstance(sub, torch.fx.GraphModule):
            yield from _graph_modules(sub)


class _Recorder(CompileCounterWithBackend):
    """Counts frames and keeps every graph's QR batch sizes, ``torch.cond`` count and host-side ops."""

    def __init__(self) -> None:
        super().__init__("aot_eager")
        self.summaries: list[dict[str, list]] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list):
        found: dict[str, list] = {"qr": [], "cond": [], "host": []}
        for mod in _graph_modules(gm):
            for node in mod.graph.nodes:
                if node.target is torch.linalg.qr:
                    found["qr"].append(node.meta["example_value"][0].shape[0])
                elif node.target is torch.ops.higher_order.cond:
                    found["cond"].append(node.name)
                elif node.target in (torch.tensor, torch.as_tensor, "item", "tolist", "__bool__"):
                    found["host"].append(str(node.target))
        self.summaries.append(found)
        return super().__call__(gm, example_inputs)


def _train(compiled: bool) -> tuple[list[list[torch.Tensor]], tk.Kron, _Recorder | None]:
    model = _model()
    first, second, third = model[0], model[2], model[4]
    groups = [
        {"params": [first.weight, first.bias, third.weight, third.bias]},
        {"params": [second.weight, second.bias], "rank": 2},
    ]
    opt = tk.Kron(groups, lr=0.02, precondition_every=PERIOD, block_size=4)
    recorder = _Recorder() if compiled else None
    step = torch.compile(opt.step, backend=recorder, fullgraph=True) if compiled else opt.step
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(1))
    trajectory = []
    for _ in range(STEPS):
        opt.zero_grad()
        model(x).square().mean().backward()
        step()
        trajectory.append([p.detach().clone() for p in model.parameters()])
    return trajectory, opt, recorder


@pytest.fixture(scope="module")
def runs():
    """Eager and compiled runs, compiled once for every assertion of this module."""
    torch._dynamo.reset()
    counters.clear()
    eager, _, _ = _train(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dynamo's notes about profiler hooks
        compiled, opt, recorder = _train(True)
    breaks = dict(counters["graph_break"])
    torch._dynamo.reset()
    return eager, compiled, opt, recorder, breaks


def test_compiled_step_matches_eager_bit_for_bit(runs) -> None:
    eager, compiled, *_ = runs
    for step, (got, expected) in enumerate(zip(compiled, eager, strict=True)):
        for g, e in zip(got, expected, strict=True):
            assert torch.equal(g, e), f"step {step}: max |Δ| {(g - e).abs().max().item():.3g}"


def test_one_steady_graph_without_breaks(runs) -> None:
    *_, recorder, breaks = runs
    assert breaks == {}
    assert recorder.frame_count == 2  # state creation, then every later step: the clock is not specialised


def test_steady_graph_refreshes_only_the_due_slots(runs) -> None:
    _, _, opt, recorder, _ = runs
    counts = sorted(int(b[READY].numel()) for state in opt.state.values() for b in state.get(BLOCKS, []))
    assert counts == sorted(BLOCKS_PER_WEIGHT.values())
    steady = recorder.summaries[-1]
    # one QR per factor (two per group) of S = ⌈B/T⌉ blocks: 4, 3 and 1 instead of 15, 10 and 2
    assert sorted(steady["qr"]) == sorted(2 * [math.ceil(b / PERIOD) for b in counts])
    # conditionals: each group's initialisation test only (the group with B < T computes its slot)
    assert len(steady["cond"]) == len(counts)
    assert steady["host"] == []


def test_free_slots_never_overwrite_a_refreshed_block() -> None:
    """B = 7, T = 3, r = 2: slots 2, 5 and a free slot naming block 1; ``fn`` changes every block it
    sees, due or not, yet only the due blocks change (the free slot writes back what it read)."""
    state = {"x": torch.arange(7.0), "a": torch.zeros(7), "b": torch.zeros(7)}
    slots = DueSlots(torch.tensor([2, 5, 1]), torch.tensor([True, True, False]))

    def bump(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, due: torch.Tensor) -> tuple[torch.Tensor]:
        return (x + 100,)

    refresh_blocks(state, ("x",), bump, slots, torch.ones(7, dtype=torch.bool), ("a", "b"))
    assert state["x"].tolist() == [0, 1, 102, 3, 4, 105, 6]
