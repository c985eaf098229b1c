"""
The short-term queue against its alternatives, in the same process and run.

Fan-out cases (wall-clock milliseconds for one dispatch of 100 listeners):

* 100 async listeners each awaiting 50 ms of I/O, through the queue with 100
  workers (ideal: 50 ms), and through Django's ``asend``.
* 100 sync listeners each blocking 50 ms (``time.sleep``), through the queue
  with 20 workers (ideal: 5 rounds, 250 ms), with a ``threading.Thread`` per
  listener (ideal 50 ms, unbounded: 100 threads, 100 DB connections), and
  through Django's ``asend`` (which runs sync receivers one after another on
  the thread-sensitive thread: 5 s; timed once).

Overhead cases (microseconds per item, no-op listeners, a loop of calls):
``queue.run`` against ``Call.run_async`` with the same time limit (what
the queue adds: its slot accounting) and without one.

Each case is warmed up, then timed ``REPEAT`` times; the table gives the best
and the median. Run ``python -m bench.bench_queue`` (``--quick`` for fewer
rounds) or ``python -m bench`` for every benchmark.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

ITEMS = 100
IO_SECONDS = 0.05
ASYNC_WORKERS = 100
SYNC_WORKERS = 20
REPEAT = 7
NOOP_ITEMS = 20_000


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: ``best`` and ``median`` in ``unit``."""

    case: str
    contender: str
    best: float
    median: float
    unit: str
    ideal: float | None = None
    target: float | None = None
    """The best run must be within ``target`` times ``ideal``."""

    @property
    def ratio(self) -> float | None:
        return None if self.ideal is None else self.best / self.ideal

    @property
    def meets_target(self) -> bool | None:
        ratio = self.ratio
        return None if ratio is None or self.target is None else ratio <= self.target


