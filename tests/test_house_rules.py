"""Size rules of the code base: modules of at most 400 lines, functions of at most 80."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tritonkron", "autotune", "perf")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of every function longer than the limit, from its ``def`` to its last line."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_are_small(package: str) -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _sources()
        if p.relative_to(ROOT).parts[0] == package and (n := p.read_text().count("\n")) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


@pytest.mark.parametrize("package", PACKAGES)
def test_functions_are_short(package: str) -> None:
    long = {
        f"{p.relative_to(ROOT)}:{name}": n
        for p in _sources()
        if p.relative_to(ROOT).parts[0] == package
        for name, n in _long_functions(p.read_text())
    }
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_function_rule_can_fail() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert _long_functions(f"def f():\n{body}\n") == [("f", MAX_FUNCTION_LINES + 1)]
