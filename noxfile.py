"""
The supported-versions matrix: ``make matrix`` (``nox``) runs the suite on every
Python and Django that pyproject.toml's classifiers name, and on no other.

Each session builds a virtualenv of its own (``.nox/``) with the Python it names,
installs the project with the ``test`` group's exact pins, then the Django of the
session over them (the ``django52`` or ``django60`` group; Django 6.1 is the
``test`` group's own), and runs pytest as ``make pytest`` does (Django 6) or as
``make pytest-django52`` does (Django 5.2 LTS). Arguments after ``--`` go to
pytest: ``make test`` runs two sessions, Python 3.13 with Django 5.2 LTS, and
Python 3.12 with Django 6.0 with ``-m "not stress"`` and without the browser
tests and tests/harness.

Python is found as the Makefile finds it: pyenv's installs first, then ``PATH``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

PYTHONS = ["3.12", "3.13"]
DJANGOS = {"5.2": "django52", "6.0": "django60", "6.1": None}
"""
The matrix: each Django with the dependency group installed over ``test`` for it
(``None``: ``test``'s own). tests/structure/test_package.py holds the classifiers to it.
"""

DJANGO52_IGNORES = [
    # Django 6 only, or they need the `demo` and `stress` groups (httpx, uvicorn, RQ),
    # which Django 5.2 sessions do not install (RQ's Tasks backend is Django 6 only):
    # the Tasks engines' tests, and the harness's own (the example, the bench and
    # stress tools), whatever their Django.
    "tests/background/test_engines.py",
    "tests/background/test_outbox_engines.py",
    "tests/harness",
]

# tests/package builds and installs the wheel once, under `make pytest`; a session
# has no `release` group to build it with.
ALWAYS_IGNORED = ["tests/package"]

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True


def _put_pyenv_first() -> None:
    """pyenv's interpreters before ``PATH``'s, without its shims (they fail unless selected)."""
    versions = Path.home() / ".pyenv" / "versions"
    found = []
    for python in PYTHONS:
        # Its releases, newest first (3.12.10 before 3.12.9), not its free-threaded builds.
        releases = [p for p in versions.glob(f"{python}.*") if re.fullmatch(r"[\d.]+", p.name)]
        releases.sort(key=lambda p: [int(part) for part in p.name.split(".")], reverse=True)
        found += [str(p / "bin") for p in releases if (p / "bin" / f"python{python}").exists()]
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_put_pyenv_first()


@nox.session(python=PYTHONS)
@nox.parametrize("django", list(DJANGOS))
def tests(session: nox.Session, django: str) -> None:
    """pytest on one Python and one Django."""
    session.install("--upgrade", "pip>=25.1")  # dependency groups (--group)
    groups = ["test"] if django == "5.2" else ["test", "demo", "stress"]
    session.install("-e", ".", *(arg for group in groups for arg in ("--group", group)))
    if (extra := DJANGOS[django]) is not None:
        session.install("--group", extra)
    ignores = ALWAYS_IGNORED + (DJANGO52_IGNORES if django == "5.2" else [])
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        *(f"--ignore={path}" for path in ignores),
        *session.posargs,
    )
