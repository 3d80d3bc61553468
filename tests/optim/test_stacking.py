"""Equal-shape block groups of different parameters stepped as one batch (:mod:`tritonkron.step.stacking`).

The claim under test: ``stack=True`` gives the same bits as stepping each parameter on its own,
including parameters that skip a step (NaN gradient), miss a gradient, refresh on their own
schedule, or resume from a checkpoint.
"""

from __future__ import annotations

import io

import pytest
import torch

import tritonkron as tk
from tritonkron.state import BLOCKS, FACTOR_A

# Shapes chosen so that several parameters share block shapes (also across param groups) and some
# have more than one block (16 × 8 is two 8 × 8 blocks at block_size 12); 12 × 4 stacks too, and (5, 7) pairs are not stacked
# (dims not multiples of 4) but step beside the stacked buckets.
SHAPES = [(8, 8), (12, 4), (8, 8), (16, 8), (12, 4), (5, 7), (8, 8), (7,), (5, 7)]


def _params(seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def _opt(params: list[torch.Tensor], stack: bool, **kwargs: object) -> tk.Kron:
    options = {"lr": 1e-2, "block_size": 12, "precondition_every": 3, **kwargs}
    groups = [{"params": params[:4]}, {"params": params[4:], "lr": 3e-3}]
    return tk.Kron(groups, stack=stack, **options)  # type: ignore[arg-type]


def _set_grads(params: list[torch.Tensor], step: int, seed: int = 1) -> None:
    """Random gradients; at step 4 parameter 2 gets a NaN (skipped), at step 6 parameter 4 has none."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    for i, p in enumerate(params):
        p.grad = None if (step == 6 and i == 4) else torch.randn(p.shape, generator=g, dtype=p.dtype)
    if step == 4:
        params[2].grad[0, 0] = float("nan")


def _run(opt: tk.Kron, params: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        _set_grads(params, step)
        opt.step()


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x, y), f"parameter {i} differs by {float((x - y).abs().max()):.3g}"


@pytest.mark.parametrize(
    "options",
    [
        {"divergence": "logdet"},
        {"divergence": "von_neumann"},
        {"divergence": "frobenius", "betas": (0.8, 0.9)},
        {"divergence": "logdet", "rank": 6},  # rotated (k near d) where 2k > m + n, low-rank elsewhere
        {"divergence": "logdet", "rank": 2, "sketch": True},
    ],
    ids=["logdet", "von_neumann", "frobenius", "rank6", "sketch"],
)
def test_stacked_steps_equal_per_parameter_steps_bitwise(options: dict) -> None:
    alone, stacked = _params(0), _params(0)
    opt_alone, opt_stacked = _opt(alone, False, **options), _opt(stacked, True, **options)
    _run(opt_alone, alone, range(12))
    _run(opt_stacked, stacked, range(12))
    _assert_same(alone, stacked)
    for p, q in zip(alone, stacked, strict=True):  # statistics and counts too, not only the weights
        for key in ("step", "skipped_steps"):
            assert torch.equal(opt_alone.state[p][key], opt_stacked.state[q][key])
        blocks_alone, blocks_stacked = (
            opt_alone.state[p].get(BLOCKS, []),
            opt_stacked.state[q].get(BLOCKS, []),
        )
        for block_a, block_b in zip(blocks_alone, blocks_stacked, strict=True):
            for key, value in block_a.items():
                assert torch.equal(value, block_b[key]), key
    # the NaN at step 4 put parameter 2 one step behind: it refreshed on its own schedule
    assert float(opt_stacked.state[stacked[2]]["step"]) == float(opt_stacked.state[stacked[0]]["step"]) - 1


def _factor_storage(opt: tk.Kron, p: torch.Tensor) -> int:
    return opt.state[p][BLOCKS][0][FACTOR_A].untyped_storage().data_ptr()


def test_stacked_members_share_one_storage_per_bucket() -> None:
    stacked, alone = _params(0), _params(0)
    opt_stacked, opt_alone = _opt(stacked, True), _opt(alone, False)
    _run(opt_stacked, stacked, range(2))
    _run(opt_alone, alone, range(2))
    # the three 8 × 8 parameters (indices 0, 2, 6), in two param groups
    assert len({_factor_storage(opt_stacked, stacked[i]) for i in (0, 2, 6)}) == 1
    assert len({_factor_storage(opt_alone, alone[i]) for i in (0, 2, 6)}) == 3


def test_checkpoint_of_stacked_state_continues_bitwise() -> None:
    uninterrupted = _params(0)
    opt = _opt(uninterrupted, True)
    _run(opt, uninterrupted, range(5))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed = [p.detach().clone().requires_grad_() for p in uninterrupted]
    _run(opt, uninterrupted, range(5, 11))
    fresh = _opt(resumed, True)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer))  # weights_only=True by default
    _run(fresh, resumed, range(5, 11))
    _assert_same(uninterrupted, resumed)


def test_float64_parameters_stack_bitwise() -> None:
    alone, stacked = _params(3, torch.float64), _params(3, torch.float64)
    _run(_opt(alone, False), alone, range(7))
    _run(_opt(stacked, True), stacked, range(7))
    _assert_same(alone, stacked)


def test_stack_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="stack must be True or False"):
        tk.Kron([torch.zeros(3, 3, requires_grad=True)], stack=1)  # type: ignore[arg-type]


def test_blocks_above_the_parallel_grain_stack_bitwise() -> None:
    """192 × 192 blocks (36,864 entries) exceed the 32,768-element grain at which one reduction is split
    across threads; the statistics must still not depend on how many blocks share a call."""
    g = torch.Generator().manual_seed(4)
    shapes = [(192, 192), (192, 192), (192, 384)]  # the last is two more 192 × 192 blocks
    alone = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
    stacked = [p.detach().clone().requires_grad_() for p in alone]
    opts = [
        tk.Kron(ps, lr=1e-2, block_size=192, precondition_every=2, stack=s)
        for ps, s in ((alone, False), (stacked, True))
    ]
    for _ in range(4):
        grads = [torch.randn(s, generator=g) for s in shapes]
        for params, opt in zip((alone, stacked), opts, strict=True):
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            opt.step()
    _assert_same(alone, stacked)
