"""
Django's own ``dispatch`` and ``signals`` test suites, run with
``patchboard.Signal`` in place of ``django.dispatch.Signal``: the proof that
it is a drop-in.

The script fetches the sdist of the *installed* Django with pip (cached in
``.cache/django-sdist/``, so reruns need no network), extracts its ``tests/``
directory to a temporary directory and runs ``tests/runtests.py dispatch
signals`` in a child process of the same Python (``sys.executable``: run it
with each virtualenv's Python to test each Django). Before anything else of
Django is imported there, the child replaces ``Signal`` in both
``django.dispatch`` and ``django.dispatch.dispatcher``, so every signal Django
defines afterwards (``ModelSignal``, ``post_save``, ``class_prepared``, the
test modules' own ``Signal()``s) is a patchboard signal. The few signals that
importing patchboard itself creates first (``django.core.signals``) are
turned into patchboard signals in place. The child checks both and says so.

Usage::

    python tests/django_suite.py [runtests.py options, e.g. -v 2 or --failfast]

Exits 0 when every test passed, 1 when one failed or the swap did not take
effect, 2 when Django's sdist could not be fetched.
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
INSIDE = "--inside-django-tests"


# -- the driver ------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv[:1] == [INSIDE]:
        return _inside(Path(argv[1]), argv[2:])

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
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            INSIDE,
            str(tests_dir),
            "--parallel=1",
            *argv,
            *LABELS,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        print(f"django-suite: running {' '.join(LABELS)} of {where}", flush=True)
        output: list[str] = []
        with subprocess.Popen(
            command,
            cwd=tests_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as child:
            assert child.stdout is not None
            for line in child.stdout:
                sys.stdout.write(line)
                output.append(line)
        returncode = child.returncode

    return _summarize("".join(output), returncode, where)


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


def _summarize(output: str, returncode: int, where: str) -> int:
    """Print the summary line; the exit status: 0 only if every test ran and passed."""
    ran = re.search(r"^Ran (\d+) tests? in ", output, re.MULTILINE)
    verdict = re.search(r"^(OK|FAILED)(?: \((.*)\))?\s*$", output, re.MULTILINE)
    swapped = "patchboard swap: OK" in output
    counts = {"failures": 0, "errors": 0, "skipped": 0, "expected failures": 0}
    if verdict and verdict.group(2):
        for part in verdict.group(2).split(", "):
            key, _, value = part.partition("=")
            counts[key.replace("_", " ")] = int(value)
    total = int(ran.group(1)) if ran else 0
    passed = total - counts["failures"] - counts["errors"] - counts["skipped"]
    ok = returncode == 0 and swapped and total > 0 and verdict and verdict.group(1) == "OK"
    status = "PASSED" if ok else "FAILED"
    detail = (
        f"{total} tests: {passed} passed, {counts['failures']} failures, "
        f"{counts['errors']} errors, {counts['skipped']} skipped"
    )
    if not swapped:
        detail += "; the Signal swap did not take effect"
    elif returncode != 0 and total == 0:
        detail += f"; runtests.py exited {returncode} before running any test"
    print(f"\ndjango-suite: {status}: Django's {'+'.join(LABELS)} suites with patchboard.Signal")
    print(f"django-suite: {status}: {where}: {detail}")
    return 0 if ok else 1


# -- the child: swap, check, then run Django's runtests.py ---------------------------------


def _inside(tests_dir: Path, runtests_args: list[str]) -> int:
    import runpy

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

    runtests = tests_dir / "runtests.py"
    sys.argv = [str(runtests), *runtests_args]
    sys.path[0] = str(tests_dir)
    try:
        runpy.run_path(str(runtests), run_name="__main__")
    except SystemExit as exc:
        returncode = exc.code if isinstance(exc.code, int) else 1
    else:
        returncode = 0
    # The test modules' own signals (``a_signal = Signal()``) must have been patchboard's.
    tested = sys.modules.get("dispatch.tests")
    if tested is not None and not isinstance(tested.a_signal, patchboard.Signal):
        print("patchboard swap: FAILED: dispatch.tests.a_signal is not a patchboard.Signal")
        return 1
    return returncode


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
