"""
``make demo`` and ``make serve``: the example shop, its carriers and the Tasks
worker, on loopback ports.

    python -m examples.demo           the scripted walkthrough (examples/walkthrough.py);
                                      exits 0 only if every step behaved as described
    python -m examples.demo --serve   leaves the stack running for curl, the admin and
                                      the status page, with a staff user, until Ctrl-C

Whatever happens (a failed step, Ctrl-C, SIGTERM), every process started here
is stopped before the command returns. ``--serve`` runs until it is stopped:
Ctrl-C or SIGTERM, to it or to a process of the stack (a service manager
stopping the whole tree), ends it with "stopped" and exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import FrameType

from examples.processes import ROOT, STOP_SIGNALS, StackError
from examples.stack import Stack
from examples.walkthrough import Step, Walkthrough, format_event

TTY = sys.stdout.isatty()
GREEN, RED, BOLD, DIM, RESET = (
    ("\033[32m", "\033[31m", "\033[1m", "\033[2m", "\033[0m") if TTY else ("",) * 5
)
EVENTS_SHOWN = 3
"""Per event name and step; the rest are counted."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__)
    parser.add_argument("--serve", action="store_true", help="leave the stack running")
    parser.add_argument(
        "--port", type=int, default=8000, help="--serve: the shop's port (carriers: port + 1)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    try:
        return serve(args.port) if args.serve else demo()
    except KeyboardInterrupt:
        stop: Stop = Stop(signal.SIGINT)
    except Stop as raised:
        stop = raised
    except StackError as exc:
        print(f"{RED}the stack did not start{RESET}: {exc}", file=sys.stderr)
        return 1
    # A stop signal is how --serve is meant to end: not a failure (make would say
    # "Error 143"). The walkthrough did not finish: 128 + the signal, as a shell says.
    print(
        f"\n{BOLD}{'stopped' if args.serve else 'interrupted'}{RESET} ({stop}): "
        "everything it started is stopped",
        file=sys.stderr,
    )
    return 0 if args.serve else 128 + stop.signum


class Stop(SystemExit):
    """
    A stop signal arrived (``by``: the process of the stack it ended, if not
    this one). A ``SystemExit`` (with 128 + the signal, should nothing catch
    it): it unwinds through the stack's ``with``, which stops every process.
    """

    def __init__(self, signum: int, by: str | None = None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.by = by

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        return name if self.by is None else f"{self.by} got {name}"


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stop(signum)


def demo() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="patchboard-demo-"))
    started = time.monotonic()
    print(f"{BOLD}Starting{RESET} the carriers, the shop (uvicorn) and the Tasks worker ...")
    with Stack(workdir) as stack:
        print(
            f"  carriers {stack.carriers_url}   shop {stack.shop_url}   "
            f"worker db_worker   (up in {time.monotonic() - started:.1f} s)"
        )
        walkthrough = Walkthrough(stack, progress=Progress())
        total, numbers = len(walkthrough.STEPS), itertools.count(1)
        steps = asyncio.run(
            walkthrough.run(
                on_start=lambda step: print(
                    f"\n{BOLD}[{next(numbers)}/{total}] {step.title}{RESET}", flush=True
                ),
                on_end=show,
            )
        )
    passed = sum(step.passed for step in steps)
    elapsed = time.monotonic() - started
    if passed == total:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"\n{GREEN}{BOLD}All {total} steps behaved as described{RESET} ({elapsed:.1f} s).")
        return 0
    print(
        f"\n{RED}{BOLD}{passed} of {total} steps behaved as described{RESET} ({elapsed:.1f} s); "
        f"the processes' logs are in {workdir}"
    )
    return 1


