"""Every kernel variant a launcher can choose compiles for sm_80 and sm_90, with no GPU.

The interpreter does not type-check kernels, so these tests compile ahead of time
(``python -m tritonkron.ops.aot``) at both ends of the supported Triton range: the installed
(newest) release, and the oldest supported one, installed by ``scripts/setup.sh`` into
``.cache/triton-<version>`` (see ``OLDEST_TRITON``). Each run is one subprocess (the kernels must be
JIT functions, so ``TRITON_INTERPRET`` is unset there) whose JSON outcome the tests read.

Runs (``RUNS``): the launch tier (heuristic tiles at realistic and odd shapes, every dtype and
flag; ``tritonkron.ops.aot.catalog``) for sm_90 and sm_80 at both releases, to cubin for sm_90
at the oldest (what the GPU machines run) and at least through the GPU layout passes elsewhere;
the legal-space tier (every autotuner config) for sm_90 at the oldest release; the precision tier
(the TF32 and bf16 policies of ``tritonkron.ops.precision``, which lower to tensor-core MMAs
instead of the IEEE path's FMAs) at a reduced set of shapes, at both releases for sm_90 (to
cubin at the oldest) and through LLVM for sm_80 (shared memory of the Ampere MMA path): about
40 s of compilation on 2 cores, rather than a launch tier's worth per run
(perf/results/precision_2026-12-07.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tritonkron.ops.aot.build import SHARED_LIMIT

ROOT = Path(__file__).resolve().parents[2]
OLDEST_TRITON = "3.6.0"
OLDEST_PATH = ROOT / ".cache" / f"triton-{OLDEST_TRITON}"

# name: (PYTHONPATH prefix or None, tier, arch, last stage). Cubin (ptxas) at the oldest release,
# which the GPU machines run; LLVM (types, layouts, shared memory) at the newest.
RUNS = {
    "newest-launch-sm90": (None, "launch,precision", 90, "llir"),
    "newest-launch-sm80": (None, "launch", 80, "ttgir"),
    "oldest-launch-sm90": (OLDEST_PATH, "launch,precision", 90, "cubin"),
    "oldest-launch-sm80": (OLDEST_PATH, "launch,precision", 80, "llir"),
    "oldest-space-sm90": (OLDEST_PATH, "space", 90, "ttgir"),
}


def _run(name: str, tmp: Path) -> dict:
    prefix, tiers, arch, until = RUNS[name]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "cache")
    if prefix is not None:
        if not (prefix / "triton" / "__init__.py").exists():
            pytest.fail(f"triton {OLDEST_TRITON} is not installed in {prefix}: run scripts/setup.sh")
        env["PYTHONPATH"] = os.pathsep.join([str(prefix), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = tmp / f"{name}.json"
    cmd = [sys.executable, "-m", "tritonkron.ops.aot", "--tiers", tiers, "--arch", str(arch),
           "--until", until, "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    if not out.exists():
        pytest.fail(f"{' '.join(cmd)} wrote no results (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    result["stdout"] = proc.stdout
    return result


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every run's outcome; the runs are independent subprocesses (mostly single-threaded
    compilation), so they go two at a time on a machine with at least two cores."""
    tmp = tmp_path_factory.mktemp("aot")
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        futures = {name: pool.submit(_run, name, tmp) for name in RUNS}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(RUNS))
def test_every_variant_compiles(outcomes: dict[str, dict], name: str) -> None:
    result = outcomes[name]
    failed = [o for o in result["outcomes"] if not o["ok"]]
    assert not failed, (
        f"{len(failed)} of {len(result['outcomes'])} variants failed:\n{result['stdout'][-6000:]}"
    )
    assert not result["missing"], f"kernels no launcher call reached: {result['missing']}"
    print(f"\n{name}: triton {result['triton']}, {result['variants']} variants, {result['seconds']} s")


def test_both_ends_of_the_triton_range(outcomes: dict[str, dict]) -> None:
    import triton

    versions = {name: r["triton"] for name, r in outcomes.items()}
    assert versions["oldest-launch-sm90"] == OLDEST_TRITON
    assert versions["newest-launch-sm90"] == triton.__version__
    floor = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if '"triton>=' in line)
    assert f'"triton>={OLDEST_TRITON.rsplit(".", 1)[0]}' in floor, (
        "pyproject's triton floor is not the tested one"
    )