def setup_django() -> None:
    """Configure bare Django settings if nobody did (the benchmark needs no database)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
        django.setup()


def _timed(run: Callable[[], Any], repeat: int, *, warm_up: bool = True) -> tuple[float, float]:
    """(best, median) seconds of ``run()`` over ``repeat`` runs, after a warm-up run."""
    if warm_up:
        run()
    samples = []
    for _ in range(repeat):
        started = perf_counter()
        run()
        samples.append(perf_counter() - started)
    return min(samples), statistics.median(samples)


def _in_loop(make: Callable[[], Awaitable[Any]]) -> Callable[[], Any]:
    return lambda: asyncio.run(make())  # type: ignore[arg-type]


# -- listeners -------------------------------------------------------------------------


def _io_listeners() -> list[Callable[..., Any]]:
    def make() -> Callable[..., Any]:
        async def fetch(sender: Any, **kwargs: Any) -> int:
            await asyncio.sleep(IO_SECONDS)
            return 1

        return fetch

    return [make() for _ in range(ITEMS)]


def _blocking_listeners() -> list[Callable[..., Any]]:
    def make() -> Callable[..., Any]:
        def fetch(sender: Any, **kwargs: Any) -> int:
            time.sleep(IO_SECONDS)
            return 1

        return fetch

    return [make() for _ in range(ITEMS)]


# -- cases -----------------------------------------------------------------------------


def fan_out(repeat: int) -> list[Row]:
    from django.dispatch import Signal as DjangoSignal

    import patchboard
    from patchboard._config import QueueSettings
    from patchboard._dispatch import run_concurrently
    from patchboard._queue import ShortTermQueue

    rows = []
    for kind, funcs, workers, rounds in (
        ("async", _io_listeners(), ASYNC_WORKERS, 1),
        ("sync", _blocking_listeners(), SYNC_WORKERS, ITEMS // SYNC_WORKERS),
    ):
        ours, theirs = patchboard.Signal(name=f"bench.{kind}"), DjangoSignal()
        for func in funcs:
            ours.connect(func)
            theirs.connect(func)
        listeners = ours.listeners(None)
        queue = ShortTermQueue(QueueSettings(min_workers=workers, max_workers=workers))
        ideal = rounds * IO_SECONDS * 1000
        label = f"{ITEMS} {kind} listeners, {IO_SECONDS * 1000:g} ms each"

        async def through_queue(
            queue: ShortTermQueue = queue, listeners: Any = listeners, ours: Any = ours
        ) -> None:
            outcomes = await run_concurrently(listeners, ours, None, {}, queue)
            assert all(outcome.status == "ok" for outcome in outcomes), outcomes

        best, median = _timed(_in_loop(through_queue), repeat)
        target = 1.2 if kind == "async" else 1.15
        rows.append(
            Row(label, f"queue, {workers} workers", best * 1000, median * 1000, "ms", ideal, target)
        )
        assert queue.statistics().completed == ITEMS * (repeat + 1)

        if kind == "sync":

            def thread_each(funcs: list[Callable[..., Any]] = funcs) -> None:
                threads = [threading.Thread(target=func, kwargs={"sender": None}) for func in funcs]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()

            best, median = _timed(thread_each, repeat)
            rows.append(
                Row(
                    label,
                    "a threading.Thread each",
                    best * 1000,
                    median * 1000,
                    "ms",
                )
            )

        async def django_asend(theirs: DjangoSignal = theirs) -> None:
            await theirs.asend(sender=None)

        if kind == "async":
            best, median = _timed(_in_loop(django_asend), repeat)
        else:  # serial sync receivers take ITEMS * IO_SECONDS: time them once
            best, median = _timed(_in_loop(django_asend), 1, warm_up=False)
        rows.append(Row(label, "Django asend", best * 1000, median * 1000, "ms"))
    return rows


def overhead(repeat: int) -> list[Row]:
    import patchboard
    from patchboard import Listener, ListenerOptions
    from patchboard._call import Call
    from patchboard._config import QueueSettings
    from patchboard._queue import ShortTermQueue

    async def noop(sender: Any, **kwargs: Any) -> None:
        return None

    signal = patchboard.Signal(name="bench.noop")
    listener = Listener(noop, ListenerOptions(), weak=False)
    settings = QueueSettings(min_workers=4, max_workers=4)
    queue = ShortTermQueue(settings)
    limit = settings.task_time_limit

    async def via_queue() -> None:
        for _ in range(NOOP_ITEMS):
            await queue.run(Call(listener, signal, None, {}))

    async def with_limit() -> None:
        for _ in range(NOOP_ITEMS):
            await Call(listener, signal, None, {}).run_async(time_limit=limit)

    async def bare() -> None:
        for _ in range(NOOP_ITEMS):
            await Call(listener, signal, None, {}).run_async()

    case = "a no-op async listener, per item"
    rows = []
    for name, make in (
        ("queue.run", via_queue),
        ("run_async, same time limit", with_limit),
        ("run_async, no time limit", bare),
    ):
        best, median = _timed(_in_loop(make), repeat)
        rows.append(Row(case, name, best / NOOP_ITEMS * 1e6, median / NOOP_ITEMS * 1e6, "µs"))
    queue_row, limit_row = rows[0], rows[1]
    rows.append(
        Row(
            case,
            "queue overhead (queue.run - run_async, same limit)",
            queue_row.best - limit_row.best,
            queue_row.median - limit_row.median,
            "µs",
        )
    )
    return rows


# -- report ----------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """The rows as markdown; fan-out rows also compare with the queue's best."""
    queue_best = {row.case: row.best for row in rows if row.contender.startswith("queue,")}
    lines = [
        "### Short-term queue",
        "",
        "| case | contender | best | median | vs queue | ideal | best / ideal (target) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        versus = f"{row.best / queue_best[row.case]:.2f}x" if row.case in queue_best else ""
        ideal = "" if row.ideal is None else f"{row.ideal:.0f} {row.unit}"
        ratio = ""
        if row.ratio is not None:
            ratio = f"{row.ratio:.2f}x"
            if row.target is not None:
                ratio += f" (≤ {row.target}x: {'met' if row.meets_target else 'MISSED'})"
        lines.append(
            f"| {row.case} | {row.contender} | {row.best:.2f} {row.unit} | "
            f"{row.median:.2f} {row.unit} | {versus} | {ideal} | {ratio} |"
        )
    return "\n".join(lines)


def main(quick: bool = False) -> list[Row]:
    """Run every case, print the markdown table, return its rows."""
    setup_django()
    repeat = 3 if quick else REPEAT
    rows = fan_out(repeat) + overhead(repeat)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
