"""The precision policy of the step's GEMMs (``tritonkron.ops.precision``, docs/maths.md §11).

Every op that runs the step's GEMMs is checked per policy ("ieee", "tf32", "bf16"): its
reference against float64, its Triton launcher against its reference (CPU: the interpreter), its
dispatcher on both backends, and that every GEMM launch of the launcher receives the policy.

**Tolerances, from the unit roundoff.** The error metric is the relative Frobenius error
‖out − ref‖_F / ‖ref‖_F with ref computed in float64 from the same float32 inputs. A product whose
operands are rounded to a format of unit roundoff u and summed in float32 (u₃₂ = 2⁻²⁴) satisfies,
entry by entry, |Ĉ − C| ≤ (2u + u² + γ_k)·(|A||B|) with γ_k ≈ k·u₃₂ (Higham, Accuracy and Stability,
§3.5); errors of a chain of g products add up. So the tolerance of g chained products of inner
size ≤ k is

    rtol = g · (2u + k·u₃₂),    u = 0 (ieee), 2⁻¹¹ (tf32, round to nearest), 2⁻⁸ (bf16),

e.g. about 1.6e-2 (bf16), 2e-3 (tf32) and 5e-6 (ieee) for g = 2, k = 40. It is the entrywise
bound read normwise (‖|A||B|‖_F ≈ ‖AB‖_F, up to the cancellation of random signs, which lowers
the error about as much as the ratio raises the bound): the measured errors of the tf32 and bf16
references sit 4–40× below it, those of ieee 25–170× (γ_k is a worst case). A GPU's TF32 conversion may truncate instead of rounding (u = 2⁻¹⁰): twice the tf32 figure.

**The Triton path under the interpreter.** The interpreter ignores ``input_precision`` and has
no bfloat16 dot, so there the launchers pass the ``*_ROUNDED`` codes: the kernel rounds the
operands in float32 exactly as the reference does (round to nearest even) and multiplies in
IEEE arithmetic. The Triton and reference results then round the same operands and differ by
much less than either's error; they are compared at the same ``rtol``. The GPU branches (TF32
``tl.dot`` and bf16 operands) are compiled ahead of time (``test_aot_compile.py``, precision tier).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import tritonkron.ops.factor_update.triton as factor_update_triton_module
import tritonkron.ops.precondition.triton as precondition_triton_module
import tritonkron.ops.rotated_statistics.triton as rotated_statistics_triton_module
import tritonkron.ops.rotation.triton as rotation_triton_module
import tritonkron.ops.sketch.triton as sketch_triton_module
from tritonkron.ops.factor_update import factor_update, update_factors
from tritonkron.ops.factor_update.reference import factor_update_ref
from tritonkron.ops.factor_update.triton import factor_update_triton
from tritonkron.ops.precondition import precondition, spike_and_flat
from tritonkron.ops.precondition.reference import eigenbasis_precondition_ref, spike_and_flat_apply
from tritonkron.ops.precondition.triton import eigenbasis_precondition_triton, spike_and_flat_triton
from tritonkron.ops.rotated_statistics import rotated_statistics
from tritonkron.ops.rotated_statistics.reference import rotated_statistics_ref
from tritonkron.ops.rotated_statistics.triton import rotated_statistics_triton
from tritonkron.ops.rotation import rotate, rotate_back
from tritonkron.ops.rotation.reference import rotate_back_ref, rotate_ref
from tritonkron.ops.rotation.triton import rotate_triton
from tritonkron.ops.sketch import sketch_precondition, sketch_track, sketch_update
from tritonkron.ops.sketch.reference import (
    reconstruct,
    sketch_precondition_ref,
    sketch_track_ref,
    sketch_update_ref,
)
from tritonkron.ops.sketch.triton import sketch_precondition_triton, sketch_track_triton, sketch_update_triton

F64 = torch.float64
POLICIES = ("ieee", "tf32", "bf16")
UNIT = {"ieee": 0.0, "tf32": 2.0**-11, "bf16": 2.0**-8}
U32 = 2.0**-24
B, M, N, K, ELL = 2, 40, 24, 6, 8  # blocks, factor sizes, spike rank, sketch rank


def rtol(precision: str, gemms: int, k: int = max(M, N)) -> float:
    """g·(2u + k·u₃₂): the bound of g chained products of inner size ≤ k (module docstring)."""
    return gemms * (2 * UNIT[precision] + k * U32)


def _rel(out: Tensor, ref: Tensor) -> float:
    return float((out.to(F64) - ref.to(F64)).norm() / ref.to(F64).norm())


def _orthogonal(d: int, g: torch.Generator, cols: int | None = None) -> Tensor:
    Q = torch.linalg.qr(torch.randn(B, d, d, generator=g, dtype=F64)).Q
    return Q[..., : cols or d].float()


def _spd(d: int, g: torch.Generator) -> Tensor:
    R = torch.randn(B, d, d, generator=g)
    return R @ R.mT / d + 0.1 * torch.eye(d)


def _inputs(seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "G": torch.randn(B, M, N, generator=g),
        "A": _spd(M, g),
        "Bf": _spd(N, g),
        "Q_A": _orthogonal(M, g),
        "Q_B": _orthogonal(N, g),
        "w_A": torch.rand(B, M, generator=g) + 0.5,
        "w_B": torch.rand(B, N, generator=g) + 0.5,
        "s_A": torch.rand(B, M, generator=g) + 0.2,
        "s_B": torch.rand(B, N, generator=g) + 0.2,
        "s": torch.full((B,), 0.05),
        "U_A": _orthogonal(M, g, K),
        "U_B": _orthogonal(N, g, K),
        "U": _orthogonal(M, g, ELL),
        "V": _orthogonal(N, g, ELL),
        "lam": torch.linspace(4.0, 1.0, ELL).expand(B, ELL).contiguous(),
        "c": torch.full((B,), 0.7),
    }


def _sketch_args(x: dict[str, Tensor]) -> tuple:
    return (x["U"], x["lam"], x["c"], x["G"], x["V"], x["w_B"][:, :ELL], x["c"], x["s"], 0.9, "left")


def _sketch_dense(out: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    return reconstruct(*(t.to(F64) for t in out))


def _track_args(x: dict[str, Tensor]) -> tuple:
    H = torch.diag_embed(x["lam"]) + 0.1 * x["U"][:, :ELL].mT @ x["U"][:, :ELL]  # not diagonal
    return (x["U"], H, x["c"], x["G"], x["V"], x["w_B"][:, :ELL], x["c"], x["s"], 0.9, "left")


def _track_dense(x: dict[str, Tensor], out: tuple[Tensor, Tensor]) -> Tensor:
    return reconstruct(x["U"].to(F64), *(t.to(F64) for t in out))


# (op, chained products, reference(x, p), triton(x, p), dispatcher(x, p, backend)); each returns a
# tuple of tensors compared one by one.
Op = tuple[str, int, Callable, Callable, Callable]
OPS: list[Op] = [
    ("rotate", 2,
     lambda x, p: (rotate_ref(x["G"], x["Q_A"], x["Q_B"], p),),
     lambda x, p: (rotate_triton(x["G"], x["Q_A"], x["Q_B"], precision=p),),
     lambda x, p, b: (rotate(x["G"], x["Q_A"], x["Q_B"], backend=b, precision=p),)),
    ("rotate_back", 2,
     lambda x, p: (rotate_back_ref(x["G"], x["Q_A"], x["Q_B"], p),),
     lambda x, p: (rotate_triton(x["G"], x["Q_A"], x["Q_B"], back=True, precision=p),),
     lambda x, p, b: (rotate_back(x["G"], x["Q_A"], x["Q_B"], backend=b, precision=p),)),
    ("factor_update eigen", 2,
     lambda x, p: (factor_update_ref(x["A"], x["G"], 0.9, 0.3, "left", (x["Q_B"], x["w_B"]), p),),
     lambda x, p: (factor_update_triton(x["A"], x["G"], 0.9, 0.3, "left", (x["Q_B"], x["w_B"]), precision=p),),
     lambda x, p, b: (factor_update(x["A"], x["G"], 0.9, 0.3, "left", (x["Q_B"], x["w_B"]), backend=b,
                                    precision=p),)),
    ("factor_update dense", 2,
     lambda x, p: (factor_update_ref(x["Bf"], x["G"], 0.9, 0.3, "right", x["A"], p),),
     lambda x, p: (factor_update_triton(x["Bf"], x["G"], 0.9, 0.3, "right", x["A"], precision=p),),
     lambda x, p, b: (factor_update(x["Bf"], x["G"], 0.9, 0.3, "right", x["A"], backend=b, precision=p),)),
    ("factor_update identity", 1,
     lambda x, p: (factor_update_ref(x["A"], x["G"], 0.9, 0.3, "left", None, p),),
     lambda x, p: (factor_update_triton(x["A"], x["G"], 0.9, 0.3, "left", precision=p),),
     lambda x, p, b: (factor_update(x["A"], x["G"], 0.9, 0.3, "left", backend=b, precision=p),)),
    ("rotated_statistics", 2,
     lambda x, p: rotated_statistics_ref(x["A"], x["Bf"], x["G"], x["Q_A"], x["Q_B"], x["w_A"], x["s"],
                                         x["w_B"], x["s"], 0.9, p),
     lambda x, p: rotated_statistics_triton(x["A"], x["Bf"], x["G"], x["Q_A"], x["Q_B"], x["w_A"], x["s"],
                                            x["w_B"], x["s"], 0.9, precision=p),
     lambda x, p, b: rotated_statistics(x["A"], x["Bf"], x["G"], x["Q_A"], x["Q_B"], x["w_A"], x["s"],
                                        x["w_B"], x["s"], 0.9, backend=b, precision=p)),
    ("precondition", 4,
     lambda x, p: (eigenbasis_precondition_ref(x["G"], x["Q_A"], x["Q_B"], x["s_A"], x["s_B"], 1e-3, p),),
     lambda x, p: (eigenbasis_precondition_triton(x["G"], x["Q_A"], x["Q_B"], x["s_A"], x["s_B"], 1e-3,
                                                  precision=p),),
     lambda x, p, b: (precondition(x["G"], x["Q_A"], x["Q_B"], x["s_A"], x["s_B"], 1e-3, backend=b,
                                   precision=p),)),
    ("spike_and_flat", 2,
     lambda x, p: (spike_and_flat_apply(x["U_A"], x["s_A"][:, :K], x["c"][:, None], x["G"], p),),
     lambda x, p: (spike_and_flat_triton(x["U_A"], x["s_A"][:, :K], x["c"][:, None], x["G"], precision=p),),
     lambda x, p, b: (spike_and_flat(x["U_A"], x["s_A"][:, :K], x["c"][:, None], x["G"], backend=b,
                                     precision=p),)),
    ("sketch_precondition", 4,
     lambda x, p: (sketch_precondition_ref(x["G"], x["U_A"], x["s_A"][:, :K], x["c"], x["U_B"],
                                           x["s_B"][:, :K], x["c"], 1e-3, p),),
     lambda x, p: (sketch_precondition_triton(x["G"], x["U_A"], x["s_A"][:, :K], x["c"], x["U_B"],
                                              x["s_B"][:, :K], x["c"], 1e-3, precision=p),),
     lambda x, p, b: (sketch_precondition(x["G"], x["U_A"], x["s_A"][:, :K], x["c"], x["U_B"],
                                          x["s_B"][:, :K], x["c"], 1e-3, backend=b, precision=p),)),
    ("sketch_update", 4,
     lambda x, p: (_sketch_dense(sketch_update_ref(*_sketch_args(x), p)),),
     lambda x, p: (_sketch_dense(sketch_update_triton(*_sketch_args(x), precision=p)),),
     lambda x, p, b: (_sketch_dense(sketch_update(*_sketch_args(x), backend=b, precision=p)),)),
    ("sketch_track", 3,
     lambda x, p: (_track_dense(x, sketch_track_ref(*_track_args(x), p)),),
     lambda x, p: (_track_dense(x, sketch_track_triton(*_track_args(x), precision=p)),),
     lambda x, p, b: (_track_dense(x, sketch_track(*_track_args(x), backend=b, precision=p)),)),
]  # fmt: skip
IDS = [op[0] for op in OPS]


@pytest.mark.parametrize("precision", POLICIES)
@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_reference_against_float64(op: Op, precision: str) -> None:
    name, gemms, reference, _, _ = op
    x = _inputs()
    exact = reference({k: v.to(F64) for k, v in x.items()}, precision)  # float64 ignores the policy
    got = reference(x, precision)
    for out, ref in zip(got, exact, strict=True):
        assert out.dtype in (torch.float32, F64)
        assert _rel(out, ref) <= rtol(precision, gemms), (name, precision, _rel(out, ref))


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_policies_order_by_accuracy(op: Op) -> None:
    """bf16 is less accurate than tf32, which is less accurate than ieee (the policy is applied)."""
    _, _, reference, _, _ = op
    x = _inputs(1)
    exact = reference({k: v.to(F64) for k, v in x.items()}, "ieee")
    errors = [max(_rel(o, e) for o, e in zip(reference(x, p), exact, strict=True)) for p in POLICIES]
    assert errors[0] < errors[1] < errors[2], errors


@pytest.mark.parametrize("precision", POLICIES)
@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_triton_against_reference(op: Op, precision: str) -> None:
    name, gemms, reference, launcher, _ = op
    x = _inputs(2)
    for out, ref in zip(launcher(x, precision), reference(x, precision), strict=True):
        assert _rel(out, ref) <= rtol(precision, gemms), (name, precision, _rel(out, ref))


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_dispatchers_pass_the_policy(op: Op) -> None:
    """The dispatcher's reference path is the reference's result, its Triton path (through the
    ``tritonkron::`` custom op) the launcher's, bitwise, for a non-default policy."""
    _, _, reference, launcher, dispatch = op
    x = _inputs(3)
    pairs = ((dispatch(x, "bf16", "reference"), reference(x, "bf16")),
             (dispatch(x, "bf16", "triton"), launcher(x, "bf16")))  # fmt: skip
    for got, want in pairs:
        for out, ref in zip(got, want, strict=True):
            torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_update_factors_passes_the_policy() -> None:
    from tritonkron.math.divergences import coupling
    from tritonkron.options import Divergence

    x = _inputs(4)
    rule = coupling(Divergence.LOGDET, torch.rand(B, M) + 0.5, torch.rand(B, N) + 0.5)
    got = update_factors(x["A"], x["Bf"], x["G"], x["Q_A"], x["Q_B"], rule, 0.9, precision="tf32")
    scale = (1 - 0.9) * rule.left_scale
    want_A = factor_update_ref(x["A"], x["G"], 0.9, scale, "left", (x["Q_B"], rule.left_weight), "tf32")
    assert torch.equal(got[0], want_A)


_LAUNCH_MODULES = (factor_update_triton_module, precondition_triton_module, rotated_statistics_triton_module,
                   rotation_triton_module, sketch_triton_module)  # fmt: skip


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_every_gemm_launch_gets_the_policy(op: Op, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``launch_bmm`` / ``launch_sym_gemm`` call of the launcher carries the policy."""
    seen: list[str] = []
    for module in _LAUNCH_MODULES:
        for name in ("launch_bmm", "launch_sym_gemm"):
            real = getattr(module, name, None)
            if real is not None:

                def spy(*args, _real=real, **kwargs):  # noqa: ANN002, ANN003, ANN202
                    seen.append(kwargs.get("precision", "ieee"))
                    return _real(*args, **kwargs)

                monkeypatch.setattr(module, name, spy)
    op[3](_inputs(5), "tf32")
    assert seen and set(seen) == {"tf32"}, seen
