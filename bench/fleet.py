"""
``python -m bench.fleet`` (``make fleet``): the example shop under load, as
Prometheus sees it, drawn as a Grafana-like dashboard (``docs/fleet-under-load.png``).

The example's stack (:class:`~examples.stack.Stack`) with the shop under
``uvicorn --workers 2`` and prometheus_client's multiprocess directory;
locust loads it with ``bench/locustfile.py``; one carrier (dhl) hangs for a
while in the middle of the run, through the carriers' ``/control``
endpoint, so its circuit opens in each worker and the short-term queue
holds the calls that wait on it. ``/metrics`` is scraped every second into
a scrape file (:mod:`bench.scrapes`); the dashboard is drawn from that file
alone, each panel computed as the README's PromQL would.

Not part of ``make test`` or ``make bench``. locust is not a dependency:
install it in a virtualenv of its own and point ``PATCHBOARD_LOCUST`` at its
``locust`` (or put it on ``PATH``)::

    python3 -m venv /tmp/locust-venv && /tmp/locust-venv/bin/pip install locust==2.47.0
    PATCHBOARD_LOCUST=/tmp/locust-venv/bin/locust make fleet
    .venv/bin/python -m bench.fleet --render bench/results/fleet/scrapes.jsonl  # redraw only
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import plots, scrapes
from examples.carriers.app import LATENCY_MS
from examples.processes import ROOT, StackError, start_process
from examples.stack import Stack

PNG = ROOT / "docs" / "fleet-under-load.png"
RESULTS = ROOT / "bench" / "results" / "fleet"
LOCUSTFILE = ROOT / "bench" / "locustfile.py"
LOCUST_VARIABLE = "PATCHBOARD_LOCUST"
SIGNAL = "shop.quote_requested"
FAULTY = "dhl"
HANG_MS = 60_000
"""Far past the shop's 1 s carrier timeout: every call to it times out until its circuit opens."""
RESET_TIMEOUT = "5"
"""Seconds an open carrier circuit waits before a probe (the demo's 3 s, a little longer)."""
WINDOW = 5.0
"""The ``[5s]`` of the panels' ``rate()``: five scrapes (the README's ``[5m]``, for a short run)."""
SCRAPE_EVERY = 1.0
DURATION = 60.0
USERS = 10
"""locust's users by default: on 2 cores, more starve the healthy carriers' calls too."""
STATUS_COLOURS = {
    "ok": "#73bf69",
    "circuit_open": "#ff9830",
    "timeout": "#f2495c",
    "expired": "#b877d9",
    "error": "#c4162a",
    "rejected": "#8e8e9a",
    "cancelled": "#5794f2",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How long the load lasts, how many locust users, and when the fault starts and ends."""

    duration: float = DURATION
    users: int = USERS
    fault_at: float = 15.0
    fault_until: float = 40.0

    def __post_init__(self) -> None:
        if not 0 < self.fault_at < self.fault_until < self.duration:
            raise ValueError(
                "the fault must start and end within the run (0 < fault_at < fault_until < "
                f"duration), got {self.fault_at} s, {self.fault_until} s and {self.duration} s"
            )
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users!r}")


def find_locust() -> str:
    """
    The ``locust`` executable: ``PATCHBOARD_LOCUST``, or ``locust`` on PATH.

    Raises:
        StackError: neither is there; the message says how to install it.
    """
    chosen = os.environ.get(LOCUST_VARIABLE)
    found = shutil.which(chosen) if chosen else shutil.which("locust")
    if found is None:
        where = (
            f"{LOCUST_VARIABLE}={chosen!r} is not an executable"
            if chosen
            else (f"locust is not on PATH and {LOCUST_VARIABLE} is not set")
        )
        raise StackError(
            f"{where}: install it in a virtualenv of its own "
            "(python3 -m venv /tmp/locust-venv && /tmp/locust-venv/bin/pip install locust==2.47.0) "
            f"and run with {LOCUST_VARIABLE}=/tmp/locust-venv/bin/locust"
        )
    return found


def run(plan: Plan, out: Path, locust: str) -> Path:
    """
    Serve the shop, load it with locust for ``plan.duration`` seconds with the
    fault on schedule, and scrape ``/metrics`` every second into
    ``out/scrapes.jsonl`` (locust's statistics beside it); the scrape file.

    Raises:
        StackError: a process of the stack, or locust, failed.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scrapes.jsonl"
    with tempfile.TemporaryDirectory(prefix="patchboard-fleet-") as workdir:
        directory = Path(workdir) / "prometheus"
        directory.mkdir()
        environment = {
            "PROMETHEUS_MULTIPROC_DIR": str(directory),
            "SHOP_BREAKER_RESET_TIMEOUT": RESET_TIMEOUT,
        }
        # No tasks worker: the load asks only for quotes (nothing goes to the background).
        stack = Stack(
            Path(workdir) / "stack", shop_workers=2, environment=environment, tasks_worker=False
        )
        with stack, path.open("w") as file, httpx.Client(timeout=5.0) as client:
            info = {
                "users": plan.users,
                "workers": 2,
                "fault": f"{FAULTY} hangs",
                "fault_at": plan.fault_at,
                "fault_until": plan.fault_until,
                "window": WINDOW,
            }
            file.write(json.dumps({"run": info}) + "\n")
            command = [
                locust,
                *("-f", str(LOCUSTFILE), "--headless", "--host", stack.shop_url),
                *("-u", str(plan.users), "-r", str(plan.users), "-t", f"{plan.duration:.0f}s"),
                *("--csv", str(out / "locust"), "--only-summary"),
            ]
            with (out / "locust.log").open("wb") as log:
                load = start_process(command, output=log)
            try:
                scrape_while(load, client, stack, plan, file)
            finally:
                if load.poll() is None:
                    load.terminate()
                load.wait(timeout=30)
            if load.returncode not in (0, 1):  # 1: some requests failed, as they may
                tail = (out / "locust.log").read_text(errors="replace")[-2000:]
                raise StackError(f"locust exited with {load.returncode}:\n{tail}")
    return path


def scrape_while(
    load: subprocess.Popen[bytes], client: httpx.Client, stack: Stack, plan: Plan, file: Any
) -> None:
    """Scrape every second until locust exits, applying and lifting the fault on time."""
    control = f"{stack.carriers_url}/control/{FAULTY}"
    # The fault's steps, each applied once when its time comes.
    steps = [
        (plan.fault_at, HANG_MS, f"{FAULTY} hangs"),
        (plan.fault_until, LATENCY_MS[FAULTY], f"{FAULTY} answers again"),
    ]
    started = time.monotonic()
    tick = 0
    while load.poll() is None:
        at = time.monotonic() - started
        if steps and at >= steps[0][0]:
            _, latency_ms, mark = steps.pop(0)
            client.post(control, json={"latency_ms": latency_ms}).raise_for_status()
            scrapes.write_mark(file, at, mark)
        stack.check_alive()
        try:
            reply = client.get(f"{stack.shop_url}/metrics")
            reply.raise_for_status()
            scrapes.write_scrape(file, time.monotonic() - started, reply.text)
        except httpx.HTTPError as exc:
            print(f"  scrape at {at:.0f} s failed: {exc!r}", file=sys.stderr)
        file.flush()
        tick += 1
        time.sleep(max(0.0, started + tick * SCRAPE_EVERY - time.monotonic()))


def locust_summary(out: Path) -> str:
    """locust's own totals for the run (its ``--csv`` statistics), in a line."""
    with (out / "locust_stats.csv").open() as stats:
        [total] = [row for row in csv.DictReader(stats) if row["Name"] == "Aggregated"]
    return (
        f"locust: {int(total['Request Count'])} requests, {int(total['Failure Count'])} failed, "
        f"{float(total['Requests/s']):.0f}/s, p99 {total['99%']} ms"
    )


# -- the dashboard, from the scrape file alone ---------------------------------------------


def render(path: Path, png: Path) -> None:
    """Draw the dashboard of the scrape file ``path`` into ``png``."""
    run = scrapes.read(path)
    if len(run.scrapes) < 2:
        raise ValueError(f"{path} has {len(run.scrapes)} scrapes: at least 2 are needed")
    times = run.times
    info = run.info
    title = (
        f"The example shop under locust ({info.get('users', '?')} users, uvicorn --workers "
        f"{info.get('workers', '?')}): one scrape of /metrics a second, rate() over "
        f"[{info.get('window', WINDOW):.0f}s]"
    )
    with plots.dashboard(png, title, 2, 2) as panels:
        calls_panel(panels[0][0], run, times)
        latency_panel(panels[0][1], run, times)
        queue_panel(panels[1][0], run, times)
        breaker_panel(panels[1][1], run, times)
        for panel in panels.flat:
            show_fault(panel, run.marks, times[-1])
            panel.set_xlim(0, times[-1])
        for panel in panels[1]:
            panel.set_xlabel("seconds since the load started")


def calls_panel(panel: Any, run: scrapes.Run, times: list[float]) -> None:
    """``sum by (status) (rate(patchboard_listener_calls_total{signal=...}[5s]))``."""
    calls = run.instant("patchboard_listener_calls_total", absent=0.0, signal=SIGNAL)
    by_status = scrapes.sum_by(scrapes.rate(calls, times, WINDOW), ["status"])
    order = list(STATUS_COLOURS)
    for labels, values in sorted(by_status.items(), key=lambda item: order.index(status(item[0]))):
        if max(values[1:], default=0) > 0:
            name = status(labels)
            panel.plot(times, values, label=name, color=STATUS_COLOURS.get(name), linewidth=1.5)
    panel.set_title(f"Carrier listener calls/s by status ({SIGNAL})")
    panel.set_ylabel("calls/s")
    panel.set_ylim(bottom=0)
    panel.legend(loc="upper right", ncols=3)


def latency_panel(panel: Any, run: scrapes.Run, times: list[float]) -> None:
    """
    ``histogram_quantile(0.99, sum by (le, listener) (rate(..._bucket[5s])))`` per
    carrier, and the same of the dispatch's duration (the collect's longest call).
    """
    buckets = run.instant(
        "patchboard_listener_call_duration_seconds_bucket", absent=0.0, signal=SIGNAL
    )
    rates = scrapes.rate(buckets, times, WINDOW)
    p99 = scrapes.histogram_quantile(0.99, scrapes.sum_by(rates, ["le", "listener"]))
    for labels, values in sorted(p99.items()):
        carrier = dict(labels)["listener"].rsplit("_", 1)[-1]
        panel.plot(times, values, label=carrier, linewidth=1.5)
    dispatch = run.instant("patchboard_dispatch_duration_seconds_bucket", absent=0.0, signal=SIGNAL)
    dispatch_rates = scrapes.sum_by(scrapes.rate(dispatch, times, WINDOW), ["le"])
    for values in scrapes.histogram_quantile(0.99, dispatch_rates).values():
        panel.plot(times, values, label="dispatch", color="#ccccdc", linestyle="--")
    panel.set_title("p99 listener call duration by carrier (histogram buckets)")
    panel.set_ylabel("seconds")
    plots.log_scale(panel, "y", ticks=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
    panel.legend(loc="upper right", ncols=4)


def queue_panel(panel: Any, run: scrapes.Run, times: list[float]) -> None:
    """
    ``sum(patchboard_queue_waiting)``, ``_running`` and ``_workers``;
    ``max(patchboard_queue_oldest_wait_seconds)`` on the right.
    """
    for name, label, colour, style in (
        ("patchboard_queue_workers", "workers (pool)", "#8e8e9a", "--"),
        ("patchboard_queue_running", "running", "#5794f2", "-"),
        ("patchboard_queue_waiting", "waiting", "#ff9830", "-"),
    ):
        [total] = scrapes.sum_by(run.instant(name), []).values() or [[math.nan] * len(times)]
        panel.plot(times, total, label=label, color=colour, linestyle=style, linewidth=1.5)
    panel.set_title("Short-term queue, both workers added up")
    panel.set_ylabel("calls")
    panel.set_ylim(bottom=0)
    oldest = scrapes.max_of(run.instant("patchboard_queue_oldest_wait_seconds"))
    right = panel.twinx()
    right.plot(times, oldest, label="oldest wait (s, right)", color="#f2495c", linewidth=1)
    right.set_ylabel("seconds")
    right.set_ylim(bottom=0)
    lines = panel.get_lines() + right.get_lines()
    panel.legend(lines, [line.get_label() for line in lines], loc="upper right", ncols=2)


def breaker_panel(panel: Any, run: scrapes.Run, times: list[float]) -> None:
    """``sum by (breaker) (patchboard_breaker_state{state="open"})``: processes seeing it open."""
    opened = scrapes.sum_by(run.instant("patchboard_breaker_state", state="open"), ["breaker"])
    for labels, values in sorted(opened.items()):
        if max((v for v in values if not math.isnan(v)), default=0) > 0:
            panel.step(times, values, where="post", label=dict(labels)["breaker"], linewidth=1.5)
    panel.set_title("Open circuits: worker processes that see each one open")
    panel.set_ylabel("processes")
    panel.set_ylim(-0.1, int(run.info.get("workers", 2)) + 0.5)
    panel.set_yticks(range(int(run.info.get("workers", 2)) + 1))
    panel.legend(loc="upper right")


def show_fault(panel: Any, marks: Sequence[tuple[float, str]], end: float) -> None:
    """Shade from the first mark to the next (or to the end), and name it at the top."""
    if not marks:
        return
    start = marks[0][0]
    stop = marks[1][0] if len(marks) > 1 else end
    panel.axvspan(start, stop, color="#f2495c", alpha=0.08)
    panel.text(
        start,
        1.0,
        f" {marks[0][1]}",
        transform=panel.get_xaxis_transform(),
        va="top",
        fontsize="small",
        color="#f2495c",
    )


def status(labels: scrapes.Labels) -> str:
    return dict(labels).get("status", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--render", type=Path, metavar="SCRAPES", help="only draw this scrape file")
    parser.add_argument("--png", type=Path, default=PNG, help=f"default: {PNG.relative_to(ROOT)}")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="where the scrapes and locust's files go"
    )
    parser.add_argument("--duration", type=float, default=DURATION)
    parser.add_argument("--users", type=int, default=USERS)
    args = parser.parse_args(argv)
    path = args.render
    if path is None:
        try:
            plan = Plan(
                duration=args.duration,
                users=args.users,
                fault_at=args.duration / 4,
                fault_until=args.duration * 2 / 3,
            )
            locust = find_locust()
        except (ValueError, StackError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"the shop under {plan.users} locust users for {plan.duration:.0f} s "
            f"({FAULTY} hangs from {plan.fault_at:.0f} s to {plan.fault_until:.0f} s)..."
        )
        path = run(plan, args.out, locust)
        print(locust_summary(args.out))
    render(path, args.png)
    print(f"scrapes: {path}\nwrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
