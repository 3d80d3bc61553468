"""``python -m autotune`` end to end on a small real model, and the tuner's kernel/measure contract.

The CLI test tunes ``tests.autotune.digits_model:make`` (a 64-32-10 MLP on scikit-learn's
digits) in a subprocess, checks the file, the per-layer ranks and the summary, then trains with
the tuned ranks. Kernel tests run the Triton launchers under ``TRITON_INTERPRET=1`` (set by
``tests/conftest.py`` without CUDA) on tiny shapes with explicit configs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tritonkron as tk
from autotune import space
from autotune.__main__ import main
from autotune.measure import bench, cpu_threads
from autotune.search import SearchOptions, ShapeResult, tune_kernel, tune_shape_kernels
from tritonkron.options import triton_interpret
from tritonkron.tuning.file import TuningTable, device_name, load_tuning
from tritonkron.tuning.lookup import tuned_param_groups

ROOT = Path(__file__).resolve().parents[2]
CAN_LAUNCH = torch.cuda.is_available() or triton_interpret()
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_help(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "MODULE:FACTORY", "--steps", "--out", "--kernels", "--mass"):
        assert flag in out


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_colon", "MODULE:FACTORY"),
        ("no_such_module_xyz:make", "cannot import"),
        ("os:no_such", "no attribute"),
    ],
)
def test_bad_model_spec_exits_2(spec: str, match: str, capsys: pytest.CaptureFixture[str]):
    assert main(["--model", spec, "--quiet"]) == 2
    assert match in capsys.readouterr().err


def test_cli_end_to_end(tmp_path: Path):
    pytest.importorskip("sklearn")
    out = tmp_path / "tuning.json"
    cmd = [sys.executable, "-m", "autotune", "--model", "tests.autotune.digits_model:make"]
    cmd += ["--steps", "30", "--cpu-reps", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "calibration step 30" in proc.stderr and "[####" in proc.stderr  # progress bar
    assert "rank A" in proc.stdout and "state MB full" in proc.stdout and f"wrote {out}" in proc.stdout
    device = proc.stdout.splitlines()[0]  # the device line comes first: "device: cpu (2 threads)"
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # --device auto
    assert re.fullmatch(rf"device: {expected} \(.+\)", device), device

    table = load_tuning(out)
    entries = {e.shape: e for e in table.entries}
    assert set(entries) == {(32, 64), (10, 32)}
    assert table.device == "cpu"  # the factory builds its model on the CPU
    first, second = entries[(32, 64)], entries[(10, 32)]
    assert (first.block_size, second.block_size) == (64, 32)  # too small to split
    for e in (first, second):
        m, n = e.shape
        assert 1 <= e.rank_a <= -(-m // 2) and 1 <= e.rank_b <= -(-n // 2)  # the default budget d/2
        assert e.predicted["state_mb_sketch"] < e.predicted["state_mb_full"]
        assert e.knobs["ns_steps_a"] is None or e.knobs["ns_steps_a"] > 0
    # The pixel side of layer 1 and the class side of layer 2 have different spectra.
    assert (first.rank_a, first.rank_b) != (second.rank_a, second.rank_b)
    assert first.knobs["root_method"] in space.ROOT_METHODS and first.knobs["cpu_threads"] >= 1
    assert first.kernels == {} and second.kernels == {}  # no kernel search for a CPU model by default

    # Kron with the tuned ranks (rank="auto" emulated by per-parameter groups) trains.
    from tests.autotune.digits_model import make

    with cpu_threads(1):
        model, loss_fn = make(seed=1)
        opt = tk.Kron(tuned_param_groups(model.parameters(), table, lr=1e-2))
        losses = []
        for _ in range(30):
            opt.zero_grad()
            loss = loss_fn(model)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


@pytest.mark.skipif(not CAN_LAUNCH, reason="needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize(
    "name", ["factor_update.left", "factor_update.right", "track_eigenvalues", "precondition"]
)
def test_tuned_launch_equals_default_and_inputs_survive(name: str):
    op = space.KERNEL_OPS[name]
    block = (2, 20, 12)
    configs = space.kernel_configs(op, block)[:2]
    assert configs
    live = op.make_inputs(block, torch.float32, DEVICE, 5)  # e.g. an optimizer's real buffers
    snapshot = {k: v.clone() for k, v in live.items()}
    result = tune_kernel(op, block, torch.float32, DEVICE, configs=configs, cpu_reps=1, example=live)
    for key, value in live.items():  # in-place ops (factor_update, track) tuned on clones only
        assert torch.equal(value, snapshot[key]), key
    assert result.best in configs and len(result.timings) == len(configs)

    tuned = op.launch({k: v.clone() for k, v in live.items()}, result.best)
    default = op.launch({k: v.clone() for k, v in live.items()}, None)
    for a, b in zip(
        tuned if isinstance(tuned, tuple) else (tuned,),
        default if isinstance(default, tuple) else (default,),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not CAN_LAUNCH, reason="needs CUDA or TRITON_INTERPRET=1")
def test_in_place_op_really_mutates_so_the_check_above_bites():
    op = space.KERNEL_OPS["factor_update.left"]
    x = op.make_inputs((1, 16, 16), torch.float32, DEVICE, 0)
    before = x["X"].clone()
    op.launch(x, None)
    assert not torch.equal(x["X"], before)


def test_kernel_space_is_legal_and_shape_bounded():
    if not space.KERNEL_OPS["precondition"].legal():
        pytest.skip("triton is not installed")
    for op in space.KERNEL_OPS.values():
        small, large = space.kernel_configs(op, (1, 20, 12)), space.kernel_configs(op, (1, 1024, 1024))
        assert small and len(large) >= len(small)
        legal = op.legal()
        assert all(cfg in legal for cfg in large)
        floors = {key: min(c[key] for c in legal) for key in op.limits}
        for cfg in small:
            for key, dim in op.limits.items():
                assert cfg[key] <= max(floors[key], 32 if dim(20, 12) > 16 else 16)
        assert len(space.kernel_configs(op, (1, 1024, 1024), limit=3)) == min(3, len(large))


def test_block_size_candidates():
    assert space.block_size_candidates((32, 64)) == [64]
    assert space.block_size_candidates((300, 1000)) == [128, 256, 512, 1000]
    assert space.block_size_candidates((8, 3, 3, 3)) == [27]  # conv weight viewed as 8 × 27


def test_bench_builds_fresh_inputs_once_per_measurement():
    built, calls = [], []

    def make() -> list[int]:
        built.append([])
        return built[-1]

    timing = bench(lambda x: (x.append(1), calls.append(1)), make, "cpu", cpu_warmup=2, cpu_reps=3)
    assert len(built) == 1 and built[0] == [1] * 5 and len(calls) == 5
    assert timing.p20 <= timing.p50 <= timing.p80


@pytest.mark.skipif(not CAN_LAUNCH, reason="needs CUDA or TRITON_INTERPRET=1")
def test_kernel_search_stores_configs_the_launchers_accept(tmp_path: Path):
    result = ShapeResult(shape=(16, 24), dtype=torch.float32, names=["w"], block_size=24)
    with cpu_threads(1):
        tune_shape_kernels(result, DEVICE, SearchOptions(max_configs=1, cpu_reps=1))
    assert set(result.kernels) == set(space.KERNEL_OPS)
    table = load_tuning(
        TuningTable(device=device_name(DEVICE), entries=[result.entry()]).save(tmp_path / "k.json")
    )
    entry = table.lookup((16, 24), torch.float32, device_name(DEVICE))
    assert entry is not None and set(entry.kernels) == set(space.KERNEL_OPS)
    for op_name in ("factor_update.left", "precondition"):  # stored configs launch and match the default
        op = space.KERNEL_OPS[op_name]
        tuned = op.launch(op.make_inputs((1, 16, 24), torch.float32, DEVICE, 1), entry.kernels[op_name])
        default = op.launch(op.make_inputs((1, 16, 24), torch.float32, DEVICE, 1), None)
        torch.testing.assert_close(tuned, default, rtol=1e-5, atol=1e-6)
