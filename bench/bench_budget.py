"""
The request's time budget: a burst through the short-term queue, and goodput
under overload.

``burst``
    The scenario of issue 10, with default settings: 20 requests at once,
    each collecting a signal of 6 carrier listeners that take ~100 ms each,
    through the queue (``queue=True``). The bounded-pool ideal is
    ``ceil(120 / MAX_WORKERS) x 100 ms``; the target is a median collect
    within 1.5x of it, with nothing expired or rejected.
``overload``
    Open-loop arrivals at twice what ``MAX_WORKERS`` can serve, each request
    with a budget (``deadline=``, when the signal takes one): goodput is the
    listener calls that completed ``ok`` within the budget, per second from
    the first arrival to the last answer (per second of arrivals, it would
    count the calls a long line still served after the arrivals stopped, and
    exceed the capacity).
``mixed``
    The overload of issue 15 at the example shop's queue settings (6 to 12
    workers, ``ITEM_EXPIRY`` 1.5 s, a 2 s deadline): requests collecting a
    fast listener (10 ms), a slow one (200 ms) and one behind an open
    circuit, arriving at twice what the pool can serve. Targets: at most 1 %
    of the calls that never ran waited 2/3 of their budget or more before
    being told, and goodput (the worker time of calls that ended ``ok``
    within the deadline) at least 80 % of the pool's capacity.
``cold``
    A cold pool (default settings: 4 workers, up to 32) under a sustained
    load that needs 85 % of ``MAX_WORKERS`` (requests of 6 listeners of
    50-150 ms, 100 ms on average): when the line stopped standing (its head
    waiting ``TARGET_WAIT`` or more), and the head's wait after the first
    200 ms.

Run ``python -m bench.bench_budget`` (``--quick`` for a shorter overload run).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
import statistics
import sys
import time
from typing import Any

CARRIERS = 6
REQUESTS = 20
SERVICE = 0.1
"""Seconds a carrier listener takes."""
BUDGET = 1.0
"""Seconds a request may take, under overload."""


def setup_django() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
        django.setup()


def _signal(name: str, spread: float = 0.0) -> Any:
    """``CARRIERS`` listeners of ``SERVICE`` seconds each, give or take up to ``spread``."""
    import patchboard

    signal = patchboard.Signal(name=name)
    draw = random.Random(name).uniform

    def make(index: int) -> Any:
        async def carrier(sender: Any, **kwargs: Any) -> int:
            await asyncio.sleep(SERVICE + draw(-spread, spread))
            return index

        return carrier

    for index in range(CARRIERS):
        signal.connect(make(index), weak=False, on_error="log")
    return signal


def _takes_deadline(signal: Any) -> bool:
    return "deadline" in inspect.signature(signal.collect_async).parameters


async def burst() -> dict[str, Any]:
    """The burst of issue 10; latencies in seconds."""
    from patchboard import outcome_counts, queue_stats
    from patchboard.testing import reset

    reset()
    signal = _signal("bench.burst")
    max_workers = queue_stats().workers and _max_workers()

    async def one() -> float:
        started = time.perf_counter()
        await signal.collect_async(sender=None, queue=True)
        return time.perf_counter() - started

    latencies = await asyncio.gather(*(one() for _ in range(REQUESTS)))
    counts = outcome_counts()
    ideal = math.ceil(REQUESTS * CARRIERS / max_workers) * SERVICE
    median = statistics.median(latencies)
    return {
        "median": median,
        "worst": max(latencies),
        "ideal": ideal,
        "ratio": median / ideal,
        "expired": counts["expired"],
        "rejected": counts["rejected"],
        "workers": queue_stats().workers,
    }


def _max_workers() -> int:
    from patchboard._config import get_settings

    return get_settings().short_term_queue.max_workers


async def overload(seconds: float) -> dict[str, Any]:
    """Arrivals at 2x capacity for ``seconds``: goodput and what happened to the rest."""
    from patchboard import outcome_counts
    from patchboard.testing import reset

    reset()
    signal = _signal("bench.overload")
    capacity = _max_workers() / SERVICE  # listener calls per second
    rate = 2 * capacity / CARRIERS  # requests per second
    budgeted = _takes_deadline(signal)
    good = 0
    answered = 0

    async def one(at: float) -> None:
        nonlocal good, answered
        started = time.perf_counter()
        options = {"deadline": BUDGET} if budgeted else {}
        collected = await signal.collect_async(sender=None, queue=True, **options)
        took = time.perf_counter() - started
        answered += 1
        if took <= BUDGET:
            good += sum(1 for outcome in collected if outcome.status == "ok")

    wall = await _open_loop(rate, seconds, one)
    counts = outcome_counts()
    return {
        "offered_per_s": rate * CARRIERS,
        "capacity_per_s": capacity,
        "goodput_per_s": good / wall,
        "budgeted": budgeted,
        "requests": answered,
        "wall": wall,
        "counts": {k: v for k, v in counts.items() if v},
    }


# -- mixed service times under overload (issue 15) ------------------------------------

SHOP_QUEUE = {"MIN_WORKERS": 6, "MAX_WORKERS": 12, "ITEM_EXPIRY": 1.5}
"""The example shop's short-term queue."""
SHOP_DEADLINE = 2.0
"""The example shop's budget for its quotes page."""
FAST, SLOW = 0.01, 0.2
"""Seconds the mixed case's fast and slow listeners take."""
LATE = 2 / 3
"""A call that never ran was told late if it waited this fraction of its budget or more."""
NEVER_RAN = ("expired", "rejected", "circuit_open")


