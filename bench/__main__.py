"""
``python -m bench`` (``make bench``): every benchmark, as markdown tables.

Runs :mod:`bench.bench_dispatch`, then ``bench.bench_queue`` and
``bench.bench_breaker`` when they exist, prints their tables and writes them
all to ``bench/results/latest.md``. ``--quick`` asks for a rough run of the
benchmarks that support it. Not a test: nothing is asserted.
"""

from __future__ import annotations

import importlib
import inspect
import io
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
BENCHMARKS = ("bench.bench_dispatch", "bench.bench_queue", "bench.bench_breaker")


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, terminal: TextIO) -> None:
        self.terminal = terminal
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.terminal.write(text)
        return self.copy.write(text)

    def flush(self) -> None:
        self.terminal.flush()


def _run(module_name: str, quick: bool) -> str:
    """Run one benchmark's ``main()``; what it printed (or returned), or a note."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        note = f"_{module_name}: not present, skipped._"
        print(note)
        return note
    main = module.main
    accepts_quick = "quick" in inspect.signature(main).parameters
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        returned: Any = main(quick=quick) if accepts_quick else main()
    finally:
        sys.stdout = tee.terminal
    printed = tee.copy.getvalue().strip()
    if isinstance(returned, str) and returned.strip():
        # The markdown the benchmark returned is its section; print it if it did not.
        if returned.strip() not in printed:
            print(returned)
        return returned.strip()
    return printed


def main(argv: list[str]) -> int:
    from bench.bench_dispatch import setup_django

    quick = "--quick" in argv
    setup_django()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    sections = [
        f"# patchboard benchmarks\n\n{started}, {platform.platform()}, "
        f"{platform.python_implementation()} {platform.python_version()}"
        + (" (--quick)" if quick else "")
    ]
    failed = False
    for module_name in BENCHMARKS:
        try:
            sections.append(_run(module_name, quick))
        except Exception:
            failed = True
            text = traceback.format_exc()
            print(text, file=sys.stderr)
            sections.append(f"_{module_name} failed:_\n\n```\n{text}```")
        print()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    print(f"written to {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
