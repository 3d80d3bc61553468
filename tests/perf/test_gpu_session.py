"""``perf/gpu_session.sh``, the one script of a lent-GPU session: valid bash, every module and test
path it names exists, and its dry run lists the stages within the session budget."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "perf" / "gpu_session.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _bash(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_script_is_valid_bash() -> None:
    done = _bash("-n", str(SCRIPT))
    assert done.returncode == 0, done.stderr


def test_script_names_existing_modules_and_paths() -> None:
    text = SCRIPT.read_text()
    modules = set(re.findall(r"-m (perf\.[\w.]+)", text))
    assert "perf.gpu_check" in modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
    (tests,) = re.findall(r"^TESTS=\((.*)\)$", text, flags=re.MULTILINE)
    paths = tests.split()
    assert paths == ["tests/ops", "tests/optim/test_triton_path.py", "tests/optim/test_kernel_guard.py"]
    assert all((REPO / p).exists() for p in paths), paths
    (gc_args,) = re.findall(r"^GC_ARGS=\((.*)\)$", text, flags=re.MULTILINE)
    from perf.gpu_check import parse_args

    args = parse_args(gc_args.replace('"$OUT/gc"', "out").split())
    assert args.quick and args.budget_s + args.e2e_budget_s + 60 < int(
        re.findall(r"GC_TIMEOUT=(\d+)", text)[0]
    )


def test_dry_run_lists_every_stage_and_runs_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env["OUT"] = str(tmp_path)
    done = _bash(str(SCRIPT), "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    for stage in ("nvidia-smi", "versions", "gpu_check", "cudagraph", "pytest"):
        assert f"=== {stage} (limit " in done.stdout, stage
    assert "-m perf.gpu_check --quick" in done.stdout and "-x -q" in done.stdout
    assert "(limit 40 s" in done.stdout and "-m perf.cudagraph_check" in done.stdout
    limits = [int(x) for x in re.findall(r"\(limit (\d+) s", done.stdout)]
    assert max(limits) <= 350
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["session.log"]
