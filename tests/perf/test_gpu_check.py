"""Smoke test of ``perf.gpu_check`` (CPU, Triton interpreter), its end-to-end section and the shape
registry it reads.

The check runs as a subprocess: ``--cpu-interpret`` must set ``TRITON_INTERPRET=1`` before triton
is imported, which an in-process run could not guarantee once another test has imported it. The
end-to-end section (``perf.gpu_e2e``) is left out of that run and tested in process on the tiny
model, its Kron rows on the reference backend (the interpreter would take ~20 s for them).
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from perf import gpu_check, gpu_e2e, shapes
from perf.check_env import collect_env
from perf.check_plan import OPS, make_plan
from perf.check_report import Report
from perf.gpu_e2e_entries import E2EEntry, e2e_entries
from tritonkron.ops.kernel_guard import KernelFallbackWarning

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
    ops = [op for op in OPS if op != "e2e"]
    return _run("--quick", "--cpu-interpret", "--out-dir", str(out), "--ops", *ops), out


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


# ---------------------------------------------------------------------------------------------
# The end-to-end section, in process (tiny model, CPU)
# ---------------------------------------------------------------------------------------------

E2E_LABELS = [
    "AdamW",
    "Muon + AdamW",
    "heavyball SOAP",
    "Kron default",
    f"Kron block_size={shapes.TINY_BLOCK_SIZE}",
    "Kron rank=4",
    "Kron rank=4 sketch=True",
]
MEASURED = ("step_ms_median", "step_ms_mean", "step_ms_max", "fwd_bwd_ms_median", "first_step_s")


def _report(out: Path) -> Report:
    plan = make_plan(True, True, ["e2e"], None)
    return Report(out, collect_env(plan), "(no nvidia-smi)", plan)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Report]:
    """The whole section on CPU with heavyball made unimportable, whether or not it is installed."""
    report = _report(tmp_path_factory.mktemp("e2e"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "heavyball", None)
        rows = gpu_e2e.run_e2e(report.plan, report, seed=0, kron_backend="reference")
    return rows, report


def test_e2e_has_every_optimizer_row_with_positive_finite_numbers(
    e2e: tuple[list[dict[str, Any]], Report],
) -> None:
    rows, report = e2e
    assert [r["optimizer"] for r in rows] == E2E_LABELS
    ran = [r for r in rows if r["optimizer"] != "heavyball SOAP"]
    assert {r["status"] for r in ran} == {"ok"}, [(r["optimizer"], r["status"], r.get("note")) for r in ran]
    for r in ran:
        for key in (*MEASURED, "state_per_param_byte", "final_loss"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["optimizer"], key, r[key])
        assert r["timed_steps"] == 1 and r["state_bytes"] > 0
    kron = [r for r in rows if r["optimizer"].startswith("Kron")]
    assert all(r["kernel_fallbacks"] == 0 and r["backend"] == "reference" for r in kron)
    assert 2.0 < next(r for r in rows if r["optimizer"] == "AdamW")["state_per_param_byte"] < 2.01  # + step
    assert report.failures == []


def test_e2e_reports_a_missing_peer_as_skipped_with_its_reason(
    e2e: tuple[list[dict[str, Any]], Report],
) -> None:
    rows, report = e2e
    soap = next(r for r in rows if r["optimizer"] == "heavyball SOAP")
    assert soap["status"].startswith("skipped: heavyball not importable (")
    assert "step_ms_median" not in soap
    written = _rows(report.out_dir / "gpu_check_e2e.csv")
    assert list(written[0]) == gpu_e2e.E2E_COLUMNS
    assert [r["optimizer"] for r in written] == E2E_LABELS
    assert written[2]["status"] == soap["status"]
    (md,) = report.out_dir.glob("gpu_check_*.md")
    text = md.read_text()
    assert "## End-to-end training step" in text and "skipped: heavyball not importable" in text


def test_e2e_skips_muon_without_torch_muon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.optim, "Muon")
    muon = next(e for e in e2e_entries(256, 64) if e.label == "Muon + AdamW")
    assert muon.build is None and "has no torch.optim.Muon" in (muon.skip or "")


class _WarnsSGD(torch.optim.SGD):
    """SGD that reports a kernel fallback at every step, as a Kron step whose kernel failed would."""

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        warnings.warn("kernel x failed", KernelFallbackWarning, stacklevel=2)
        return super().step(closure)


def _broken(model: torch.nn.Module) -> torch.optim.Optimizer:
    raise RuntimeError("no such kernel")


def test_e2e_counts_fallbacks_and_keeps_errors_as_rows(tmp_path: Path) -> None:
    report = _report(tmp_path)
    entries = [
        E2EEntry("warns", "test", lambda m: _WarnsSGD(m.parameters(), lr=1e-3), "1e-3", kron=True),
        E2EEntry("broken", "test", _broken, "1e-3", kron=True),
    ]
    warns, broken = gpu_e2e.run_e2e(report.plan, report, 0, entries=entries, kron_backend="reference")
    assert warns["status"] == "ok" and warns["kernel_fallbacks"] == 2  # the first step and one timed
    assert "kernel x failed" in warns["note"]
    assert broken["status"] == "ERROR" and "no such kernel" in broken["note"]
    assert len(report.failures) == 2


def test_e2e_cap_and_budget_stop_early_and_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = gpu_e2e.make_e2e_plan("cpu-interpret")

    def small(mode: str, budget_s: float | None = None) -> gpu_e2e.E2EPlan:
        return replace(
            plan, warmup=2, steps=5, cap_s=0.0, budget_s=plan.budget_s if budget_s is None else budget_s
        )

    monkeypatch.setattr(gpu_e2e, "make_e2e_plan", small)
    report = _report(tmp_path)
    adamw = e2e_entries(16, 4)[:1]
    (capped,) = gpu_e2e.run_e2e(report.plan, report, 0, entries=adamw)
    assert capped["status"] == "capped at 0 s: warm-up 0/2, timed 1/5"
    assert capped["timed_steps"] == 1 and capped["step_ms_median"] > 0
    (late,) = gpu_e2e.run_e2e(report.plan, report, 0, budget_s=0.0, entries=adamw)
    assert late["status"].startswith("skipped: section budget")


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="main's --cpu-interpret needs the interpreter"
)
def test_gpu_check_runs_the_e2e_section_with_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(gpu_check, "run_e2e", lambda plan, report, seed, budget: calls.append(budget))
    argv = ["--quick", "--cpu-interpret", "--ops", "e2e", "--e2e-budget-s", "7", "--out-dir", str(tmp_path)]
    assert gpu_check.main(argv) == 0
    assert calls == [7.0]
