"""Helpers of the precision policy (``tritonkron.ops.precision``): rounding, the policy product,
the scoped TF32 setting, the kernels' ``PRECISION`` codes and the error for an unknown policy."""

from __future__ import annotations

import pytest
import torch

from tritonkron.ops import precision as policy
from tritonkron.ops.rotation import rotate
from tritonkron.ops.rotation.triton import rotate_triton

F64 = torch.float64


def _rounded(x: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """x rounded to ``mantissa_bits`` explicit bits, to nearest even, through float64 frexp."""
    frac, exp = torch.frexp(x.to(F64))
    scale = 2.0 ** (mantissa_bits + 1)
    return torch.ldexp(torch.round(frac * scale) / scale, exp).float()  # torch.round: half to even


@pytest.mark.parametrize(("fn", "bits"), [(policy.round_tf32, 10), (policy.round_bf16, 7)])
def test_rounding_is_to_nearest_even(fn, bits: int) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(4096, generator=g) * 10.0 ** torch.randint(-30, 30, (4096,), generator=g),
                   torch.tensor([0.0, -0.0, 1.0, 3.0e38, -3.0e38])])  # fmt: skip
    torch.testing.assert_close(fn(x), _rounded(x, bits), rtol=0, atol=0)
    ulp = 2.0**-bits
    ties = torch.tensor([1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + ulp / 2)])  # halfway: to the even neighbour
    assert fn(ties).tolist() == [1.0, 1 + 2 * ulp, -1.0]


def test_rounding_passes_inf_and_nan() -> None:
    x = torch.tensor([float("inf"), float("-inf"), float("nan")])
    for fn in (policy.round_tf32, policy.round_bf16):
        out = fn(x)
        assert out[0] == float("inf") and out[1] == float("-inf") and out[2].isnan()


def test_products_of_rounded_operands_are_exact_in_float32() -> None:
    """Why emulating the tensor cores needs only operand rounding: a product of two TF32 (11
    significant bits) or bf16 (8) numbers has at most 22 significant bits and is exact in float32."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(10_000, generator=g), torch.randn(10_000, generator=g)
    for fn in (policy.round_tf32, policy.round_bf16):
        x, y = fn(a), fn(b)
        assert torch.equal((x * y).to(F64), x.to(F64) * y.to(F64))


def test_mm_ieee_is_the_plain_product_and_float64_ignores_the_policy() -> None:
    g = torch.Generator().manual_seed(2)
    a, b, c = torch.randn(3, 7, 5, generator=g), torch.randn(3, 5, 4, generator=g), torch.randn(3, 7, 4)
    assert torch.equal(policy.mm(a, b), a @ b)
    assert torch.equal(policy.mm(a, b, add=c), torch.baddbmm(c, a, b))
    for p in ("tf32", "bf16"):
        assert torch.equal(policy.mm(a.to(F64), b.to(F64), p), a.to(F64) @ b.to(F64))
        assert torch.equal(
            policy.mm(a, b, p), policy.round_operands(p, a)[0] @ policy.round_operands(p, b)[0]
        )
        assert policy.effective(p, a, b.to(F64)) == "ieee"


def test_cuda_tf32_scope_restores_the_setting() -> None:
    """The scope sets TF32 for cuBLAS and restores the previous value, so the legacy getters
    (``allow_tf32``, ``get_float32_matmul_precision``) still work afterwards (no mixed API state)."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with policy.cuda_tf32():
        assert matmul.fp32_precision == "tf32"
    assert matmul.fp32_precision == before
    assert matmul.allow_tf32 is False and torch.get_float32_matmul_precision() == "highest"


def test_kernel_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert policy.kernel_precision("tf32", acc_fp64=True) == policy.KERNEL_IEEE
    monkeypatch.setattr(policy, "triton_interpret", lambda: False)
    assert [policy.kernel_precision(p) for p in ("ieee", "tf32", "bf16")] == [
        policy.KERNEL_IEEE, policy.KERNEL_TF32, policy.KERNEL_BF16]  # fmt: skip
    monkeypatch.setattr(policy, "triton_interpret", lambda: True)
    assert [policy.kernel_precision(p) for p in ("tf32", "bf16")] == [
        policy.KERNEL_TF32_ROUNDED, policy.KERNEL_BF16_ROUNDED]  # fmt: skip


def test_unknown_policy_names_the_option_and_the_allowed_values() -> None:
    X, Q = torch.zeros(1, 3, 3), torch.eye(3).expand(1, 3, 3)
    message = "precision must be one of 'ieee', 'tf32', 'bf16'; got 'fp16'"
    for call in (lambda: rotate(X, Q, Q, precision="fp16"), lambda: rotate(X, Q, Q, backend="triton", precision="fp16"),
                 lambda: rotate_triton(X, Q, Q, precision="fp16"), lambda: policy.mm(X, Q, "fp16")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            call()
