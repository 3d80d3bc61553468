"""The guard against an unrelated package named ``autotune`` (PyPI has one) and a mismatched tritonkron.

Each case runs in a subprocess whose ``PYTHONPATH`` puts a crafted folder first and this checkout
after it, so that Python finds the crafted ``autotune`` or ``tritonkron`` as it would find a foreign
install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import autotune
import tritonkron
from autotune import _guard

ROOT = Path(__file__).resolve().parents[2]
FOREIGN_INIT = '"""An unrelated package that is also named autotune."""\n\n__version__ = "0.0.1"\n'


def _run(args: list[str], first: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(first), str(ROOT)])}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _copy_of_ours(site: Path) -> Path:
    """This checkout's autotune package copied to ``site/autotune``."""
    target = site / "autotune"
    shutil.copytree(ROOT / "autotune", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_marker_and_versions_match_the_release():
    assert autotune.TRITONKRON_AUTOTUNE is True
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    release = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    assert autotune.__version__ == tritonkron.__version__ == release
    assert release.startswith(_guard.TRITONKRON_SERIES + ".")


def test_cli_refuses_a_foreign_init_over_ours(tmp_path: Path):
    """``pip install autotune`` over tritonkron's overwrites ``autotune/__init__.py``, keeps our CLI."""
    package = _copy_of_ours(tmp_path / "site")
    ours = _run(["-m", "autotune", "--help"], tmp_path / "site", tmp_path)
    assert ours.returncode == 0 and "MODULE:FACTORY" in ours.stdout, ours.stderr[-2000:]

    (package / "__init__.py").write_text(FOREIGN_INIT)
    foreign = _run(["-m", "autotune", "--help"], tmp_path / "site", tmp_path)
    assert foreign.returncode == 2, (foreign.stdout[-1000:], foreign.stderr[-2000:])
    assert "usage:" not in foreign.stdout and "Traceback" not in foreign.stderr
    err = " ".join(foreign.stderr.split())
    assert err.startswith("error: the `autotune` package imported from") and str(package) in err
    assert "is not tritonkron's autotune" in err and "pip uninstall autotune" in err


def test_import_needs_tritonkron(tmp_path: Path):
    code = "import sys; sys.modules['tritonkron'] = None; import autotune"
    run = _run(["-c", code], tmp_path, tmp_path)
    assert run.returncode != 0
    assert "ForeignAutotuneError: tritonkron's autotune needs the tritonkron package" in run.stderr


def test_import_refuses_another_tritonkron_release(tmp_path: Path):
    fake = tmp_path / "fake" / "tritonkron"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "9.9.0"\n')
    run = _run(["-c", "import autotune"], tmp_path / "fake", tmp_path)
    assert run.returncode != 0
    message = " ".join(run.stderr.split())
    assert f"ships with tritonkron {_guard.TRITONKRON_SERIES}.x" in message and "is 9.9.0" in message
    assert str(fake) in message
