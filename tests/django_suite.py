"""
Django's own test suites with ``patchboard.Signal`` swapped in for
``django.dispatch.Signal``: the proof that it is a drop-in.

The script fetches the sdist of the *installed* Django with pip (cached in
``.cache/django-sdist/``, so reruns need no network), extracts its ``tests/``
directory to a temporary directory and runs ``tests/runtests.py`` twice, in
child processes of the same Python (``sys.executable``: run it with each
virtualenv's Python to test each Django): once as it is (the baseline), once
with the swap. Before anything else of Django is imported there, the swapped
child replaces ``Signal`` in both ``django.dispatch`` and
``django.dispatch.dispatcher``, so every signal Django defines afterwards
(``ModelSignal``, ``post_save``, ``class_prepared``, the test modules' own
``Signal()``s) is a patchboard signal. The few signals that importing
patchboard itself creates first (``django.core.signals``) are turned into
patchboard signals in place. The child checks both and says so.

Two selections of Django's test modules run:

``LABELS`` (``dispatch``, ``signals``)
    must pass entirely with the swap;
``WIDER`` (model signals, deletion, fixtures, settings, the ASGI handler, ...)
    must give, test by test, the same results with the swap as without it
    (a test that the baseline skips or fails on this machine is not held
    against the swap).

Usage::

    python tests/django_suite.py [runtests.py options, e.g. --failfast]

Exits 0 when both hold, 1 when a test fails only with the swap (or the swap
did not take effect), 2 when Django's sdist could not be fetched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "django-sdist"
LABELS = ("dispatch", "signals")
WIDER = (
    "invalid_models_tests",
    "settings_tests",
    "m2m_signals",
    "delete",
    "delete_regress",
    "model_inheritance",
    "fixtures",
    "migrate_signals",
    "asgi",
    "handlers",
    "test_client",
)
INSIDE = "--inside-django-tests"
RESULT = re.compile(
    r"^\w+ \(([\w.]+)\)(?:\n[^\n]*?)?? \.\.\. "
    r"(ok|FAIL|ERROR|skipped|expected failure|unexpected success)",
    re.MULTILINE,
)
"""A verbose result line of runtests.py (a docstring may take a line of its own)."""


# -- the driver ------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv[:1] == [INSIDE]:
        return _inside(Path(argv[1]), swap=argv[2] == "swap", runtests_args=argv[3:])

    import django

    version = django.__version__
    where = f"Django {version} (Python {sys.version.split()[0]}, {sys.executable})"
    try:
        sdist = _sdist(version)
    except RuntimeError as exc:
        print(f"django-suite: ERROR {where}: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="patchboard-django-suite-") as tmp:
        tests_dir = _extract_tests(sdist, Path(tmp))
        print(f"django-suite: {where}: {len(LABELS) + len(WIDER)} test modules", flush=True)
        baseline = _run(tests_dir, "baseline", argv)
        swapped = _run(tests_dir, "swap", argv)
    return _verdict(baseline, swapped, where)


def _run(tests_dir: Path, mode: str, argv: list[str]) -> str:
    """Run runtests.py over every module in a child process; its whole output."""
    command = [
        sys.executable,
        # -P: not this script's folder first on sys.path, where tests/queue
        # would shadow the standard library's queue.
        "-P",
        str(Path(__file__).resolve()),
        INSIDE,
        str(tests_dir),
        mode,
        "--parallel=2",
        "-v",
        "2",
        *argv,
        *LABELS,
        *WIDER,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    print(f"django-suite: {mode} run ...", flush=True)
    done = subprocess.run(
        command, cwd=tests_dir, env=env, capture_output=True, text=True, check=False
    )
    output = done.stdout + done.stderr
    for line in output.splitlines():
        if line.startswith(("patchboard swap:", "Ran ", "OK", "FAILED")):
            print(f"  {line}")
    return output


def _results(output: str) -> dict[str, str]:
    """Each test's result, by its dotted id."""
    return {test: result for test, result in RESULT.findall(output)}


def _verdict(baseline_output: str, swapped_output: str, where: str) -> int:
    """Compare the two runs; print the verdict; the exit status."""
    baseline, swapped = _results(baseline_output), _results(swapped_output)
    problems: list[str] = []
    if "patchboard swap: OK" not in swapped_output:
        problems.append("the Signal swap did not take effect")
    if not baseline or not swapped:
        problems.append("a run reported no test results")
    for test in sorted(set(baseline) | set(swapped)):
        before, after = baseline.get(test, "missing"), swapped.get(test, "missing")
        must_pass = test.split(".")[0] in LABELS
        if must_pass and after not in ("ok", "skipped"):
            problems.append(f"{test}: {after} with the swap")
        elif before == "ok" and after != "ok":
            problems.append(f"{test}: ok without the swap, {after} with it")
    counts = {}
    for result in swapped.values():
        counts[result] = counts.get(result, 0) + 1
    summary = ", ".join(f"{n} {result}" for result, n in sorted(counts.items()))
    for problem in problems:
        print(f"django-suite: FAILED: {problem}")
    status = "FAILED" if problems else "PASSED"
    print(
        f"django-suite: {status}: {where}: {len(swapped)} tests with patchboard.Signal "
        f"({summary}); {'+'.join(LABELS)} all pass; the {len(WIDER)} wider modules give "
        f"the same results as without the swap"
    )
    return 1 if problems else 0