def _mixed_signal() -> Any:
    """Three listeners: fast, slow, and one behind a circuit forced open (with a fallback)."""
    import patchboard

    breaker = patchboard.CircuitBreaker("bench.mixed.down", store="memory")
    breaker.force_open()
    signal = patchboard.Signal(name="bench.mixed")

    async def fast(sender: Any, **kwargs: Any) -> float:
        await asyncio.sleep(FAST)
        return FAST

    async def slow(sender: Any, **kwargs: Any) -> float:
        await asyncio.sleep(SLOW)
        return SLOW

    async def down(sender: Any, **kwargs: Any) -> float:
        raise AssertionError("its circuit is open: never called")

    async def cached(sender: Any, **kwargs: Any) -> float:
        return 0.0

    signal.connect(fast, weak=False, on_error="log")
    signal.connect(slow, weak=False, on_error="log")
    signal.connect(down, weak=False, on_error="log", breaker=breaker, fallback=cached)
    return signal


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


async def _open_loop(rate: float, seconds: float, one: Any) -> float:
    """Start ``one(started)`` ``rate`` times a second for ``seconds``; the wall time of it all."""
    tasks = []
    begin = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - begin < seconds:
        due = int((now - begin) * rate) + 1
        while sent < due:
            tasks.append(asyncio.ensure_future(one(now - begin)))
            sent += 1
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    return time.perf_counter() - begin


async def mixed(seconds: float) -> dict[str, Any]:
    """Mixed listeners at 2x the pool's capacity, at the shop's queue settings."""
    from django.test import override_settings

    from patchboard import queue_stats
    from patchboard.testing import reset

    reset()
    with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": SHOP_QUEUE}):
        signal = _mixed_signal()
        workers = SHOP_QUEUE["MAX_WORKERS"]
        capacity = workers / (FAST + SLOW)  # requests per second the pool can serve
        budget = min(SHOP_QUEUE["ITEM_EXPIRY"], SHOP_DEADLINE)
        waits: list[float] = []  # seconds each call that never ran waited to be told
        statuses: dict[str, int] = {}
        work = 0.0  # worker seconds of the calls that ended ok within the deadline

        async def one(started: float) -> None:
            nonlocal work
            begin = time.perf_counter()
            collected = await signal.collect_async(sender=None, queue=True, deadline=SHOP_DEADLINE)
            on_time = time.perf_counter() - begin <= SHOP_DEADLINE
            for outcome in collected:
                statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
                if outcome.status in NEVER_RAN:
                    waits.append(outcome.elapsed)
                elif outcome.status == "ok" and on_time:
                    work += outcome.value

        wall = await _open_loop(2 * capacity, seconds, one)
        stats = queue_stats()
    reset()
    late = sum(wait >= LATE * budget for wait in waits)
    return {
        "offered_per_s": 2 * capacity,
        "capacity_per_s": capacity,
        "budget": budget,
        "goodput": work / (workers * wall),
        "never_ran": len(waits),
        "late": late,
        "late_fraction": late / max(1, len(waits)),
        "wait_p50": _percentile(waits, 50),
        "wait_p99": _percentile(waits, 99),
        "statuses": dict(sorted(statuses.items())),
        "shed": stats.shed,
        "wall": wall,
    }


