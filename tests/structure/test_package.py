"""The package's metadata says what the matrix runs, and its version has one source."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

import patchboard

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _noxfile_constant(name: str) -> Any:
    """A literal assigned at the noxfile's top level (read, not imported: nox may be absent)."""
    for node in ast.parse((ROOT / "noxfile.py").read_text()).body:
        if isinstance(node, ast.Assign) and [
            t.id for t in node.targets if isinstance(t, ast.Name)
        ] == [name]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"noxfile.py assigns no {name}")


def _classified(prefix: str) -> list[str]:
    pattern = re.compile(rf"^{re.escape(prefix)} :: (\d+\.\d+)$")
    return [m[1] for c in PROJECT["classifiers"] if (m := pattern.match(c))]


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def test_the_python_classifiers_are_the_matrix_pythons() -> None:
    pythons = _noxfile_constant("PYTHONS")
    assert _classified("Programming Language :: Python") == pythons
    assert PROJECT["requires-python"] == f">={min(pythons, key=_minor)}"


def test_the_django_classifiers_are_the_matrix_djangos() -> None:
    assert _classified("Framework :: Django") == list(_noxfile_constant("DJANGOS"))


def test_the_django_range_admits_the_matrix_djangos_and_no_other_minor() -> None:
    djangos = sorted(_noxfile_constant("DJANGOS"), key=_minor)
    (requirement,) = [d for d in PROJECT["dependencies"] if re.match(r"django\b", d, re.I)]
    lowest, highest = _minor(djangos[0]), _minor(djangos[-1])
    assert requirement == f"django>={lowest[0]}.{lowest[1]},<{highest[0]}.{highest[1] + 1}"


def test_the_version_is_read_from_the_package() -> None:
    assert "version" not in PROJECT
    assert PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "patchboard/_version.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+", patchboard.__version__)


def test_the_changelog_starts_with_this_release() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\]", changelog, re.MULTILINE)
    assert releases[:2] == ["Unreleased", patchboard.__version__]
