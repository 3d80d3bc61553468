"""CPU proxies for a compiled steady step that CUDA graphs can capture (``Kron.prepare_capture``).

Inductor keeps a graph out of CUDA graphs when it holds a ``torch.cond`` (a host branch on the
predicate), reads or mutates a CPU tensor, or updates in place an input that is not static. An
optimizer with the eigenbasis form, the ``rank=2`` low-rank form and a group of fewer blocks than
the period is stepped eagerly and compiled (``fullgraph=True``, ``aot_eager``: the same ATen ops
as eager, so the same bits), ``prepare_capture`` being called after the second step in both runs;
the graph traced after it is inspected node by node. Then the clock's hand-over between eager and
compiled steps and through a saved state dict is checked against an all-eager run.
"""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import tritonkron as tk
from tritonkron.state import BLOCKS, CLOCK, DEVICE_CLOCK, READY, READY_KNOWN, loaded_to_device

PERIOD = 4
STEPS = 2 * PERIOD + 2
PREPARE_AFTER = 1  # the step after which prepare_capture is called (0-based)


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 8), torch.nn.Linear(8, 4)
    )


def _optimizer(model: torch.nn.Sequential, **options) -> tk.Kron:
    groups = [
        {"params": [model[0].weight, model[0].bias, model[3].weight, model[3].bias]},  # 15 and 2 blocks
        {"params": [model[2].weight, model[2].bias], "rank": 2},  # 10 blocks, low-rank form
    ]
    return tk.Kron(groups, lr=0.02, precondition_every=PERIOD, block_size=4, **options)


class _Recorder(CompileCounterWithBackend):
    """Counts frames and keeps, per graph: its ``torch.cond`` nodes, host-side ops, QR batch sizes,
    input names and the inputs it updates in place that are not static."""

    def __init__(self) -> None:
        super().__init__("aot_eager")
        self.summaries: list[dict[str, list]] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list):
        found: dict[str, list] = {"cond": [], "host": [], "qr": [], "inputs": [], "mutated": []}
        static = {}
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                found["inputs"].append(node.name)
                value = node.meta.get("example_value")
                marked = "_dynamo_static_input_type" in node.meta.get("tensor_dict", {})
                static[node] = marked or isinstance(value, torch.nn.Parameter)
            elif node.target is torch.ops.higher_order.cond:
                found["cond"].append(node.name)
            elif node.target in (torch.tensor, torch.as_tensor, "item", "tolist", "__bool__"):
                found["host"].append(str(node.target))
            elif node.target is torch.linalg.qr:
                found["qr"].append(node.meta["example_value"][0].shape[0])
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
            in_place = name.endswith("_") and not name.endswith("__") and node.op == "call_method"
            if in_place and node.args and node.args[0] in static and not static[node.args[0]]:
                found["mutated"].append(node.args[0].name)
        self.summaries.append(found)
        return super().__call__(gm, example_inputs)


def _batch() -> torch.Tensor:
    return torch.randn(16, 12, generator=torch.Generator().manual_seed(1))


def _static(opt: tk.Kron) -> list[torch.Tensor]:
    """The optimizer's state tensors that are marked static inputs."""
    tensors = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    tensors += [t for s in opt.state.values() for b in s.get(BLOCKS, []) for t in b.values()]
    return [t for t in tensors if hasattr(t, "_dynamo_static_input_type")]


def _run(
    model: torch.nn.Sequential,
    opt: tk.Kron,
    steps,
    prepare_after: int | None = None,
    marked: list | None = None,
) -> list:
    """Step with ``steps[i]`` (a callable) at step i; the parameters after every step. ``marked``
    receives the static state tensors right after ``prepare_capture``."""
    trajectory = []
    for i, step in enumerate(steps):
        opt.zero_grad()
        model(_batch()).sin().square().mean().backward()
        step()
        if i == prepare_after:
            opt.prepare_capture()
            if marked is not None:
                marked.extend(_static(opt))
        trajectory.append([p.detach().clone() for p in model.parameters()])
    return trajectory