def mixed_lines(seconds: float, result: dict[str, Any]) -> list[str]:
    late_ok = result["late_fraction"] <= 0.01
    goodput_ok = result["goodput"] >= 0.8
    verdict = "met" if late_ok and goodput_ok else "MISSED"
    budget_ms = result["budget"] * 1000
    return [
        "",
        f"### Mixed listeners at 2x capacity for {seconds:.0f} s, the shop's queue settings",
        "",
        f"Each request collects a {FAST * 1000:.0f} ms listener, a {SLOW * 1000:.0f} ms one "
        f"and one behind an open circuit (its fallback answers), `queue=True`, "
        f"`deadline={SHOP_DEADLINE:g}`, with `SHORT_TERM_QUEUE={SHOP_QUEUE}` (a call's "
        f"budget in line: {budget_ms:.0f} ms). Goodput: the worker time of the calls that "
        "ended ok within the deadline, over what the pool can give from the first arrival "
        "to the last answer.",
        "",
        "| offered req/s | capacity req/s | never ran | waited ≥ 2/3 budget "
        "(target ≤ 1 %) | their wait p50 / p99 | goodput / capacity (target ≥ 0.80) "
        "| outcomes |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {result['offered_per_s']:.0f} | {result['capacity_per_s']:.0f} "
        f"| {result['never_ran']} | {result['late']} ({result['late_fraction']:.1%}) "
        f"| {result['wait_p50'] * 1000:.0f} / {result['wait_p99'] * 1000:.0f} ms "
        f"| {result['goodput']:.2f} | {result['statuses']} |",
        "",
        f"Target: **{verdict}**.",
    ]


# -- a cold pool under sustained load (issue 15) -----------------------------------------

COLD_LOAD = 0.85
"""The cold case's load, as a fraction of what ``MAX_WORKERS`` can serve."""
SETTLED_AFTER = 0.2
"""Seconds after which the cold case's line should no longer stand."""


async def cold(seconds: float) -> dict[str, Any]:
    """A cold pool (default settings) under a sustained load needing ``COLD_LOAD`` of it."""
    from patchboard import queue_stats
    from patchboard._config import get_settings
    from patchboard.testing import reset

    reset()
    signal = _signal("bench.cold", spread=SERVICE / 2)
    config = get_settings().short_term_queue
    rate = COLD_LOAD * config.max_workers / SERVICE / CARRIERS  # requests per second
    samples: list[tuple[float, float]] = []  # (seconds since the start, the head's wait)
    latencies: list[tuple[float, float]] = []  # (started, latency) of each request
    begin = time.perf_counter()
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            samples.append((time.perf_counter() - begin, queue_stats().oldest_wait))
            await asyncio.sleep(0.002)

    async def one(started: float) -> None:
        at = time.perf_counter()
        await signal.collect_async(sender=None, queue=True)
        latencies.append((started, time.perf_counter() - at))

    watcher = asyncio.ensure_future(watch())
    await _open_loop(rate, seconds, one)
    done.set()
    await watcher
    stats = queue_stats()
    standing = [at for at, wait in samples if wait >= config.target_wait]
    after = [wait for at, wait in samples if at >= SETTLED_AFTER]
    settled = [latency for started, latency in latencies if started >= SETTLED_AFTER]
    reset()
    return {
        "rate": rate * CARRIERS,
        "needs": COLD_LOAD * config.max_workers,
        "target_wait": config.target_wait,
        "stood_until": max(standing, default=0.0),
        "wait_max": max(after, default=0.0),
        "wait_mean": statistics.fmean(after) if after else 0.0,
        "p99": _percentile(settled, 99),
        "workers": stats.workers,
        "expired": stats.expired,
    }


