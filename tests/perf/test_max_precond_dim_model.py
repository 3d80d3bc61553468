"""The cost model of ``python -m perf.max_precond_dim`` against the optimizer itself."""

from __future__ import annotations

import pytest
import torch

import tritonkron as tk
from perf.max_precond_dim import block_cost, cost_table, layer_cost
from perf.shapes import GPT2_SMALL


@pytest.mark.parametrize(("shape", "limit"), [((40, 8), 16), ((8, 40), 16), ((40, 24), 16), ((24, 20), None)])
def test_state_bytes_match_the_optimizer(shape: tuple[int, int], limit: int | None) -> None:
    W = torch.nn.Parameter(torch.randn(*shape))
    opt = tk.Kron([W], lr=1e-3, block_size=12, max_precond_dim=limit)
    W.grad = torch.randn(*shape)
    opt.step()
    held = sum(t.numel() * t.element_size() for block in opt.state[W]["blocks"] for t in block.values())
    assert layer_cost(shape, limit, block_size=12)[2] == held


def test_one_sided_and_dense_costs() -> None:
    m, n = 50, 6
    assert block_cost(m, n, (True, False))[0] == 3 * m * n * n
    assert block_cost(n, m, (False, True))[0] == 3 * m * n * n
    assert block_cost(m, n, (True, True))[:2] == (0.0, 0.0)
    assert block_cost(m, n, (False, False))[0] == 3 * m * n * (m + n) + m * n * n


def test_gpt2_embedding_becomes_one_block() -> None:
    _, totals = cost_table(GPT2_SMALL)
    off, on = totals.iloc[0], totals.iloc[2]
    assert off["max_precond_dim"] == "None" and on["max_precond_dim"] == "8192"
    assert off["blocks"] - on["blocks"] == 49  # 50257 rows: 50 blocks → 1
    assert on["total GMAC/step"] < off["total GMAC/step"]
