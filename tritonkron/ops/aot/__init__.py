"""Ahead-of-time compilation of every Triton kernel variant a launcher can choose, with no GPU.

The interpreter (``TRITON_INTERPRET=1``) runs kernels on CPU tensors but does not type-check them
and picks no GPU tiles, so a kernel that passes every interpreter test can still fail to compile
on a GPU. This package closes that gap:

- :mod:`~tritonkron.ops.aot.record`: runs the real launchers on CPU or meta tensors with every
  ``@triton.jit`` kernel replaced by a recorder, so each launch becomes a :class:`Variant`
  (signature, constexprs, divisibility hints, warps, stages) exactly as the JIT would specialise it;
- :mod:`~tritonkron.ops.aot.catalog`: which launcher calls to record: the heuristic tiles at
  realistic and odd layer shapes (GPU and interpreter heuristics), every accepted dtype and flag,
  every config of each kernel's legal space (what ``python -m autotune`` searches), and the TF32
  and bf16 precision policies (:mod:`tritonkron.ops.precision`) at a reduced set of shapes;
- :mod:`~tritonkron.ops.aot.build`: compiles variants with ``triton.compile(ASTSource(...),
  target=GPUTarget("cuda", arch, 32))`` down to cubin, in parallel, and checks each kernel's shared
  memory against the target's limit.

``python -m tritonkron.ops.aot --arch 80,90`` runs it all and prints a table; the test suite
runs it at both ends of the supported Triton range.
"""