def cold_lines(seconds: float, result: dict[str, Any]) -> list[str]:
    ms = 1000
    verdict = "met" if result["stood_until"] <= 2 * SETTLED_AFTER else "MISSED"
    return [
        "",
        f"### A cold pool under sustained load for {seconds:.0f} s, default settings",
        "",
        f"{result['rate']:.0f} calls/s of {SERVICE * ms / 2:.0f}-{SERVICE * ms * 1.5:.0f} ms "
        f"each (requests of {CARRIERS} listeners, open loop), what {result['needs']:.0f} "
        "workers serve, from a pool of `MIN_WORKERS`. The line stands while its head has "
        f"waited `TARGET_WAIT` ({result['target_wait'] * ms:.0f} ms) or more; sampled every "
        "2 ms.",
        "",
        f"| line stood until | head's wait after {SETTLED_AFTER * ms:.0f} ms: max / mean "
        f"| request p99 after {SETTLED_AFTER * ms:.0f} ms (no wait: ≤ {SERVICE * ms * 1.5:.0f}) "
        "| workers after | expired |",
        "|---:|---:|---:|---:|---:|",
        f"| {result['stood_until'] * ms:.0f} ms | {result['wait_max'] * ms:.0f} / "
        f"{result['wait_mean'] * ms:.1f} ms | {result['p99'] * ms:.0f} ms | {result['workers']} "
        f"| {result['expired']} |",
        "",
        f"Target: no standing line after about {SETTLED_AFTER * ms:.0f} ms: **{verdict}**.",
    ]


def main(*, quick: bool = False) -> str:
    setup_django()
    result = asyncio.run(burst())
    lines = [
        "## The request's time budget",
        "",
        f"### Burst: {REQUESTS} requests at once, {CARRIERS} listeners of "
        f"{SERVICE * 1000:.0f} ms each, `queue=True`, default settings",
        "",
        "| median | worst | ideal | median / ideal (target ≤ 1.5x) | expired | rejected | "
        "workers after |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {result['median'] * 1000:.0f} ms | {result['worst'] * 1000:.0f} ms | "
        f"{result['ideal'] * 1000:.0f} ms | {result['ratio']:.2f}x | {result['expired']} | "
        f"{result['rejected']} | {result['workers']} |",
    ]
    seconds = 2.0 if quick else 5.0
    load = asyncio.run(overload(seconds))
    lines += [
        "",
        f"### Overload: arrivals at 2x capacity for {seconds:.0f} s, a budget of "
        f"{BUDGET:.1f} s per request",
        "",
        "| offered calls/s | capacity calls/s | goodput calls/s (ok within budget, over the "
        "wall time) | "
        "goodput / capacity | deadline used | outcomes |",
        "|---:|---:|---:|---:|---|---|",
        f"| {load['offered_per_s']:.0f} | {load['capacity_per_s']:.0f} | "
        f"{load['goodput_per_s']:.0f} | {load['goodput_per_s'] / load['capacity_per_s']:.2f} | "
        f"{'yes' if load['budgeted'] else 'no (not supported)'} | {load['counts']} |",
    ]
    lines += [
        "",
        "Before the time-budget work (commit a728340, the queue growing on the age of "
        "expiry), the same two scenarios measured: burst median 1608 ms, worst 3015 ms "
        "(4.02x the ideal), the pool still at 4 workers; overload goodput 7 calls/s "
        "(0.02 of capacity: 1200 ok, 2004 rejected). Serving the newest callers first "
        "while the line stands (adaptive LIFO) was tried and measured 299-311 calls/s "
        "against 356-362 for FIFO, so the queue stays FIFO.",
    ]
    seconds = 4.0 if quick else 10.0
    lines += mixed_lines(seconds, asyncio.run(mixed(seconds)))
    seconds = 2.0 if quick else 5.0
    lines += cold_lines(seconds, asyncio.run(cold(seconds)))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
