"""The batched GEMM (``tritonkron.ops._triton.bmm``) in every option combination, against float64 torch.

Reference: ``epilogue(A @ B̃)`` computed in float64 from the very same (already rounded) inputs,
with B̃ = ½(B + Bᵀ) when ``sym_b``. Error metric: relative Frobenius error ‖C − ref‖_F / ‖ref‖_F.

| operands → C | accumulator, dot | tolerance | why |
|---|---|---|---|
| fp32 → fp32 | fp32, ieee | 1e-5 | fp32 sums over K ≤ 53 (measured ≤ 3e-7) |
| fp16 → fp32 | fp32, tensor-core (ieee with ``sym_b``) | 1e-5 | fp16 products are exact in fp32: the same fp32 sums |
| fp16 → fp16 | fp32, tensor-core | 2e-3 | the final rounding to fp16 (unit roundoff 2⁻¹¹) |
| fp64 → fp64 | fp64, ieee | 1e-12 | fp64 sums (measured ≤ 3e-16) |

bfloat16 is left to the GPU runs of the op tests (the interpreter has no bf16 arithmetic).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tritonkron.ops._triton.bmm import Epilogue, bmm_config, bmm_configs, keep_bmm_config, launch_bmm

F64 = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
M, N, K = 37, 53, 29  # odd sizes: every dimension has a masked edge tile
EPS = 0.25  # exact in fp32, the dtype the kernel receives ε in
# 32 × 32 output tiles in groups of 2 rows, BLOCK_K = 16: several tiles, a grouped order, a K loop.
CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}
CASES = {  # id: (operand dtype, output dtype, tolerance)
    "fp32": (torch.float32, torch.float32, 1e-5),
    "fp16-in": (torch.float16, torch.float32, 1e-5),
    "fp16-out": (torch.float16, torch.float16, 2e-3),
    "fp64": (F64, F64, 1e-12),
}


def _operands(B: int, n: int, dtype: torch.dtype, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """A ``[B, M, K]`` (a transposed view when B > 1) and B ``[B, K, n]``."""
    a = torch.randn(B, M, K, generator=g, dtype=F64)
    if B > 1:
        a = a.transpose(1, 2).contiguous().transpose(1, 2)
    b = torch.randn(B, K, n, generator=g, dtype=F64)
    return a.to(DEVICE, dtype), b.to(DEVICE, dtype)


def _epilogue_operands(B: int, n: int, g: torch.Generator) -> dict[str, Tensor]:
    return {
        "row": (torch.rand(B, M, generator=g) + 0.5).to(DEVICE),
        "col": (torch.rand(B, n, generator=g) + 0.5).to(DEVICE),
        "y": torch.randn(B, M, n, generator=g).to(DEVICE),
        "shift": (torch.rand(B, generator=g) + 0.1).to(DEVICE),
    }


def _reference(a: Tensor, b: Tensor, sym_b: bool, epilogue: Epilogue, ops: dict[str, Tensor]) -> Tensor:
    """epilogue(A @ B̃) in float64 (module docstring of ``kernels.bmm`` for the epilogues)."""
    a, b = a.to(F64), b.to(F64)
    if sym_b:
        b = 0.5 * (b + b.mT)
    acc = a @ b
    row, col, y, shift = (ops[key].to(F64) for key in ("row", "col", "y", "shift"))
    if epilogue is Epilogue.SIGMA:
        sigma = row[:, :, None] * col[:, None, :]
        return acc * (sigma / (1 + EPS * sigma))
    if epilogue is Epilogue.ROW_SHIFT:
        return acc * (row - shift[:, None])[:, :, None]
    if epilogue is Epilogue.AXPY:
        return acc + shift[:, None, None] * y
    return acc


def _assert_close(actual: Tensor, expected: Tensor, tol: float) -> None:
    nan = int(actual.isnan().sum())
    assert nan == 0, f"{nan} NaN entries: some element of C was never written"
    diff = actual.to(F64) - expected
    err = (diff.norm() / expected.norm()).item()
    assert err <= tol, f"relative error {err:.3e} > {tol:.0e} (max abs {diff.abs().max().item():.3e})"


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("sym_b", [False, True], ids=["B", "symB"])
@pytest.mark.parametrize("epilogue", list(Epilogue), ids=[e.name.lower() for e in Epilogue])
@pytest.mark.parametrize("case", list(CASES))
def test_bmm_matches_float64_reference(case: str, epilogue: Epilogue, sym_b: bool, B: int) -> None:
    dtype, out_dtype, tol = CASES[case]
    g = torch.Generator().manual_seed(100 * int(epilogue) + 10 * B + sym_b)
    n = K if sym_b else N  # B̃ = ½(B + Bᵀ) needs a square B
    a, b = _operands(B, n, dtype, g)
    ops = _epilogue_operands(B, n, g)
    c = torch.full((B, M, n), float("nan"), dtype=out_dtype, device=DEVICE)
    kwargs = {
        Epilogue.NONE: {},
        Epilogue.SIGMA: {"row": ops["row"], "col": ops["col"], "eps": EPS},
        Epilogue.ROW_SHIFT: {"row": ops["row"], "shift": ops["shift"]},
        Epilogue.AXPY: {"y": ops["y"], "shift": ops["shift"]},
    }[epilogue]
    launch_bmm(a, b, c, CONFIG, sym_b=sym_b, epilogue=epilogue, **kwargs)
    _assert_close(c, _reference(a, b, sym_b, epilogue, ops), tol)


def test_bmm_heuristic_config_and_empty_output() -> None:
    g = torch.Generator().manual_seed(5)
    a, b = _operands(2, N, torch.float32, g)
    c = torch.full((2, M, N), float("nan"), device=DEVICE)
    launch_bmm(a, b, c, bmm_config(None, M, N, K))
    _assert_close(c, _reference(a, b, False, Epilogue.NONE, _epilogue_operands(2, N, g)), 1e-5)
    empty = torch.empty(2, 0, N, device=DEVICE)
    launch_bmm(a[:, :0], b, empty, bmm_config(None, 0, N, K))  # nothing to launch, nothing raised


def test_bmm_config_space_is_legal_and_checked() -> None:
    cfgs = bmm_configs()
    assert cfgs and all(
        keep_bmm_config({**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}) for c in cfgs
    )
    assert bmm_config({"BLOCK_M": 16}, M, N, K)["BLOCK_M"] == 16
    with pytest.raises(ValueError, match="config has unknown keys"):
        bmm_config({"BLOCK": 16}, M, N, K)
    with pytest.raises(ValueError, match="config is not a legal tile config"):
        bmm_config({"BLOCK_K": 24}, M, N, K)