def _sdist(version: str) -> Path:
    """The cached sdist of Django ``version``, downloaded with pip on first use."""
    found = _cached(version)
    if found is not None:
        return found
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"django-suite: downloading the Django {version} sdist to {CACHE}", flush=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"django=={version}",
        "-d",
        str(CACHE),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    found = _cached(version)
    if result.returncode != 0 or found is None:
        raise RuntimeError(
            f"pip could not download the Django {version} sdist "
            f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return found


def _cached(version: str) -> Path | None:
    """The cached sdist (``django-X.tar.gz`` or ``Django-X.tar.gz``), if it is readable."""
    if not CACHE.is_dir():
        return None
    wanted = f"django-{version}.tar.gz"
    for path in CACHE.iterdir():
        if path.name.lower() == wanted:
            try:
                with tarfile.open(path) as archive:
                    archive.getmember(f"{path.name[: -len('.tar.gz')]}/tests/runtests.py")
            except (tarfile.TarError, KeyError, OSError):
                path.unlink()  # Truncated or foreign: download it again.
                return None
            return path
    return None


def _extract_tests(sdist: Path, into: Path) -> Path:
    """Extract the sdist's ``tests/`` directory (not Django's source) into ``into``."""
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.split("/")[1:2] == ["tests"]]
        archive.extractall(into, members=members, filter="data")
    (tests_dir,) = into.glob("*/tests")
    return tests_dir


# -- the child: swap, check, then run Django's runtests.py ---------------------------------


def _inside(tests_dir: Path, *, swap: bool, runtests_args: list[str]) -> int:

    if not swap:
        return _runtests(tests_dir, runtests_args)

    import django.dispatch
    import django.dispatch.dispatcher

    original = django.dispatch.dispatcher.Signal
    if "django.db.models.signals" in sys.modules:
        print("patchboard swap: FAILED: django.db.models.signals was imported too early")
        return 1
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # If patchboard is not installed in this environment.

    import patchboard

    if "django.db.models.signals" in sys.modules:
        print(
            "patchboard swap: FAILED: importing patchboard imported django.db.models.signals, "
            "so ModelSignal subclasses Django's Signal; patchboard must not import models"
        )
        return 1
    django.dispatch.Signal = patchboard.Signal  # type: ignore[misc]
    django.dispatch.dispatcher.Signal = patchboard.Signal  # type: ignore[misc]
    converted = _convert_existing(original, patchboard.Signal)

    import django.core.signals
    import django.db.models.signals

    checks = {
        "issubclass(ModelSignal, patchboard.Signal)": issubclass(
            django.db.models.signals.ModelSignal, patchboard.Signal
        ),
        "isinstance(post_save, patchboard.Signal)": isinstance(
            django.db.models.signals.post_save, patchboard.Signal
        ),
        "isinstance(class_prepared, patchboard.Signal)": isinstance(
            django.db.models.signals.class_prepared, patchboard.Signal
        ),
        "django.core.signals are patchboard signals": all(
            isinstance(value, patchboard.Signal)
            for value in vars(django.core.signals).values()
            if isinstance(value, original)
        ),
        "django.dispatch.Signal is patchboard.Signal": (
            django.dispatch.Signal is patchboard.Signal
            and django.dispatch.dispatcher.Signal is patchboard.Signal
        ),
    }
    for check, held in checks.items():
        print(f"patchboard swap: {'ok' if held else 'FAILED'}: {check}")
    if converted:
        print(f"patchboard swap: converted in place: {', '.join(sorted(converted))}")
    if not all(checks.values()):
        return 1
    print("patchboard swap: OK", flush=True)
    returncode = _runtests(tests_dir, runtests_args)
    # The test modules' own signals (``a_signal = Signal()``) must have been patchboard's.
    tested = sys.modules.get("dispatch.tests")
    if tested is not None and not isinstance(tested.a_signal, patchboard.Signal):
        print("patchboard swap: FAILED: dispatch.tests.a_signal is not a patchboard.Signal")
        return 1
    return returncode


def _runtests(tests_dir: Path, runtests_args: list[str]) -> int:
    import runpy

    runtests = tests_dir / "runtests.py"
    sys.argv = [str(runtests), *runtests_args]
    sys.path[0] = str(tests_dir)
    try:
        runpy.run_path(str(runtests), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _convert_existing(original: type, replacement: type) -> list[str]:
    """
    Turn the Django signals created before the swap into ``replacement``s.

    Importing patchboard imports ``django.core.signals`` (and with it
    ``django.db``), whose signals are then plain Django signals; they get
    ``replacement``'s class and the attributes its ``__init__`` adds.
    """
    converted = []
    for module_name, module in list(sys.modules.items()):
        for name, value in list(vars(module).items()):
            if type(value) is not original:
                continue
            fresh = replacement(use_caching=value.use_caching)
            for attribute, default in vars(fresh).items():
                if attribute not in vars(value):
                    setattr(value, attribute, default)
            value.__class__ = replacement
            converted.append(f"{module_name}.{name}")
    return converted


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