def show(step: Step) -> None:
    """A finished step: its table, its checks and the interesting log lines."""
    Progress.clear()
    print_table(step.columns, step.rows)
    for check in step.checks:
        mark = f"{GREEN}✓{RESET}" if check.passed else f"{RED}✗{RESET}"
        print(f"  {mark} {check.label}" + (f": {check.detail[:2000]}" if check.detail else ""))
    seen: Counter[str] = Counter()
    for event in step.events:
        seen[event["event"]] += 1
        if seen[event["event"]] <= EVENTS_SHOWN:
            print(f"  {DIM}{format_event(event)}{RESET}")
    for name, count in seen.items():
        if count > EVENTS_SHOWN:
            print(f"  {DIM}... and {count - EVENTS_SHOWN} more {name}{RESET}")
    sys.stdout.flush()


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [len(c) for c in columns]
    for row in rows:
        if len(row) == len(columns):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [columns, *rows]:
        if len(row) == len(columns):
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        else:
            cells = row  # a note across the table
        print(f"  {'  '.join(cells)}".rstrip())


class Progress:
    """One line that says what a step is waiting for: rewritten in place on a terminal."""

    shown = False

    def __call__(self, text: str) -> None:
        if TTY:
            sys.stdout.write(f"\r\033[K  {DIM}... {text}{RESET}")
            sys.stdout.flush()
            Progress.shown = True
        elif not Progress.shown:
            print(f"  ... {text}", flush=True)
            Progress.shown = True

    @staticmethod
    def clear() -> None:
        if TTY and Progress.shown:
            sys.stdout.write("\r\033[K")
        Progress.shown = False


def serve(port: int) -> int:
    with Stack(ROOT / "examples", json_logs=False, shop_port=port, carriers_port=port + 1) as stack:
        password = secrets.token_urlsafe(9)
        stack.create_staff_user("staff", password)
        shop, carriers = stack.shop_url, stack.carriers_url
        breakers = os.environ.get("SHOP_BREAKERS", "on") != "off"
        commands = [
            (f"curl '{shop}/quotes?cart=3'", ""),
            (f"curl '{shop}/quotes/first?cart=3'", "the first quote wins"),
            (f"curl '{shop}/quotes/fedex?cart=3'", "one carrier: its circuit keyed by the call"),
            (
                f"curl -X POST {carriers}/control/dhl -d '{{\"latency_ms\": 3000}}'",
                "slow: a timeout",
            ),
            (
                f"curl -X POST {carriers}/control/fedex -d '{{\"fail_rate\": 1}}'",
                "down: its circuit, carriers[fedex], opens"
                if breakers
                else "down: every call errs (breakers off)",
            ),
            (f"curl -X POST {carriers}/reset", "every carrier healthy"),
            (f"curl {carriers}/stats", ""),
            (f'curl -X POST {shop}/orders -d \'{{"cart": 3, "total": "42.50"}}\'', ""),
            (f"curl {shop}/orders/1", ""),
        ]
        width = max(len(command) for command, why in commands if why)
        examples = "\n".join(
            f"  {command:<{width}}  # {why}" if why else f"  {command}" for command, why in commands
        )
        print(
            f"""
{BOLD}The example shop is running{RESET} (Ctrl-C stops everything).
  shop          {shop}
  admin         {shop}/admin/
                staff user {BOLD}staff{RESET}, password {BOLD}{password}{RESET}
  status page   {shop}/patchboard/
  carriers      {carriers}
  database      {stack.database or stack.workdir / "shop.sqlite3"}
  breakers      {"on: carriers, a circuit per carrier" if breakers else "off (SHOP_BREAKERS=off)"}

{examples}
""",
            flush=True,
        )
        while True:
            for service in stack.services:
                # A stop signal that reached a process of the stack: someone stops it all
                # (a service manager signals the whole tree, and ours may come last).
                code = service.process.poll()
                if code is not None and -code in STOP_SIGNALS:
                    raise Stop(-code, by=service.name)
            try:
                stack.check_alive()
            except StackError as exc:
                print(f"{RED}the stack stopped{RESET}: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
