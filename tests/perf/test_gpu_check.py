"""Smoke test of ``perf.gpu_check`` (CPU, Triton interpreter) and of the shape registry it reads.

The check runs as a subprocess: ``--cpu-interpret`` must set ``TRITON_INTERPRET=1`` before triton
is imported, which an in-process run could not guarantee once another test has imported it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perf import shapes

REPO = Path(__file__).resolve().parents[2]
KERNEL_OPS = ("factor_update", "precondition", "spike_and_flat", "track_eigenvalues", "inverse_root")


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITONKRON_BACKEND")}
    return subprocess.run(
        [sys.executable, "-m", "perf.gpu_check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    return _run("--quick", "--cpu-interpret", "--out-dir", str(out)), out


def test_smoke_run_exits_zero_and_writes_all_files(
    smoke: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = smoke
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("gpu_check_correctness.csv", "gpu_check_timing.csv", "gpu_check_step.csv"):
        rows = _rows(out / name)
        assert rows, name
        assert list(rows[0]) == [
            "op", "provider", "shape_name", "B", "m", "n", "dtype", "metric", "unit", "p50", "p20", "p80",
            "gpu_name", "torch", "triton", "git_commit", "timestamp", "variant", "tolerance", "status", "note",
        ]  # fmt: skip
    (md,) = out.glob("gpu_check_*_cpu-interpret.md")
    text = md.read_text()
    for heading in (
        "## Environment",
        "## Device peak",
        "## Correctness",
        "## Op timing",
        "## Optimizer step",
    ):
        assert heading in text
    assert "FAIL" not in text


def test_every_op_has_a_passing_correctness_row(smoke: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = smoke
    rows = _rows(out / "gpu_check_correctness.csv")
    assert {r["status"] for r in rows} == {"PASS"}
    for op in KERNEL_OPS:
        assert any(r["op"] == op and r["status"] == "PASS" for r in rows), op
    assert all(float(r["p50"]) <= float(r["tolerance"]) for r in rows)
    assert {r["variant"] for r in rows if r["op"] == "factor_update"} == {
        f"{side}/{w}" for side in ("left", "right") for w in ("I", "eigen", "dense")
    }
    assert {r["variant"] for r in rows if r["op"] == "inverse_root"} == {"p=2", "p=4"}


def test_timing_and_step_rows_cover_both_providers(
    smoke: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = smoke
    timing = _rows(out / "gpu_check_timing.csv")
    for op in KERNEL_OPS:
        providers = {r["provider"] for r in timing if r["op"] == op and r["metric"] == "time"}
        assert providers == {"triton", "reference"}, op
    assert all(float(r["p50"]) > 0 for r in timing if r["metric"] == "time")
    step = _rows(out / "gpu_check_step.csv")
    timed = {(r["variant"], r["provider"]) for r in step if r["metric"] == "step_time" and r["p50"]}
    layouts = ("batched", "per_block", "per_block_unstacked")
    assert timed == {(layout, b) for layout in layouts for b in ("reference", "triton")}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA message only shows without a GPU")
def test_without_cuda_or_flag_exits_2(tmp_path: Path) -> None:
    done = _run("--quick", "--out-dir", str(tmp_path), timeout=120)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
    assert not list(tmp_path.iterdir())


def test_registry_block_shapes_match_the_optimizer_blocking() -> None:
    gpt2 = {s.name: s.shape for s in shapes.model_block_shapes(shapes.GPT2_SMALL)}
    assert gpt2["gpt2-small/attn_qkv"] == (3, 768, 768)
    assert gpt2["gpt2-small/mlp_proj"] == (3, 1024, 768)
    assert gpt2["gpt2-small/wte@1006x768"] == (7, 1006, 768)
    llama = {s.name: s.shape for s in shapes.model_block_shapes(shapes.LLAMA_7B)}
    assert llama["llama-7b/attn_qkvo"] == (16, 1024, 1024)
    assert llama["llama-7b/mlp_gate_up@1024x1001"] == (32, 1024, 1001)
    assert sum(s.B for s in shapes.model_block_shapes(shapes.LLAMA_7B) if "mlp_down" in s.name) == 44
    assert shapes.per_block_matrices(shapes.GPT2_SMALL.layer("attn_qkv")) == [(768, 768)] * 3
    assert all(max(s.m, s.n) <= 32 for s in shapes.CORRECTNESS_BLOCKS_CPU + shapes.TIMING_BLOCKS_CPU)
