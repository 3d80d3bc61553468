"""The package's layering: each layer imports only itself and the layers below it, with no cycles.

Layers, bottom to top (the README's "Layout" section):

    options, state → math → ops → distributed → step → tuning → optim → analysis → tritonkron/__init__

Every ``import`` counts, including imports inside functions. The package never imports the
checkout-only ``perf`` package nor the tuner ``autotune``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tritonkron"
LAYERS = {
    "options": 0,
    "state": 0,
    "math": 1,
    "ops": 2,
    "distributed": 3,
    "step": 4,
    "tuning": 5,
    "optim": 6,
    "analysis": 7,
}
TOP = max(LAYERS.values()) + 1  # tritonkron/__init__.py, the public API


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports (``from pkg import name`` counts as ``pkg.name`` when a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return TOP if len(parts) == 1 else LAYERS[parts[1]]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), restricted to the package."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v] & graph.keys():
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while component[-1:] != [v]:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_package_module_has_a_layer() -> None:
    unknown = {m for m in _modules() if m != "tritonkron" and m.split(".")[1] not in LAYERS}
    assert not unknown, f"modules outside the layers (add them to LAYERS and the README): {sorted(unknown)}"


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in sorted(_graph().items())
        for d in sorted(deps)
        if d.startswith("tritonkron.") and _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_ops_never_import_the_step() -> None:
    bad = [
        (m, d)
        for m, deps in _graph().items()
        if m.startswith("tritonkron.ops")
        for d in deps
        if d.startswith("tritonkron.step")
    ]
    assert not bad, bad


@pytest.mark.parametrize("outside", ["perf", "autotune"])
def test_package_never_imports_checkout_or_tuner_code(outside: str) -> None:
    bad = [
        (m, d) for m, deps in _graph().items() for d in deps if d == outside or d.startswith(outside + ".")
    ]
    assert not bad, bad


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def _readme_layout() -> set[str]:
    """The entries the README's "Layout" block lists directly under ``tritonkron/``."""
    text = (PACKAGE.parent / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    lines = block.splitlines()
    start = lines.index("tritonkron/") + 1
    entries = set()
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        if not line.startswith("   "):
            entries.add(line.split()[0].rstrip("/"))
    return entries


def test_readme_layout_matches_the_tree() -> None:
    tree = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"
    }
    listed = {entry.removesuffix(".py") for entry in _readme_layout()}
    assert listed == tree, (
        f"README lists {sorted(listed - tree)} not in the tree; misses {sorted(tree - listed)}"
    )


def test_the_checks_can_fail() -> None:
    """The cycle finder and the layer map flag a planted cycle and an upward import."""
    planted = {"tritonkron.ops.a": {"tritonkron.step.b"}, "tritonkron.step.b": {"tritonkron.ops.a"}}
    assert _cycles(planted) == [["tritonkron.ops.a", "tritonkron.step.b"]]
    assert _layer("tritonkron.step.b") > _layer("tritonkron.ops.a")
