"""The wheel works after ``pip install``: built from this checkout, installed into a fresh venv.

The module builds the wheel (``pip wheel . --no-deps``) from a copy of the checkout's build inputs
(``pyproject.toml``, ``README.md``, ``tritonkron/``, ``autotune/``), so that setuptools' ``build/``
and ``*.egg-info`` never land in the checkout and a stale ``build/lib`` cannot put removed modules
into the wheel. It creates a venv in a temporary folder outside the checkout (on ``/dev/shm`` when
it has room), installs the CPU build of torch first (the version ``scripts/setup.sh`` pins; the
module is skipped when the package sources offer no CPU build, so that a CUDA build is never pulled
in), then the wheel with its ``analysis`` extra, its other dependencies resolved as usual. Every
command then runs with its working directory outside the checkout and no ``PYTHONPATH``:
``python -m autotune --help``, ``python -m tritonkron.analysis`` on scikit-learn's bundled digits,
and the README's drop-in snippet. Nothing is cached, and the venv is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_INPUTS = ("pyproject.toml", "README.md", "tritonkron", "autotune")
PACKAGES = {"tritonkron", "autotune"}
PIP_QUIET = ("--quiet", "--no-compile")  # modules are compiled when first imported, not all at install
SCRATCH_PREFIX = "tritonkron-wheel-test-"
SHM_NEEDED = 8 * 2**30

pytestmark = pytest.mark.slow


def _torch_version() -> str:
    """The torch version ``scripts/setup.sh`` installs (its CPU build)."""
    found = re.search(r"^TORCH_VERSION=(\S+)", (ROOT / "scripts" / "setup.sh").read_text(), re.MULTILINE)
    assert found, "scripts/setup.sh no longer sets TORCH_VERSION"
    return found.group(1)


def _env() -> dict[str, str]:
    """This process's environment without anything that would point Python at the checkout."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "TRITON_INTERPRET"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("TRITONKRON_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; fail the test with its output tail when it exits non-zero."""
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def _build_wheel(work: Path) -> Path:
    """``pip wheel . --no-deps`` in a copy of the build inputs; returns the wheel."""
    source = work / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    _run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "-w", str(work / "dist")], source
    )
    wheels = list((work / "dist").glob("tritonkron-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _install_cpu_torch(python: Path, work: Path) -> None:
    """Install the pinned torch into the venv, after checking that pip would pick a CPU build."""
    pin = f"torch=={_torch_version()}"
    report = work / "torch-report.json"
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--quiet",
            "--report",
            str(report),
            pin,
        ],
        work,
    )
    chosen = json.loads(report.read_text())["install"][0]["metadata"]["version"]
    if not chosen.endswith("+cpu"):
        pytest.skip(
            f"pip would install torch {chosen} for {pin}, not a CPU build; refusing to pull a CUDA build"
        )
    _run([str(python), "-m", "pip", "install", *PIP_QUIET, pin], work)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new folder outside the checkout for the wheel and the venv (about 2 GB in 30 000 files).

    On ``/dev/shm`` when it has room, since a busy disk writes and deletes that many files slowly;
    folders there left by a killed run (their process is gone) are removed first.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > SHM_NEEDED:
        for stale in shm.glob(f"{SCRATCH_PREFIX}*"):
            pid = stale.name[len(SCRATCH_PREFIX) :].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=shm))
    return tmp_path_factory.mktemp("wheel")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory):
    """``(python, wheel, workdir)``: the fresh venv's interpreter with the wheel installed."""
    work = _scratch(tmp_path_factory)
    try:
        assert ROOT not in work.resolve().parents
        wheel = _build_wheel(work)
        _run([sys.executable, "-m", "venv", str(work / "venv")], work)
        python = work / "venv" / "bin" / "python"
        _install_cpu_torch(python, work)
        _run([str(python), "-m", "pip", "install", *PIP_QUIET, f"{wheel}[analysis]"], work)
        outside = work / "cwd"
        outside.mkdir()
        yield python, wheel, outside
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_wheel_holds_only_the_two_packages_and_the_analysis_extra(installed):
    _, wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == PACKAGES
    for needed in ("tritonkron/analysis/__main__.py", "tritonkron/analysis/data.py", "autotune/_guard.py"):
        assert needed in names
    assert "Provides-Extra: analysis" in metadata


def test_installed_packages_come_from_the_venv_and_perf_is_absent(installed):
    python, _, cwd = installed
    code = (
        "import importlib.util, autotune, torch, tritonkron\n"
        "print(autotune.__file__); print(tritonkron.__file__)\n"
        "print(importlib.util.find_spec('perf')); print(torch.__version__)\n"
    )
    autotune_file, tritonkron_file, perf, torch_version = _run([str(python), "-c", code], cwd).stdout.split()
    venv = python.parent.parent.resolve()
    for path in (autotune_file, tritonkron_file):
        assert venv in Path(path).resolve().parents, path
    assert perf == "None" and torch_version.endswith("+cpu")


def test_autotune_help(installed):
    python, _, cwd = installed
    out = _run([str(python), "-m", "autotune", "--help"], cwd).stdout
    assert out.startswith("usage: python -m autotune") and "MODULE:FACTORY" in out and "--device" in out


def test_analysis_runs_on_bundled_digits(installed, tmp_path: Path):
    python, _, cwd = installed
    out = tmp_path / "report"
    args = ["--workload", "digits", "--steps", "5", "--samples", "40", "--hidden", "4", "--max-dim", "64",
            "--resamples", "1", "--curvature-batch", "32", "--k-max", "4", "--top-k", "2", "--dpi", "30",
            "--out", str(out)]  # fmt: skip
    done = _run([str(python), "-m", "tritonkron.analysis", *args], cwd)
    assert f"wrote {out / 'REPORT.md'}" in done.stdout
    report = (out / "REPORT.md").read_text()
    assert "scikit-learn digits" in report and "S = 40 minibatch gradients" in report
    assert (out / "overlap.png").is_file() and (out / "summary.csv").is_file()


def _readme_snippet() -> str:
    """The README's first Python block that swaps an optimizer for ``tk.Kron``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.DOTALL)
    snippets = [b for b in blocks if "import tritonkron as tk" in b and "tk.Kron(model.parameters()" in b]
    assert snippets, (
        "README.md has no drop-in snippet (`import tritonkron as tk` ... `tk.Kron(model.parameters()`)"
    )
    return snippets[0]


def test_readme_drop_in_snippet(installed, tmp_path: Path):
    python, _, cwd = installed
    snippet = tmp_path / "snippet.py"
    snippet.write_text(_readme_snippet(), encoding="utf-8")
    driver = shutil.copy2(Path(__file__).with_name("snippet_driver.py"), tmp_path / "snippet_driver.py")
    done = _run([str(python), str(driver), str(snippet), str(ROOT)], cwd)
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("drop-in ok: ") and int(lines[-1].split()[2]) == snippet.read_text().count(
        "tk.Kron("
    )
    assert all(line.startswith("Kron: loss") for line in lines[:-1])
