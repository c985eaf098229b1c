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
from datetime import UTC, datetime
from pathlib import Path

import django

from bench.stress.checks import Check, judge
from bench.stress.config import CI, DOWN, FULL, SLOW, SLOW_MS, Config
from bench.stress.run import StressRun
from examples.processes import ROOT, StackError

TTY = sys.stdout.isatty()
COLOURS = ("\033[32m", "\033[33m", "\033[31m", "\033[1m", "\033[0m")
PLAIN = ("",) * 5
GREEN, YELLOW, RED, BOLD, RESET = COLOURS if TTY else PLAIN
PYTEST_MARK = "stress"
PUBLISHED = ROOT / "bench" / "STRESS.md"
"""The full run's report and how to read it; ``make bench`` copies it into BENCHMARKS.md."""
TEMPLATE = Path(__file__).with_name("STRESS.md.template")


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
        print(f"\n{RED}the stack failed{RESET}: {exc}", file=sys.stderr)
        return 1
    checks = judge(observed)
    if args.dump:
        args.dump.write_text(json.dumps([dataclasses.asdict(s) for s in observed.load.samples]))
    if not args.no_pytest:
        checks.append(engine_tests())
    print("\r\033[K" if TTY else "", end="")
    elapsed = time.monotonic() - started
    print(report(checks, elapsed))
    if config == FULL and not args.no_pytest:
        publish(checks, elapsed, argv)
    return 0 if all(check.passed for check in checks) else 1


def publish(checks: list[Check], elapsed: float, argv: list[str] | None) -> None:
    """Write the full run's report to bench/STRESS.md (no colours), with when and how busy."""
    plain = report(checks, elapsed, colours=PLAIN).strip("\n")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python -m bench.stress", *(argv or sys.argv[1:])])
    stamp = f"_`{command}`, {when}, load average {os.getloadavg()[0]:.2f} at the end._"
    PUBLISHED.write_text(TEMPLATE.read_text().format(stamp=stamp, report=plain))
    print(f"written to {PUBLISHED.relative_to(ROOT)}")


def describe(config: Config) -> str:
    return (
        f"{config.concurrency} connections for {config.duration:g} s on the shop under uvicorn "
        f"--workers {config.shop_workers}, breakers in Redis; {DOWN} down (503), {SLOW} slow "
        f"({SLOW_MS} ms), gls sync in a listener thread; an order every {config.order_every:g} s, "
        "its background calls through the outbox to RQ"
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


def report(
    checks: list[Check],
    elapsed: float,
    colours: tuple[str, ...] = (GREEN, YELLOW, RED, BOLD, RESET),
) -> str:
    green, _, red, bold, reset = colours
    width = max(len(check.label) for check in checks)
    lines = [""]
    for check in checks:
        mark = f"{green}pass{reset}" if check.passed else f"{red}FAIL{reset}"
        lines.append(f"  {mark}  {check.label:<{width}}  {check.figures}")
    passed = sum(check.passed for check in checks)
    colour = green if passed == len(checks) else red
    lines.append(
        f"\n{colour}{bold}{passed}/{len(checks)} checks passed{reset}"
        + f" in {elapsed:.0f} s (Python {platform.python_version()}, "
        f"Django {django.get_version()}, {os.cpu_count()} cores)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
