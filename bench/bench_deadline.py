"""
How late a deadline's answer arrives under load: the example shop's
``GET /quotes`` (``collect_async(..., deadline=QUOTES_BUDGET)``) at
``CLIENTS`` concurrent clients, one carrier hanging, breakers on and off;
and the shop without breakers whose deadline (``TIGHT``) is shorter than the
carrier timeout, so that the deadline cuts the hanging carrier's call in
every request (with the shop's own 2 s, the carrier timeout and the queue's
shedding answer first, and the deadline is seldom what ends a call).

The stacks, the hanging carrier and the shop's URL are bench_e2e's; :mod:`bench.load`
drives each shop for
``WARM_UP`` seconds, then ``DURATION`` seconds measured. Each answer carries
the shop's own figures: ``deadline_hit`` (the deadline cut a call or kept one
from starting) and ``elapsed_ms`` (the collect, timed in the view). The
overshoot of an answer is how long after the deadline it came: in the view
(``elapsed_ms`` - deadline: the library and the event loop) and at the client
(latency - deadline: the view, Django, uvicorn and the socket too). The
table gives its p50/p99/max over the answers whose deadline was hit, and how
many answers of all came after the deadline.

Run ``python -m bench.bench_deadline [--quick]`` or ``python -m bench``.
"""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import httpx

from bench import load
from bench.bench_e2e import HANG_MS, HANGING, quotes_url, stacks
from examples.stack import Stack
from examples.walkthrough import SETTINGS

DEADLINE: float = SETTINGS["QUOTES_BUDGET"]
"""Seconds: the deadline of the shop's quotes page."""
CUT_SLACK = 0.002
"""Seconds: the view times the collect to the millisecond."""
TIGHT = 0.8
"""Seconds: a deadline under the carrier timeout (1 s), which it cuts."""
MODES: dict[str, tuple[dict[str, str], float]] = {
    "breaker on": ({}, DEADLINE),
    "breaker off": ({"SHOP_BREAKERS": "off"}, DEADLINE),
    f"breaker off, {TIGHT:g} s deadline": (
        {"SHOP_BREAKERS": "off", "SHOP_QUOTES_BUDGET": str(TIGHT)},
        TIGHT,
    ),
}
"""Each shop's environment (added to bench_e2e's) and its deadline."""
CLIENTS = 50
WARM_UP = 3.0
DURATION = 10.0
QUICK_DURATION = 3.0
LOCAL_DEADLINE = 0.3
LOCAL_SECONDS = 3.0
"""Seconds each in-process case runs (``QUICK_LOCAL_SECONDS`` with ``--quick``)."""
QUICK_LOCAL_SECONDS = 1.0
BALLAST = 0.002
PROBE = 0.005
LOCAL_CASES = ((1, 0.0), (CLIENTS, 0.0), (CLIENTS, BALLAST))
"""(concurrent collects, ballast seconds a turn)."""


@dataclass(frozen=True, slots=True)
class Answer:
    latency: float
    """Seconds, at the client."""
    collect: float
    """Seconds, the collect as the view timed it (to the millisecond)."""
    deadline_hit: bool


@dataclass(slots=True)
class Mode:
    name: str
    deadline: float
    answers: list[Answer] = field(default_factory=list)
    result: load.LoadResult | None = None

    def hit(self) -> list[Answer]:
        return [answer for answer in self.answers if answer.deadline_hit]

    def cut(self) -> list[Answer]:
        """
        The answers the deadline's timer ended: their collect lasted the
        deadline (to the view's millisecond). The others it hit were told
        early: a call the queue knew could not finish in time expired at once.
        """
        return [a for a in self.hit() if a.collect >= self.deadline - CUT_SLACK]

    @property
    def late(self) -> int:
        """Answers of all that came after the deadline (at the client)."""
        return sum(answer.latency > self.deadline for answer in self.answers)


def recording(url: str, answers: list[Answer]) -> load.Request:
    """A GET of ``url`` that keeps each 200 answer's figures in ``answers``."""

    async def send(client: httpx.AsyncClient, n: int) -> httpx.Response:
        started = perf_counter()
        response = await client.get(url)
        latency = perf_counter() - started
        if response.status_code == 200:
            body = response.json()
            answers.append(Answer(latency, body["elapsed_ms"] / 1000, body["deadline_hit"]))
        return response

    return send


async def measure(running: dict[str, Stack], duration: float) -> list[Mode]:
    modes = []
    async with httpx.AsyncClient(timeout=10.0) as client:
        for stack in running.values():
            hang = await client.post(
                f"{stack.carriers_url}/control/{HANGING}", json={"latency_ms": HANG_MS}
            )
            hang.raise_for_status()
    for name, stack in running.items():
        await load.run(quotes_url(stack), concurrency=CLIENTS, duration=WARM_UP)
        mode = Mode(name, MODES[name][1])
        request = recording(quotes_url(stack), mode.answers)
        mode.result = await load.run(request, concurrency=CLIENTS, duration=duration)
        print(
            f"  deadline: {name}: {len(mode.answers)} answers, {len(mode.hit())} hit the deadline",
            file=sys.stderr,
            flush=True,
        )
        modes.append(mode)
    return modes


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile, interpolated between the closest ranks (as bench.load)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: list[float], digits: int = 0) -> str:
    """``p50 / p99 / max`` of seconds, in milliseconds with ``digits`` decimals; n/a if none."""
    if not values:
        return "n/a"
    ms = [value * 1000 for value in values]
    return " / ".join(f"{v:.{digits}f}" for v in (percentile(ms, 50), percentile(ms, 99), max(ms)))


