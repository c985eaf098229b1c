"""``python -m bench.stress``: see :mod:`bench.stress`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import django

from bench.stress.checks import Check, judge
from bench.stress.config import CI, DOWN, FULL, SLOW, SLOW_MS, Config
from bench.stress.run import StressRun
from examples.stack import ROOT, StackError

TTY = sys.stdout.isatty()
GREEN, YELLOW, RED, BOLD, RESET = (
    ("\033[32m", "\033[33m", "\033[31m", "\033[1m", "\033[0m") if TTY else ("",) * 5
)
PYTEST_MARK = "stress"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__)
    parser.add_argument("--ci", action="store_true", help="the bounded configuration CI runs")
    parser.add_argument("--duration", type=float, help="seconds of load")
    parser.add_argument("--concurrency", type=int, help="concurrent connections")
    parser.add_argument("--no-pytest", action="store_true", help=f"skip pytest -m {PYTEST_MARK}")
    parser.add_argument("--dump", type=Path, help="write every response's sample there (JSON)")
    args = parser.parse_args(argv)
    config = CI if args.ci else FULL
    if args.duration:
        config = replace(config, duration=args.duration)
    if args.concurrency:
        config = replace(config, concurrency=args.concurrency)
    print(f"{BOLD}patchboard stress ({config.name}){RESET}: {describe(config)}", flush=True)
    started = time.monotonic()
    try:
        observed = StressRun(config, progress=Progress()).run()
    except StackError as exc:
        print(f"\n{RED}the stack did not start{RESET}: {exc}", file=sys.stderr)
        return 1
    checks = judge(observed)
    if args.dump:
        args.dump.write_text(json.dumps([dataclasses.asdict(s) for s in observed.load.samples]))
    if not args.no_pytest:
        checks.append(engine_tests())
    print("\r\033[K" if TTY else "", end="")
    print(report(checks, time.monotonic() - started))
    return 0 if all(check.passed or check.known for check in checks) else 1


def describe(config: Config) -> str:
    return (
        f"{config.concurrency} connections for {config.duration:g} s on the shop under uvicorn "
        f"--workers {config.shop_workers}, breakers in Redis; {DOWN} down (503), {SLOW} slow "
        f"({SLOW_MS} ms), gls sync in a listener thread"
    )


class Progress:
    """One line, rewritten in place on a terminal; every 5 s otherwise (CI logs)."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, text: str) -> None:
        if TTY:
            print(f"\r\033[K  {text}", end="", flush=True)
        elif time.monotonic() - self.last >= 5:
            self.last = time.monotonic()
            print(f"  {text}", flush=True)


def engine_tests() -> Check:
    """The real Tasks engines and the hostile-input tests: ``pytest -m stress``."""
    print(f"\r\033[K  pytest -m {PYTEST_MARK} ..." if TTY else "  pytest ...", end="", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", PYTEST_MARK],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else done.stderr.strip()[-200:]
    if done.returncode != 0:
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
        summary += "".join(f"\n      {line}" for line in failed[:5])
    return Check(
        f"real Tasks engines, hostile input (pytest -m {PYTEST_MARK})",
        done.returncode == 0,
        summary,
    )


def report(checks: list[Check], elapsed: float) -> str:
    width = max(len(check.label) for check in checks)
    lines = [""]
    for check in checks:
        mark = f"{GREEN}pass{RESET}" if check.passed else f"{RED}FAIL{RESET}"
        if check.known:
            mark = f"{YELLOW}KNWN{RESET}"
        lines.append(f"  {mark}  {check.label:<{width}}  {check.figures}")
        if check.known:
            lines.append(f"        {'':<{width}}  a known defect, pinned by {check.known}")
    passed = sum(check.passed for check in checks)
    known = sum(bool(check.known) for check in checks)
    colour = GREEN if passed == len(checks) else YELLOW if passed + known == len(checks) else RED
    lines.append(
        f"\n{colour}{BOLD}{passed}/{len(checks)} checks passed{RESET}"
        + (f", {known} failed as a known defect does" if known else "")
        + f" in {elapsed:.0f} s (Python {platform.python_version()}, "
        f"Django {django.get_version()}, {os.cpu_count()} cores)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
