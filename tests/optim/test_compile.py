"""``torch.compile`` of ``Kron.step``: one graph for every step after the first, equal to eager.

The step has no host-side decisions (non-finite skip is a mask, the due blocks are slots computed
from the traced clock and block initialisation is a ``torch.cond`` under compile; the slots are
checked in ``test_compile_refresh.py``), so the compiled step is traced once for the
first call (which creates the state) and once for the steady state, and never again: not at a
basis refresh, not when the learning rate changes, not on a skipped (non-finite) step.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import tritonkron as tk

STEPS = 8
NAN_STEP = 5
# One graph for the first call (state creation), one for every later step.
EXPECTED_GRAPHS = 2


@pytest.fixture(autouse=True)
def _fresh_dynamo_cache():
    """Every test counts its own graphs (compiled code is cached per code object, across optimizers)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _train(step_fn_factory, options: dict, *, lr_tensor: bool = False) -> tuple[list[torch.Tensor], object]:
    """Run STEPS steps (refresh every 2, LR decayed each step, a NaN gradient at NAN_STEP)."""
    model = _model()
    lr = torch.tensor(0.02) if lr_tensor else 0.02
    opt = tk.Kron(model.parameters(), lr=lr, precondition_every=2, **options)
    step, counter = step_fn_factory(opt)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    for i in range(STEPS):
        opt.zero_grad()
        model(x).square().mean().backward()
        if i == NAN_STEP:
            model[0].weight.grad[0, 0] = float("nan")
        step()
        group = opt.param_groups[0]
        if lr_tensor:
            group["lr"].mul_(0.7)
        else:
            group["lr"] *= 0.7
    return [p.detach().clone() for p in model.parameters()], (opt, counter)


def _eager(opt: tk.Kron) -> tuple:
    return opt.step, None


def _compiled(backend: str):
    def factory(opt: tk.Kron) -> tuple:
        counter = CompileCounterWithBackend(backend)
        return torch.compile(opt.step, backend=counter, fullgraph=True), counter

    return factory


CONFIGS = [
    {"divergence": "logdet"},
    {"divergence": "von_neumann"},
    {"divergence": "frobenius"},
    {"divergence": "logdet", "rank": 2, "tail": "kth"},
    {"divergence": "frobenius", "rank": 2, "sketch": True},
    {"divergence": "logdet", "max_precond_dim": 4},  # 5 × 6: both sides diagonal; 3 × 5: one side
]


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_compiled_step_is_one_graph_and_matches_eager(options: dict) -> None:
    expected, _ = _train(_eager, options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dynamo's notes about profiler hooks
        got, (opt, counter) = _train(_compiled("aot_eager"), options)
    assert counter.frame_count == EXPECTED_GRAPHS
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert int(opt.state[opt.param_groups[0]["params"][0]]["skipped_steps"]) == 1


def test_inductor_compiled_step_with_tensor_lr_and_scheduler() -> None:
    """The default backend (inductor) with a tensor LR changed in place: still two graphs."""
    options = {"divergence": "logdet", "rank": 2}
    expected, _ = _train(_eager, options, lr_tensor=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        got, (_, counter) = _train(_compiled("inductor"), options, lr_tensor=True)
    assert counter.frame_count == EXPECTED_GRAPHS
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_lr_scheduler_does_not_recompile() -> None:
    """Compile ``opt.step`` before creating the scheduler (the scheduler wraps ``opt.step`` with a
    function ``torch.compile`` does not trace); the schedule's new LR values reuse the graph."""
    model = _model()
    opt = tk.Kron(model.parameters(), lr=0.02, precondition_every=2)
    counter = CompileCounterWithBackend("eager")
    step = torch.compile(opt.step, backend=counter, fullgraph=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    x = torch.randn(8, 6)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(6):
            opt.zero_grad()
            model(x).square().mean().backward()
            step()
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
    assert len(set(lrs)) == len(lrs)
    assert counter.frame_count == EXPECTED_GRAPHS


@pytest.mark.parametrize(
    "options", [{"divergence": "logdet"}, {"divergence": "frobenius", "rank": 2, "sketch": True}]
)
def test_compiled_step_on_the_triton_path(options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton kernels are custom ops: the compiled step traces through them without a break."""
    monkeypatch.setenv("TRITONKRON_BACKEND", "triton")
    expected, _ = _train(_eager, options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        got, (_, counter) = _train(_compiled("aot_eager"), options)
    assert counter.frame_count == EXPECTED_GRAPHS
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
