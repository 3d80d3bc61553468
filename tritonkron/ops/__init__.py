"""The heavy ops of the step, one package per op, and the only place that chooses a backend.

Each ``tritonkron.ops.<op>`` package holds the op's dispatching function(s) in its
``__init__``, its pure-PyTorch ``reference`` and its Triton launcher ``triton``:
:mod:`~tritonkron.ops.factor_update`, :mod:`~tritonkron.ops.precondition`,
:mod:`~tritonkron.ops.track_eigenvalues`, :mod:`~tritonkron.ops.rotation`,
:mod:`~tritonkron.ops.rotated_statistics`, :mod:`~tritonkron.ops.inverse_root` and
:mod:`~tritonkron.ops.sketch`. The backend rule is :mod:`tritonkron.ops.backend`; the precision
policy of the GEMMs (``precision="ieee" | "tf32" | "bf16"``) is :mod:`tritonkron.ops.precision`; kernel
failures are contained by :mod:`tritonkron.ops.kernel_guard`; shared Triton building blocks live
in :mod:`tritonkron.ops._triton`; :mod:`tritonkron.ops.aot` compiles every kernel variant ahead of
time. Importing this package registers the Triton launchers as ``tritonkron::<op>`` custom ops
(:mod:`tritonkron.ops.custom_ops`) when Triton is importable.

This package imports :mod:`tritonkron.options` and :mod:`tritonkron.math`, never the step.
"""

from tritonkron.ops._triton import HAS_TRITON

if HAS_TRITON:
    from tritonkron.ops import custom_ops  # noqa: F401  (registers the tritonkron:: custom ops)
