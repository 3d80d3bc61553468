"""``torch.compile(opt.step)`` under distribution: the collectives are graph breaks, results unchanged.

``fullgraph=True`` is not possible here (the collectives are issued from Python between the owned
computations); the compiled step with graph breaks equals the eager one bit for bit with the
``aot_eager`` backend (inductor's fusions round differently, as in one process).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from tests.distributed._harness import STEPS, gradients, launch, make_model, make_opt, reference


def _compiled(rank: int, world: int) -> dict:
    model = make_model()
    opt = make_opt(model.parameters(), {"divergence": "logdet"})
    step = torch.compile(opt.step, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo explains each graph break at the collectives
        for grads in gradients([p.shape for p in model.parameters()], STEPS):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            step()
    owned = sorted(i for i, p in enumerate(model.parameters()) if p.dim() == 2 and p in opt.state)
    return {"params": [p.detach().clone() for p in model.parameters()], "owned": owned}


def test_compiled_step_with_graph_breaks_equals_single_process(tmp_path: Path) -> None:
    per_rank = launch(_compiled, 2, tmp_path)
    expected = reference({"divergence": "logdet"})
    for result in per_rank:
        for got, want in zip(result["params"], expected, strict=True):
            assert torch.equal(got, want)
    matrices = [i for i, p in enumerate(make_model().parameters()) if p.dim() == 2]
    owned = [set(result["owned"]) for result in per_rank]
    assert not owned[0] & owned[1] and sorted(owned[0] | owned[1]) == matrices  # the work is still split
