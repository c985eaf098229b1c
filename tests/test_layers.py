"""
The package's structure: imports point one way, down the layers below.

Each layer may import the layers under it (and, without a cycle, modules of
its own layer); nothing imports upwards, and no patchboard module is
imported inside a function to dodge a cycle. The README's "Architecture"
section draws the same layers.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "patchboard"

LAYERS: list[list[str]] = [
    ["patchboard._exceptions", "patchboard._outcomes"],
    ["patchboard._state", "patchboard._django", "patchboard._deadline"],
    ["patchboard._config", "patchboard._log"],
    ["patchboard._features", "patchboard._threads"],
    ["patchboard._call"],
    ["patchboard._listeners"],
    ["patchboard._queue"],
    ["patchboard._dispatch"],
    ["patchboard._stream"],
    ["patchboard._signals"],
    ["patchboard.breaker", "patchboard.background"],
    [
        "patchboard._checks",
        "patchboard.testing",
        "patchboard.management",
        "patchboard.apps",
        "patchboard._status",
        "patchboard.urls",
    ],
    ["patchboard"],
]
"""Bottom first. A feature package (``breaker``, ``background``) is one layer with its modules."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, found = -1, 0
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, name: str) -> tuple[set[str], list[str]]:
    """Module-level patchboard imports of a module, and those made inside functions."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    nested: list[str] = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        known = modules()
        return [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
            for alias in node.names
        ]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue  # annotations only: no import at run time
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in targets(child):
                    if target == "patchboard" or target.startswith("patchboard."):
                        (nested.append if in_function else found.add)(target)
            is_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            visit(child, in_function or is_function)

    visit(tree, False)
    found.discard(name)
    return found, nested


def graph() -> dict[str, set[str]]:
    return {name: imports(path, name)[0] for name, path in modules().items()}


def test_every_module_is_in_a_layer() -> None:
    for name in modules():
        layer_of(name)


def test_no_import_points_up() -> None:
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(name) and not name.startswith(target + ".")
    ]
    assert upward == []


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if node.startswith(target + "."):
                continue  # a submodule's import of its own package's __init__ runs first
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                walk(target, [*trail, target])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            walk(name, [name])
    assert cycles == []


def test_no_patchboard_import_inside_a_function() -> None:
    nested = {name: found for name, path in modules().items() if (found := imports(path, name)[1])}
    assert nested == {}


@pytest.mark.parametrize("name", sorted(modules()))
def test_each_module_imports_with_only_what_is_under_it(name: str) -> None:
    """
    Imported first, in a fresh interpreter, with the package's ``__init__``
    left out, a module loads only modules of its own layer and below.
    """
    code = f"""
import importlib, json, sys, types
package = types.ModuleType("patchboard")
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["patchboard"] = package
import django
from django.conf import settings
settings.configure()
importlib.import_module({name!r})
print(json.dumps(sorted(m for m in sys.modules if m.startswith("patchboard."))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    above = [module for module in loaded if layer_of(module) > layer_of(name)]
    assert above == []
