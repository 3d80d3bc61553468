"""The analysis's own data loader: bundled data, clear errors, and no import of ``perf`` or ``autotune``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritonkron.analysis import data
from tritonkron.analysis.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports only)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_library_never_imports_perf_or_autotune():
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & {"perf", "autotune"})
        for path in (ROOT / "tritonkron").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_cli_runs_with_perf_and_autotune_unimportable(tmp_path: Path):
    """``sys.modules[name] = None`` makes any import of it fail, as in a wheel without those packages."""
    code = (
        "import sys; sys.modules['perf'] = None; sys.modules['autotune'] = None\n"
        "from tritonkron.analysis.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["--workload", "digits", "--steps", "2", "--samples", "12", "--hidden", "4", "--max-dim", "64",
            "--resamples", "1", "--curvature-batch", "32", "--k-max", "4", "--top-k", "2", "--dpi", "30",
            "--threads", "1", "--out", str(tmp_path / "report")]  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "wrote" in run.stdout and (tmp_path / "report" / "REPORT.md").is_file()


def test_digits_ships_with_scikit_learn():
    pytest.importorskip("sklearn")
    digits = data.load_digits_dataset()
    assert digits.name == "digits" and digits.num_classes == 10 and digits.num_features == 64
    assert digits.x_train.shape[0] + digits.x_test.shape[0] == 1797
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert torch.equal(digits.x_train, data.load_digits_dataset().x_train)  # deterministic split


def test_fashion_mnist_falls_back_to_digits_and_says_so(tmp_path: Path):
    pytest.importorskip("sklearn")
    loaded = data.load_image_classification("fashion_mnist", root=tmp_path / "absent")
    assert loaded.name == "digits" and "fell back to scikit-learn digits" in loaded.note


def test_missing_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys):
    for name in ("sklearn", "sklearn.datasets", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(data.MissingDataError, match=r"tritonkron\[analysis\]"):
        data.load_digits_dataset()
    with pytest.raises(data.MissingDataError, match="no Fashion-MNIST IDX files.*tritonkron\\[analysis\\]"):
        data.load_image_classification("fashion_mnist", root=tmp_path / "absent")
    assert main(["--workload", "digits", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and 'pip install "tritonkron[analysis]"' in err
    assert not (tmp_path / "never").exists()


def test_perf_workloads_reexports_the_same_loader():
    workloads = pytest.importorskip("perf.workloads")
    for name in ("Dataset", "load_image_classification", "load_digits_dataset", "read_idx", "IdxFormatError"):
        assert getattr(workloads, name) is getattr(data, name)


def test_help_names_the_data_sources_and_no_issue_numbers(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "fashion-mnist" in out and "digits" in out and "tritonkron[analysis]" in out
    assert "issue" not in out.lower()
