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
    listener calls that completed ``ok`` within the budget, per second.

Run ``python -m bench.bench_budget`` (``--quick`` for a shorter overload run).
"""

from __future__ import annotations

import asyncio
import inspect
import math
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


def _signal(name: str) -> Any:
    import patchboard

    signal = patchboard.Signal(name=name)

    def make(index: int) -> Any:
        async def carrier(sender: Any, **kwargs: Any) -> int:
            await asyncio.sleep(SERVICE)
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

    async def one() -> None:
        nonlocal good, answered
        started = time.perf_counter()
        options = {"deadline": BUDGET} if budgeted else {}
        collected = await signal.collect_async(sender=None, queue=True, **options)
        took = time.perf_counter() - started
        answered += 1
        if took <= BUDGET:
            good += sum(1 for outcome in collected if outcome.status == "ok")

    tasks = []
    begin = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - begin < seconds:
        due = int((now - begin) * rate) + 1
        while sent < due:
            tasks.append(asyncio.ensure_future(one()))
            sent += 1
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - begin
    counts = outcome_counts()
    return {
        "offered_per_s": rate * CARRIERS,
        "capacity_per_s": capacity,
        "goodput_per_s": good / seconds,
        "budgeted": budgeted,
        "requests": sent,
        "wall": wall,
        "counts": {k: v for k, v in counts.items() if v},
    }


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
        "| offered calls/s | capacity calls/s | goodput calls/s (ok within budget) | "
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
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
