"""Compile recorded variants for a CUDA target with no GPU present, in parallel.

:func:`compile_variant` builds ``ASTSource(kernel, signature, constexprs, attrs)`` from a
:class:`~tritonkron.ops.aot.record.Variant` and lowers it for ``GPUTarget("cuda", arch, 32)``
through Triton's stages, stopping after ``until``:

- ``"ttgir"``: the front end (types, shapes, constexpr branches) and the GPU layout passes;
- ``"llir"``: also the lowering to LLVM, which fixes the kernel's shared-memory footprint;
- ``"cubin"``: also PTX and ``ptxas`` (bundled with the triton wheel), i.e. ``triton.compile``.

From ``"llir"`` on, the shared memory the kernel needs is checked against the target's per-block
limit (:data:`SHARED_LIMIT`); a launch over it fails on the GPU with ``OutOfResources``.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import importlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tritonkron.ops.aot.record import Variant

__all__ = ["SHARED_LIMIT", "STAGES", "Outcome", "compile_all", "compile_variant"]

STAGES = ("ttgir", "llir", "cubin")

SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
"""Opt-in dynamic shared memory per block, bytes, by compute capability (CUDA programming guide)."""


@dataclass(frozen=True)
class Outcome:
    """The result of compiling one variant for one architecture.

    Attributes:
        variant: what was compiled.
        arch: compute capability (80 = sm_80, 90 = sm_90).
        until: the last stage run.
        error: None on success, else the exception's type and message (first lines).
        shared: shared memory in bytes (None before ``"llir"``).
        seconds: compile time.
    """

    variant: Variant
    arch: int
    until: str
    error: str | None
    shared: int | None
    seconds: float

    @property
    def ok(self) -> bool:
        """Compiled, and within the target's shared-memory limit."""
        return self.error is None


def _source(variant: Variant) -> object:
    """The ``ASTSource`` of a variant (its kernel imported as a ``JITFunction``)."""
    from triton.compiler import ASTSource

    module_name, name = variant.kernel.split(":")
    fn = getattr(importlib.import_module(module_name), name)
    index = {n: i for i, n in enumerate(fn.arg_names)}
    attrs = {(index[n],): [["tt.divisibility", 16]] for n in variant.divisible}
    return ASTSource(fn, dict(variant.signature), dict(variant.constexprs), attrs)


def _lower(variant: Variant, arch: int, until: str) -> int | None:
    """Run Triton's stages up to ``until``; returns the shared memory once known."""
    import triton
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", arch, 32)
    src = _source(variant)
    launch = {"num_warps": variant.num_warps, "num_stages": variant.num_stages}
    if until == "cubin":
        return int(triton.compile(src, target=target, options=launch).metadata.shared)
    backend = make_backend(target)
    options = backend.parse_options(launch)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    codegen_fns = backend.get_codegen_implementation(options)
    module = src.make_ir(target, options, codegen_fns, backend.get_module_map(), context)
    stages: dict = {}
    backend.add_stages(stages, options, src.language)
    metadata: dict = {}
    for name, stage in stages.items():
        module = stage(module, metadata)
        if name == until:
            break
    return metadata.get("shared")


def compile_variant(variant: Variant, arch: int, until: str = "cubin") -> Outcome:
    """Compile one variant for ``sm_<arch>`` up to ``until`` (module docstring); never raises."""
    if until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}; got {until!r}")
    start = time.perf_counter()
    error, shared = None, None
    try:
        shared = _lower(variant, arch, until)
    except Exception as exc:  # every compiler failure is a finding, reported not raised
        lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
        error = "\n".join(lines[-12:])
    limit = SHARED_LIMIT.get(arch)
    if error is None and shared is not None and limit is not None and shared > limit:
        error = f"OutOfResources: needs {shared} bytes of shared memory, sm_{arch} allows {limit}"
    return Outcome(variant, arch, until, error, shared, time.perf_counter() - start)


def _child(job: tuple[Variant, int, str], conn: object, err_path: str) -> None:
    """Forked child: compile, send the outcome; the compiler's stderr goes to ``err_path``."""
    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    conn.send(compile_variant(*job))  # type: ignore[attr-defined]
    conn.close()  # type: ignore[attr-defined]


def _isolated(job: tuple[Variant, int, str]) -> Outcome:
    """Compile one job in a forked child, so that a compiler abort (a failed C++ assertion, which
    ends the process) becomes a failed :class:`Outcome` carrying the tail of its stderr."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile(prefix="tritonkron-aot-", suffix=".err") as err:
        start = time.perf_counter()
        child = context.Process(target=_child, args=(job, send, err.name))
        child.start()
        send.close()
        try:
            outcome = receive.recv()
        except EOFError:
            outcome = None
        child.join()
        if outcome is not None:
            return outcome
        with open(err.name, errors="replace") as fh:
            tail = [line for line in fh.read().splitlines() if line.strip()]
        crash = [line for line in tail if "Assertion" in line or "error" in line.lower()] or tail
        message = f"compiler crashed (exit code {child.exitcode}): " + "\n".join(crash[:3])[:2000]
        return Outcome(job[0], job[1], job[2], message, None, time.perf_counter() - start)


def compile_all(
    variants: Sequence[Variant], archs: Sequence[int], until: str = "cubin", jobs: int | None = None
) -> list[Outcome]:
    """Compile every variant for every architecture, ``jobs`` at a time (default: the CPU cores).

    The work runs in a pool of forked processes, which inherit the parent's imports and
    environment (``TRITON_INTERPRET`` must be unset: the kernels must be JIT functions). When a
    compiler abort breaks the pool, every job it left unfinished is rerun alone
    (:func:`_isolated`), so the abort is pinned on its variant and the rest still compile.
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    work = [(v, arch, until) for v in variants for arch in archs]
    results: dict[int, Outcome] = {}
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(jobs or os.cpu_count() or 1, mp_context=context) as pool:
        futures = {i: pool.submit(_compile_job, job) for i, job in enumerate(work)}
        for i, future in futures.items():
            with contextlib.suppress(concurrent.futures.process.BrokenProcessPool):
                results[i] = future.result()
    for i, job in enumerate(work):
        if i not in results:
            results[i] = _isolated(job)
    return [results[i] for i in range(len(work))]


def _compile_job(job: tuple[Variant, int, str]) -> Outcome:
    return compile_variant(*job)
