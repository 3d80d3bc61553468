"""A kernel with the bug class the ahead-of-time compile test must catch (never launched).

A variable (``acc``) is live across a runtime branch with a shape that depends on BLOCK_M in one
branch and BLOCK_N in the other: the interpreter runs it, a GPU compile rejects it unless the
two tiles are equal. ``python -m tests.ops._aot_bad_kernel`` compiles it for sm_90 with equal
and with unequal tiles and prints the two errors (null for success) as JSON.
"""

from __future__ import annotations

import json

import triton
import triton.language as tl


@triton.jit
def _branchy_kernel(x_ptr, n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Stores Σ of a BLOCK_M or BLOCK_N slice, chosen at run time."""
    pid = tl.program_id(0)
    if pid < n:  # noqa: SIM108 - the runtime branch is the point
        acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    tl.store(x_ptr + pid, tl.sum(acc, axis=0))


SIGNATURE = (("x_ptr", "*fp32"), ("n", "i32"), ("BLOCK_M", "constexpr"), ("BLOCK_N", "constexpr"))


def main() -> None:
    from tritonkron.ops.aot.build import compile_variant
    from tritonkron.ops.aot.record import Variant

    errors = []
    for bm, bn in ((64, 64), (64, 128)):
        variant = Variant(
            f"{__name__}:_branchy_kernel", SIGNATURE, (("BLOCK_M", bm), ("BLOCK_N", bn)), (), 4, 1
        )
        errors.append(compile_variant(variant, 90, "ttgir").error)
    print(json.dumps(errors))


if __name__ == "__main__":
    main()