@pytest.fixture(scope="module")
def runs():
    """Eager and compiled runs with ``prepare_capture`` after step PREPARE_AFTER, compiled once."""
    torch._dynamo.reset()
    model = _model()
    opt = _optimizer(model)
    eager = _run(model, opt, [opt.step] * STEPS, PREPARE_AFTER)
    model = _model()
    opt = _optimizer(model)
    recorder = _Recorder()
    compiled_step = torch.compile(opt.step, backend=recorder, fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dynamo's notes about profiler hooks
        marked: list[torch.Tensor] = []
        compiled = _run(model, opt, [compiled_step] * STEPS, PREPARE_AFTER, marked)
    torch._dynamo.reset()
    return eager, compiled, opt, recorder, marked


def test_prepared_compiled_step_matches_eager_bit_for_bit(runs) -> None:
    eager, compiled, opt, *_ = runs
    for step, (got, expected) in enumerate(zip(compiled, eager, strict=True)):
        for g, e in zip(got, expected, strict=True):
            assert torch.equal(g, e), f"step {step}: max |Δ| {(g - e).abs().max().item():.3g}"
    kron = [s for s in opt.state.values() if BLOCKS in s]
    assert len(kron) == 3 and all(s[READY_KNOWN] for s in kron)


def test_prepared_steady_graph_has_nothing_that_stops_capture(runs) -> None:
    _, _, opt, recorder, _ = runs
    # state creation, the steady step with its initialisation branch, the prepared steady step:
    # no graph after it in the remaining steps, whatever the clock
    assert recorder.frame_count == 3
    before, captured = recorder.summaries[1], recorder.summaries[2]
    assert len(before["cond"]) == 3  # one initialisation test per block group
    assert captured["cond"] == [] and captured["host"] == []
    counts = sorted(int(b[READY].numel()) for s in opt.state.values() for b in s.get(BLOCKS, []))
    assert sorted(captured["qr"]) == sorted(2 * [math.ceil(b / PERIOD) for b in counts])  # due slots
    assert not [
        name for name in captured["inputs"] if name.endswith(f"_{CLOCK}_") and DEVICE_CLOCK not in name
    ]
    assert sum(name.endswith(f"_{DEVICE_CLOCK}_") for name in captured["inputs"]) == 3
    assert captured["mutated"] == []
    assert before["mutated"] != []  # the proxy sees in-place updates of inputs that are not static


def test_static_state_keeps_its_addresses(runs) -> None:
    """What prepare_capture marks static (step counts, AdamW moments) is updated in place, and the
    block groups' state, replaced at every step, is not marked: no static input changes address."""
    *_, opt, _, marked = runs
    assert len(marked) == 3 * 2 + 3 * 4  # step and skip counts of 3 weights; 3 biases' AdamW state
    assert {id(t) for t in _static(opt)} == {id(t) for t in marked}


def test_prepare_capture_waits_for_every_block() -> None:
    """A block that has only seen zero gradients keeps its parameter unprepared, until it is initialised."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 4))
    opt = tk.Kron([weight], lr=0.01, block_size=4)  # two blocks of 4 × 4
    grad = torch.randn(8, 4)
    grad[4:] = 0
    weight.grad = grad
    opt.step()
    assert opt.prepare_capture() is False and READY_KNOWN not in opt.state[weight]
    weight.grad = torch.randn(8, 4)
    opt.step()
    assert opt.prepare_capture() is True and opt.state[weight][READY_KNOWN]


def _small() -> tuple[torch.nn.Sequential, tk.Kron]:
    """One 8 × 12 weight in six blocks of 4 × 4 (T = 4): a short compile."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8, bias=False))
    return model, tk.Kron(model.parameters(), lr=0.02, precondition_every=PERIOD, block_size=4)


def _saved_and_loaded(opt: tk.Kron) -> tk.Kron:
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = tk.Kron(opt.param_groups[0]["params"], lr=0.02, precondition_every=PERIOD, block_size=4)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    return loaded


def test_clock_hands_over_between_eager_and_compiled_steps() -> None:
    """Compiled steps (from a fresh state), a torch.save/load round trip, eager steps (the host clock
    catches up), compiled steps again (the device clock restarts from it), prepared compiled steps:
    the same bits as all-eager steps, and the host clock counts every step once an eager step ran."""
    torch._dynamo.reset()
    model, opt = _small()
    expected = _run(model, opt, [opt.step] * STEPS)
    model, opt = _small()
    recorder = _Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        got = _run(model, opt, [torch.compile(opt.step, backend=recorder, fullgraph=True)] * 3)
        opt = _saved_and_loaded(opt)
        (state,) = opt.state.values()
        assert int(state[DEVICE_CLOCK]) == 3 and state[DEVICE_CLOCK] is not state[CLOCK]
        got += _run(model, opt, [opt.step] * 2)
        assert int(state[CLOCK]) == 5 and DEVICE_CLOCK not in state
        compiled_step = torch.compile(opt.step, backend=recorder, fullgraph=True)
        got += _run(model, opt, [compiled_step] * (STEPS - 5), prepare_after=1)
    torch._dynamo.reset()
    assert recorder.frame_count >= 4  # the compiled steps were compiled, before and after loading
    assert int(state[DEVICE_CLOCK]) == STEPS and recorder.summaries[-1]["cond"] == []
    for step, (g_params, e_params) in enumerate(zip(got, expected, strict=True)):
        for g, e in zip(g_params, e_params, strict=True):
            assert torch.equal(g, e), f"step {step}: max |Δ| {(g - e).abs().max().item():.3g}"


def _other_forms() -> tuple[torch.nn.Sequential, tk.Kron]:
    """A sketched weight (rank 2) and a weight with a diagonal side (12 > max_precond_dim = 8)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8, bias=False), torch.nn.Linear(8, 8, bias=False))
    groups = [
        {"params": [model[0].weight], "max_precond_dim": 8},
        {"params": [model[1].weight], "rank": 2, "sketch": True, "divergence": "frobenius"},
    ]
    return model, tk.Kron(groups, lr=0.02, precondition_every=PERIOD, block_size=4)


def test_sketched_and_diagonal_forms_are_prepared_too() -> None:
    torch._dynamo.reset()
    model, opt = _other_forms()
    expected = _run(model, opt, [opt.step] * STEPS, PREPARE_AFTER)
    model, opt = _other_forms()
    recorder = _Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        compiled_step = torch.compile(opt.step, backend=recorder, fullgraph=True)
        got = _run(model, opt, [compiled_step] * STEPS, PREPARE_AFTER)
    torch._dynamo.reset()
    assert recorder.frame_count == 3
    assert len(recorder.summaries[1]["cond"]) == 2  # one initialisation per parameter's group
    captured = recorder.summaries[2]
    assert captured["cond"] == [] and captured["host"] == [] and captured["mutated"] == []
    for step, (g_params, e_params) in enumerate(zip(got, expected, strict=True)):
        for g, e in zip(g_params, e_params, strict=True):
            assert torch.equal(g, e), f"step {step}: max |Δ| {(g - e).abs().max().item():.3g}"


def test_loaded_clocks_go_where_they_are_read() -> None:
    """A loaded state keeps the host clock on the CPU and puts the device clock (and everything
    else but the step count) on the parameter's device."""
    saved = {
        "step": torch.tensor(3.0),
        CLOCK: torch.tensor(3),
        DEVICE_CLOCK: torch.tensor(5),
        READY_KNOWN: True,
        BLOCKS: [{READY: torch.ones(2, dtype=torch.bool)}],
    }
    loaded = loaded_to_device(saved, torch.device("meta"))
    assert loaded[CLOCK].device.type == "cpu" and int(loaded[CLOCK]) == 3
    assert loaded[DEVICE_CLOCK].device.type == "meta" and loaded[DEVICE_CLOCK].dtype == torch.int64
    assert loaded[BLOCKS][0][READY].device.type == "meta" and loaded[READY_KNOWN] is True


def test_prepare_capture_changes_no_eager_bits() -> None:
    """Eager steps after prepare_capture (stacked: the equal 4 × 4 blocks of every weight in one
    batch, which then skips its readiness masks) equal per-parameter steps that never prepared."""
    model = _model()
    opt = _optimizer(model)
    prepared = _run(model, opt, [opt.step] * STEPS, PREPARE_AFTER)
    assert all(s[READY_KNOWN] for s in opt.state.values() if BLOCKS in s)
    model = _model()
    opt = _optimizer(model, stack=False)
    plain = _run(model, opt, [opt.step] * STEPS)
    for step, (got, expected) in enumerate(zip(prepared, plain, strict=True)):
        for g, e in zip(got, expected, strict=True):
            assert torch.equal(g, e), f"step {step}: max |Δ| {(g - e).abs().max().item():.3g}"