def test_catalog_is_substantial(outcomes: dict[str, dict]) -> None:
    """Every jit kernel is launched with many variants: float64, fp16/bf16 tensor-core and ieee paths."""
    launch = outcomes["newest-launch-sm90"]
    kernels = {o["kernel"] for o in launch["outcomes"]}
    assert kernels == set(launch["kernels"])
    sigs = [o["signature"] for o in launch["outcomes"]]
    for dtype in ("*fp64", "*bf16", "*fp16", "*fp32"):
        assert any(dtype in s.values() for s in sigs), dtype
    assert outcomes["oldest-space-sm90"]["variants"] > launch["variants"]


def test_precision_policies_are_compiled(outcomes: dict[str, dict]) -> None:
    """The TF32 and bf16 dots (``PRECISION`` 1 and 2) of both GEMM kernels are in the runs that
    compile the precision tier, and the interpreter's emulations (3, 4) never are."""
    from tritonkron.ops.precision import KERNEL_BF16, KERNEL_TF32

    for name, (_, tiers, _, _) in RUNS.items():
        modes = {}
        for o in outcomes[name]["outcomes"]:
            if "PRECISION" in o["constexprs"]:
                modes.setdefault(o["kernel"].split(":")[1], set()).add(int(o["constexprs"]["PRECISION"]))
        policies = {KERNEL_TF32, KERNEL_BF16} if "precision" in tiers else set()
        for kernel in ("_bmm_kernel", "_sym_gemm_kernel"):
            assert modes.get(kernel, set()) - {0} == policies, (name, kernel, modes.get(kernel))


def test_shared_memory_fits_the_targets(outcomes: dict[str, dict]) -> None:
    for name, result in outcomes.items():
        for o in result["outcomes"]:
            if o["shared"] is not None:
                assert o["shared"] <= SHARED_LIMIT[o["arch"]], (name, o)


def test_launch_tiles_fit_every_ampere_and_ada_gpu(outcomes: dict[str, dict]) -> None:
    """The heuristic tiles also fit sm_86/sm_89 (RTX 30xx/40xx, A10, L4, L40): 101376 B per block.

    Those targets lower like sm_80 (same MMA, same pipelining), so the sm_80 footprints are theirs;
    the float64 bmm once needed 131072 B there (128 × 128 × 32 tiles over 3 stages).
    """
    result = outcomes["oldest-launch-sm80"]["outcomes"]
    footprints = [o["shared"] for o in result if o["shared"] is not None]
    assert footprints, "the sm_80 run reports no shared-memory footprints"
    assert max(footprints) <= SHARED_LIMIT[86], max(footprints)


# The harness itself must be able to fail: the bug class that crashed tk.Kron on an H200.


def test_harness_catches_a_branch_joining_different_tile_shapes() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "tests.ops._aot_bad_kernel"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    equal, unequal = json.loads(proc.stdout.strip().splitlines()[-1])
    assert equal is None, equal
    assert unequal is not None and "Mismatched type" in unequal, unequal


def test_specialisation_matches_the_jit() -> None:
    """The recorder types arguments as Triton's JIT does (its native specialiser, where present)."""
    from tritonkron.ops.aot.record import specialise

    native = pytest.importorskip("triton._C.libtriton").native_specialize_impl
    from triton.backends.compiler import BaseBackend

    for value in (
        1,
        16,
        7,
        2**40,
        3.0,
        True,
        None,
        torch.zeros(4),
        torch.zeros(4)[1:],
        torch.zeros(3).bfloat16(),
    ):
        kind, const, div = specialise(value)
        ref = native(BaseBackend, value, False, True, True)
        assert kind == ref[0], (value, kind, ref)
        if kind == "constexpr":
            assert const == ref[1]
        elif kind.startswith("*") or kind.startswith("i"):
            assert div == (ref[1] == "D"), (value, div, ref)
