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
from typing import Any

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "patchboard"

LAYERS: list[list[str]] = [
    [
        "patchboard._exceptions",
        "patchboard._outcomes",
        "patchboard._clock",
        "patchboard._waiter",
        "patchboard._version",
        "patchboard._source",
        "patchboard._shield",
    ],
    ["patchboard._state", "patchboard._django", "patchboard._deadline"],
    ["patchboard._config", "patchboard._log"],
    ["patchboard._ledger"],
    ["patchboard._features", "patchboard._threads", "patchboard._instrument", "patchboard._retry"],
    ["patchboard._breaker"],
    ["patchboard._call"],
    ["patchboard._run"],
    ["patchboard._listeners"],
    ["patchboard._queue"],
    ["patchboard._dispatch"],
    ["patchboard._stream"],
    ["patchboard._signals"],
    ["patchboard._breaker", "patchboard._background", "patchboard._metrics", "patchboard._tracing"],
    [
        "patchboard._checks",
        "patchboard.testing",
        "patchboard.management",
        "patchboard.apps",
        "patchboard.models",
        "patchboard.migrations",
        "patchboard._status",
        "patchboard.urls",
        "patchboard.toolbar",
    ],
    ["patchboard"],
]
"""Bottom first. A package (``_breaker``, ``_background``) is one layer with its modules."""


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
    left out, a module loads only modules of its own layer and below. Every
    module but the models imports before Django's app registry is ready (the
    registry imports ``patchboard`` while it fills): the models need it ready.
    """
    setup = "django.setup()" if name == "patchboard.models" else ""
    code = f"""
import importlib, json, sys, types
package = types.ModuleType("patchboard")
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["patchboard"] = package
import django
from django.conf import settings
settings.configure()
{setup}
importlib.import_module({name!r})
print(json.dumps(sorted(m for m in sys.modules if m.startswith("patchboard."))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    above = [module for module in loaded if layer_of(module) > layer_of(name)]
    assert above == []


# -- one privacy rule ------------------------------------------------------------------

PUBLIC_MODULES = {"patchboard", "patchboard.testing", "patchboard.urls"}
"""The public faces: what they export is the API; every other module is private."""

DJANGO_NAMES = {
    "patchboard.apps": "Django finds an app's AppConfig in its ``apps`` module",
    "patchboard.management": "Django finds commands in ``management/commands``",
    "patchboard.management.commands": "Django finds commands in ``management/commands``",
    "patchboard.management.commands.patchboard": "the command's name, ``manage.py patchboard``",
    "patchboard.toolbar": "``DEBUG_TOOLBAR_PANELS`` names its panel by dotted path",
    "patchboard.models": "Django finds an app's models in its ``models`` module",
    "patchboard.migrations": "Django finds an app's migrations in ``migrations``",
    "patchboard.migrations.0001_initial": "a migration's name is its order",
    "patchboard.migrations.0002_deliveries": "a migration's name is its order",
}
"""Modules whose names Django dictates: not API, and not importable under another name."""


def test_every_other_module_has_a_private_name() -> None:
    """Each part of a private module's dotted name starts with ``_`` (as anyio's
    ``anyio._core._synchronization``): one rule, checked by looking at the name."""
    public = PUBLIC_MODULES | set(DJANGO_NAMES)
    named_publicly = [
        name
        for name in modules()
        if name not in public and not all(part.startswith("_") for part in name.split(".")[1:])
    ]
    assert named_publicly == []


def _hands_names_on(statement: ast.stmt, *, top: bool) -> bool:
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return True  # the docstring
    if isinstance(statement, ast.ImportFrom):
        return statement.module == "__future__" or all(
            alias.asname == alias.name for alias in statement.names
        )
    if isinstance(statement, ast.Import) and top:
        # The top package imports the background feature and tracing for their
        # effect: they plug themselves into their seams (patchboard._features,
        # patchboard._instrument).
        plugs = [["patchboard._background._feature"], ["patchboard._tracing._plug"]]
        return [alias.name for alias in statement.names] in plugs
    if isinstance(statement, ast.Assign):
        return [getattr(t, "id", None) for t in statement.targets] == ["__all__"]
    return False


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("__init__.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_a_package_init_only_hands_names_on(path: Path) -> None:
    """Re-exports as ``from x import Name as Name``, ``__all__`` and a docstring: no code."""
    tree = ast.parse(path.read_text())
    top = path.parent == PACKAGE
    other = [ast.unparse(s) for s in tree.body if not _hands_names_on(s, top=top)]
    assert other == []


def _private_types() -> dict[str, str]:
    """Classes and type aliases defined in patchboard's modules but exported by no face."""
    import importlib

    exported: set[str] = set()
    for face in PUBLIC_MODULES:
        module = importlib.import_module(face)
        exported |= set(getattr(module, "__all__", ()))
    found: dict[str, str] = {}
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            defined = None
            if isinstance(node, ast.ClassDef):
                defined = node.name
            elif isinstance(node, ast.AnnAssign) and ast.unparse(node.annotation) == "TypeAlias":
                defined = getattr(node.target, "id", None)
            elif isinstance(node, ast.TypeAlias):
                defined = node.name.id
            if defined and defined not in exported:
                found.setdefault(defined, name)
    return found


def test_no_public_signature_takes_a_private_type() -> None:
    """What a user can call takes only what a user can name."""
    import importlib
    import inspect
    import re

    private = _private_types()
    offenders: list[str] = []

    def check(where: str, func: Any) -> None:
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):
            return
        for parameter in signature.parameters.values():
            annotation = parameter.annotation
            if annotation is inspect.Parameter.empty:
                continue
            text = annotation if isinstance(annotation, str) else repr(annotation)
            for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text):
                if word in private:
                    offenders.append(f"{where}({parameter.name}: {text}): {word} ({private[word]})")

    for face in sorted(PUBLIC_MODULES):
        module = importlib.import_module(face)
        for export in getattr(module, "__all__", ()):
            obj = getattr(module, export)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr == "__init__" or not attr.startswith("_"):
                        member = getattr(member, "__func__", member)
                        if callable(member):
                            check(f"{face}.{export}.{attr}", member)
            elif callable(obj):
                check(f"{face}.{export}", obj)
    assert offenders == [], "\n".join(offenders)