def table(modes: list[Mode], duration: float) -> str:
    lines = [
        f"### `GET /quotes` at {CLIENTS} clients, {HANGING} hanging: how late the deadline's "
        "answer comes",
        "",
        f"The shop's deadline is {DEADLINE:g} s (`QUOTES_BUDGET`), {TIGHT:g} s in the last "
        f"shop (under the carrier timeout: it cuts {HANGING}'s call in every request); "
        f"{CLIENTS} concurrent "
        f"clients (closed loop), {duration:g} s per shop after {WARM_UP:g} s of warm-up. "
        "Overshoot: how long after the deadline an answer that the deadline cut came, in "
        "the view (the collect as it timed it: the library and the event loop) and at the "
        "client (Django, uvicorn and the socket too). Deadline hit: cut by it, or told "
        "early (a call that could not finish in time expired at once).",
        "",
        "| shop | requests/s | answers | deadline hit: cut / told early "
        "| overshoot in the view p50 / p99 / max "
        "ms | at the client p50 / p99 / max ms | answers after the deadline | outside the "
        "collect p50 / p99 / max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in modes:
        cut = mode.cut()
        assert mode.result is not None
        lines.append(
            f"| {mode.name} | {mode.result.throughput:.1f} | {len(mode.answers)} "
            f"| {len(cut)} / {len(mode.hit()) - len(cut)} "
            f"| {spread([a.collect - mode.deadline for a in cut])} "
            f"| {spread([a.latency - mode.deadline for a in cut])} | {mode.late} "
            f"| {spread([a.latency - a.collect for a in mode.answers])} |"
        )
    return "\n".join(lines)


# -- in one process ---------------------------------------------------------------------------


async def local_case(clients: int, ballast: float, seconds: float) -> tuple[list[float], ...]:
    """Overshoots of ``clients`` looping collects, and the loop's lag meanwhile (seconds)."""
    import patchboard
    from patchboard.testing import reset

    reset()
    signal = patchboard.Signal(name="bench.deadline")

    async def hangs(sender: Any, **kwargs: Any) -> None:
        await asyncio.sleep(60)

    signal.connect(hangs, weak=False, on_error="log")
    overshoots: list[float] = []
    lags: list[float] = []
    ends = perf_counter() + seconds

    async def client() -> None:
        while perf_counter() < ends:
            started = perf_counter()
            await signal.collect_async(None, deadline=LOCAL_DEADLINE)
            overshoots.append(perf_counter() - started - LOCAL_DEADLINE)

    async def other_work() -> None:
        while perf_counter() < ends:
            busy = perf_counter() + ballast
            while perf_counter() < busy:
                pass
            await asyncio.sleep(0)

    async def probe() -> None:
        while perf_counter() < ends:
            started = perf_counter()
            await asyncio.sleep(PROBE)
            lags.append(perf_counter() - started - PROBE)

    work = [client() for _ in range(clients)] + [probe()] + ([other_work()] if ballast else [])
    await asyncio.gather(*work)
    return overshoots, lags


def local_table(seconds: float) -> str:
    import structlog

    lines = [
        f"### In one process: a listener hanging past a {LOCAL_DEADLINE:g} s deadline",
        "",
        f"Collects looping for {seconds:g} s; the loop's lag is how late a {PROBE * 1000:g} ms "
        "sleep woke up meanwhile. The logger drops every event (logging is the application's).",
        "",
        "| collects at once | other work a loop turn | collects | overshoot p50 / p99 / max ms "
        "| loop lag p50 / p99 / max ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    try:
        for clients, ballast in LOCAL_CASES:
            overshoots, lags = asyncio.run(local_case(clients, ballast, seconds))
            lines.append(
                f"| {clients} | {ballast * 1000:g} ms | {len(overshoots)} "
                f"| {spread(overshoots, 1)} | {spread(lags, 1)} |"
            )
    finally:
        structlog.reset_defaults()
    return "\n".join(lines)


def main(*, quick: bool = False) -> str:
    """Start the stacks, measure, stop them; print and return the markdown."""
    duration = QUICK_DURATION if quick else DURATION
    with tempfile.TemporaryDirectory(prefix="patchboard-bench-") as workdir, ExitStack() as exits:
        environments = {name: environment for name, (environment, _) in MODES.items()}
        running = dict(stacks(Path(workdir), exits, environments))
        modes = asyncio.run(measure(running, duration))
    from bench.bench_dispatch import setup_django

    setup_django()
    local = local_table(QUICK_LOCAL_SECONDS if quick else LOCAL_SECONDS)
    sections = ["## Deadlines under load: the overshoot", table(modes, duration), local]
    text = "\n\n".join(sections)
    print(text)
    return text


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
