"""
The short-term queue against its alternatives, in the same process and run.

Fan-out (wall-clock milliseconds for one dispatch to N listeners, each
waiting ``IO_SECONDS`` of I/O, for N in ``SIZES``), against the ideal:
``ceil(N / WORKERS) * IO_SECONDS`` for a pool of ``WORKERS``, ``IO_SECONDS``
for unbounded concurrency:

* ``collect_async(queue=True)`` through the process's queue, its pool fixed
  at ``WORKERS`` (``MIN_WORKERS = MAX_WORKERS``): async listeners awaiting
  ``asyncio.sleep``, and sync listeners blocking in ``time.sleep`` (run in
  the queue's threads);
* the same, with the default ``MIN_WORKERS`` and scaling up to
  ``MAX_WORKERS = WORKERS`` (the pool as the warm-up dispatch left it);
* a ``concurrent.futures.ThreadPoolExecutor`` of ``WORKERS`` threads and a
  ``threading.Thread`` per listener (sync listeners), and Django's ``asend``
  (async listeners: run concurrently; it runs sync receivers one after the
  other, see the dispatch benchmark).

Overhead (microseconds per item, no-op listeners, a loop of calls):
``queue._run`` against ``Call.run_async`` with the same time limit (what
the queue adds: its slot accounting) and without one.

Criticality (goodput under twice the pool's capacity): requests of one
call each, a quarter of them from a critical listener and the rest from a
sheddable one, arrive at twice what ``OVERLOAD_WORKERS`` workers serve in
``OVERLOAD_SERVICE`` seconds, each with a deadline of ``OVERLOAD_DEADLINE``;
the share of each kind answered in time, with their criticality and with
every listener ``"default"``.

Each fan-out case is warmed up, then timed ``REPEAT`` times, the cases
interleaved; the table gives the median and its ratio to the ideal, and a
plot shows latency against N. Run ``python -m bench.bench_queue``
(``--quick`` for fewer sizes and rounds) or ``python -m bench``.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

from bench.report import SCRATCH, Output

SIZES = (10, 25, 50, 100, 200)
QUICK_SIZES = (10, 50)
IO_SECONDS = 0.05
WORKERS = 32
"""The bounded approaches' size: the queue's ``MAX_WORKERS``, the executor's threads."""
REPEAT = 5
NOOP_ITEMS = 20_000
PLOT = "fan_out.png"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the overhead table: ``best`` and ``median`` in ``unit``."""

    case: str
    contender: str
    best: float
    median: float
    unit: str


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


def _io_listeners(count: int) -> list[Callable[..., Any]]:
    def make() -> Callable[..., Any]:
        async def fetch(sender: Any, **kwargs: Any) -> int:
            await asyncio.sleep(IO_SECONDS)
            return 1

        return fetch

    return [make() for _ in range(count)]


def _blocking_listeners(count: int) -> list[Callable[..., Any]]:
    def make() -> Callable[..., Any]:
        def fetch(sender: Any = None, **kwargs: Any) -> int:
            time.sleep(IO_SECONDS)
            return 1

        return fetch

    return [make() for _ in range(count)]


# -- fan-out ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Approach:
    """A way to run N listeners at once, and the ideal it is held to."""

    name: str
    short: str
    """Its column in the table."""
    bounded: bool
    """Whether at most ``WORKERS`` listeners run at once (the ideal is then in waves)."""
    style: str
    """The plot's line style."""

    def ideal(self, n: int) -> float:
        """Seconds: waves of ``WORKERS`` listeners if bounded, else one listener's latency."""
        return math.ceil(n / WORKERS) * IO_SECONDS if self.bounded else IO_SECONDS


QUEUE_ASYNC = Approach(
    f"patchboard queue, {WORKERS} workers, async listeners", "queue, async", True, "o-"
)
QUEUE_SYNC = Approach(
    f"patchboard queue, {WORKERS} workers, sync listeners", "queue, sync", True, "s-"
)
QUEUE_SCALING = Approach(
    f"patchboard queue, default scaling up to {WORKERS} workers, async listeners",
    "queue, default scaling",
    True,
    "o:",
)
POOL = Approach(f"ThreadPoolExecutor({WORKERS}), sync listeners", "executor", True, "^-")
THREAD_EACH = Approach("a thread per listener, sync listeners", "thread each", False, "v-")
DJANGO_ASEND = Approach("Django asend, async listeners", "Django asend", False, "d-")
APPROACHES = (QUEUE_ASYNC, QUEUE_SYNC, QUEUE_SCALING, POOL, THREAD_EACH, DJANGO_ASEND)


@dataclass(slots=True)
class FanOut:
    """Seconds per dispatch: for each approach, for each N, one sample per round."""

    sizes: tuple[int, ...]
    repeat: int
    samples: dict[str, dict[int, list[float]]] = field(default_factory=dict)

    def median(self, approach: Approach, n: int) -> float:
        return statistics.median(self.samples[approach.name][n])

    def ratio(self, approach: Approach, n: int) -> float:
        """The median over the approach's ideal."""
        return self.median(approach, n) / approach.ideal(n)


def _check_all_ok(collected: Any, n: int) -> None:
    statuses = [outcome.status for outcome in collected]
    if statuses != ["ok"] * n:
        raise RuntimeError(f"a fan-out dispatch did not end as {n} x ok: {collected!r}")


@contextmanager
def _queue_settings(**queue: int) -> Iterator[None]:
    """``PATCHBOARD["SHORT_TERM_QUEUE"]`` set to ``queue`` (the process's queue is rebuilt)."""
    from django.test import override_settings

    with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": queue}):
        yield


def _fan_out_cases(
    n: int, runner: asyncio.Runner, pool: ThreadPoolExecutor
) -> dict[Approach, Callable[[], None]]:
    """One dispatch of ``n`` listeners per approach (the queue's settings are the caller's)."""
    from django.dispatch import Signal as DjangoSignal

    import patchboard

    async_funcs, sync_funcs = _io_listeners(n), _blocking_listeners(n)
    ours_async, ours_sync = patchboard.Signal(), patchboard.Signal()
    theirs = DjangoSignal()
    for func in async_funcs:
        ours_async.connect(func, weak=False)
        theirs.connect(func, weak=False)
    for func in sync_funcs:
        ours_sync.connect(func, weak=False)

    def through_queue(signal: patchboard.Signal) -> Callable[[], None]:
        def run() -> None:
            _check_all_ok(runner.run(signal.collect_async(None, queue=True)), n)

        return run

    def executor() -> None:
        assert sum(future.result() for future in [pool.submit(f) for f in sync_funcs]) == n

    def thread_each() -> None:
        threads = [threading.Thread(target=func) for func in sync_funcs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def django_asend() -> None:
        assert len(runner.run(theirs.asend(None))) == n

    return {
        QUEUE_ASYNC: through_queue(ours_async),
        QUEUE_SYNC: through_queue(ours_sync),
        QUEUE_SCALING: through_queue(ours_async),
        POOL: executor,
        THREAD_EACH: thread_each,
        DJANGO_ASEND: django_asend,
    }


def _rounds(cases: dict[Approach, Callable[[], None]], repeat: int, into: FanOut, n: int) -> None:
    """Warm each case up, then time ``repeat`` rounds of them, interleaved."""
    for run in cases.values():
        run()
    for _ in range(repeat):
        for approach, run in cases.items():
            started = perf_counter()
            run()
            into.samples[approach.name][n].append(perf_counter() - started)


def fan_out(sizes: tuple[int, ...], repeat: int) -> FanOut:
    """Time every approach for every N; the queue's cases under their own settings."""
    result = FanOut(sizes, repeat, {a.name: {n: [] for n in sizes} for a in APPROACHES})
    with asyncio.Runner() as runner, ThreadPoolExecutor(WORKERS) as pool:
        for n in sizes:
            cases = _fan_out_cases(n, runner, pool)
            scaling = cases.pop(QUEUE_SCALING)
            with _queue_settings(MIN_WORKERS=WORKERS, MAX_WORKERS=WORKERS):
                _rounds(cases, repeat, result, n)
            # Its own block: switching the settings rebuilds the queue and its threads.
            with _queue_settings(MAX_WORKERS=WORKERS):
                _rounds({QUEUE_SCALING: scaling}, repeat, result, n)
            print(f"  fan-out: N={n} done", file=sys.stderr, flush=True)
    return result


def fan_out_table(result: FanOut) -> str:
    """Median milliseconds per approach and N, with the ratio to the approach's ideal."""
    from patchboard._config import QueueSettings

    min_workers = QueueSettings().min_workers
    io_ms = f"{IO_SECONDS * 1000:g} ms"
    lines = [
        f"### Fan-out: N listeners, {io_ms} of I/O each, one dispatch",
        "",
        f"Median of {result.repeat} rounds in ms (x its ideal). Ideal: `ceil(N / {WORKERS}) x "
        f"{io_ms}` for the bounded approaches, {io_ms} for the unbounded ones.",
        "",
        *(f"- {a.short}: {a.name}{'' if a.bounded else ' (unbounded)'}" for a in APPROACHES),
        "",
        f"patchboard's queue is `collect_async(queue=True)` with `MIN_WORKERS = MAX_WORKERS = "
        f"{WORKERS}`, or for default scaling with `MAX_WORKERS = {WORKERS}` only (it starts at "
        f"`MIN_WORKERS = {min_workers}`; timed in a block of its own after the others of each "
        "N, the pool as the warm-up left it).",
        "",
        "| N | ideal, bounded | "
        + " | ".join(a.short for a in APPROACHES)
        + " | queue, sync ÷ executor |",
        "|---:|---:|" + "---:|" * (len(APPROACHES) + 1),
    ]
    for n in result.sizes:
        cells = [
            f"{result.median(a, n) * 1000:.0f} ({result.ratio(a, n):.2f}x)" for a in APPROACHES
        ]
        versus = result.median(QUEUE_SYNC, n) / result.median(POOL, n)
        ideal = QUEUE_ASYNC.ideal(n) * 1000
        lines.append(f"| {n} | {ideal:.0f} | " + " | ".join(cells) + f" | {versus:.2f}x |")
    return "\n".join(lines)


def fan_out_plot(result: FanOut, path: Path) -> None:
    """Median latency against N for each approach, with both ideals, as a PNG."""
    from bench.plots import figure, log_scale

    sizes = list(result.sizes)
    title = f"Fan-out: N listeners with {IO_SECONDS * 1000:g} ms of I/O each"
    with figure(path, title) as axes:
        for approach in APPROACHES:
            medians = [result.median(approach, n) * 1000 for n in sizes]
            axes.plot(sizes, medians, approach.style, label=approach.name)
        every_n = range(sizes[0], sizes[-1] + 1)
        axes.plot(
            every_n,
            [QUEUE_ASYNC.ideal(n) * 1000 for n in every_n],
            "k--",
            linewidth=1,
            drawstyle="steps-post",
            label=f"ideal, {WORKERS} workers: ceil(N / {WORKERS}) x {IO_SECONDS * 1000:g} ms",
        )
        axes.axhline(
            IO_SECONDS * 1000, color="k", linestyle=":", linewidth=1, label="ideal, unbounded"
        )
        log_scale(axes, "x", sizes)
        log_scale(axes, "y")
        axes.set_xlabel("N listeners (log scale)")
        axes.set_ylabel("median latency of one dispatch (ms, log scale)")
        axes.legend(fontsize="small")


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
            await queue._run(Call(listener, signal, None, {}))

    async def with_limit() -> None:
        for _ in range(NOOP_ITEMS):
            await Call(listener, signal, None, {}).run_async(time_limit=limit)

    async def bare() -> None:
        for _ in range(NOOP_ITEMS):
            await Call(listener, signal, None, {}).run_async()

    case = "a no-op async listener, per item"
    rows = []
    for name, make in (
        ("queue._run", via_queue),
        ("run_async, same time limit", with_limit),
        ("run_async, no time limit", bare),
    ):
        best, median = _timed(_in_loop(make), repeat)
        rows.append(Row(case, name, best / NOOP_ITEMS * 1e6, median / NOOP_ITEMS * 1e6, "µs"))
    queue_row, limit_row = rows[0], rows[1]
    rows.append(
        Row(
            case,
            "queue overhead (queue._run - run_async, same limit)",
            queue_row.best - limit_row.best,
            queue_row.median - limit_row.median,
            "µs",
        )
    )
    return rows


# -- criticality under overload ----------------------------------------------------------

OVERLOAD_WORKERS = 8
OVERLOAD_SERVICE = 0.02
OVERLOAD_DEADLINE = 0.25
OVERLOAD_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Goodput:
    """The share of critical and of sheddable calls answered in time, in one run."""

    case: str
    critical: float
    sheddable: float
    per_second: float


def overload(seconds: float = OVERLOAD_SECONDS) -> list[Goodput]:
    """Goodput at twice the capacity, with criticality and without (see the module docstring)."""
    from django.test import override_settings

    import patchboard

    capacity = OVERLOAD_WORKERS / OVERLOAD_SERVICE
    interval = 1 / (2 * capacity)

    async def serve(sender: Any, **kwargs: Any) -> int:
        await asyncio.sleep(OVERLOAD_SERVICE)
        return 1

    async def run(with_criticality: bool) -> Goodput:
        signals = {}
        for kind in ("critical", "sheddable"):
            signal = patchboard.Signal(name=f"bench.overload.{kind}")
            criticality = kind if with_criticality else "default"
            signal.connect(serve, weak=False, on_error="log", criticality=criticality)
            signals[kind] = signal
        answered = {"critical": 0, "sheddable": 0}
        sent = {"critical": 0, "sheddable": 0}

        async def request(kind: str) -> None:
            collected = await signals[kind].collect_async(
                sender=None, queue=True, deadline=OVERLOAD_DEADLINE
            )
            answered[kind] += sum(1 for o in collected if o.ok)

        loop = asyncio.get_running_loop()
        tasks = []
        started = loop.time()
        count = 0
        while loop.time() - started < seconds:
            kind = "critical" if count % 4 == 0 else "sheddable"
            sent[kind] += 1
            tasks.append(asyncio.create_task(request(kind)))
            count += 1
            await asyncio.sleep(max(0.0, started + count * interval - loop.time()))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - started
        return Goodput(
            "with criticality" if with_criticality else "all default",
            answered["critical"] / sent["critical"],
            answered["sheddable"] / sent["sheddable"],
            (answered["critical"] + answered["sheddable"]) / elapsed,
        )

    pool = {"MIN_WORKERS": OVERLOAD_WORKERS, "MAX_WORKERS": OVERLOAD_WORKERS}
    results = []
    for with_criticality in (False, True):
        with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": pool}):
            results.append(asyncio.run(run(with_criticality)))
    return results


def overload_table(results: list[Goodput]) -> str:
    capacity = OVERLOAD_WORKERS / OVERLOAD_SERVICE
    lines = [
        "### Criticality at twice the capacity",
        "",
        f"{OVERLOAD_WORKERS} workers, calls of {OVERLOAD_SERVICE * 1000:g} ms "
        f"(capacity {capacity:g} calls/s), {2 * capacity:g} requests/s of which a quarter "
        f"critical, deadline {OVERLOAD_DEADLINE:g} s: the share of each answered in time.",
        "",
        "| case | critical goodput | sheddable goodput | answered calls/s |",
        "|---|---:|---:|---:|",
    ]
    for row in results:
        lines.append(
            f"| {row.case} | {row.critical:.0%} | {row.sheddable:.0%} | {row.per_second:.0f} |"
        )
    return "\n".join(lines)


# -- report ----------------------------------------------------------------------------

TARGET = 1.2
"""The queue with a fixed pool must stay within this multiple of its ideal, at every N."""


def target_line(result: FanOut) -> str:
    worst = max(
        (result.ratio(approach, n), approach.name, n)
        for approach in (QUEUE_ASYNC, QUEUE_SYNC)
        for n in result.sizes
    )
    verdict = "met" if worst[0] <= TARGET else "MISSED"
    return (
        f"Target: the queue with a fixed pool within {TARGET}x its ideal at every N: "
        f"**{verdict}** (worst: {worst[0]:.2f}x, {worst[1]}, N={worst[2]})."
    )


def overhead_table(rows: list[Row]) -> str:
    lines = [
        "### The queue's own cost, per item",
        "",
        "| case | contender | best | median |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.case} | {row.contender} | {row.best:.2f} {row.unit} | "
            f"{row.median:.2f} {row.unit} |"
        )
    return "\n".join(lines)


def main(*, quick: bool = False, output: Output | None = None) -> str:
    """
    Run every case; print and return the markdown. With ``output``, the
    fan-out plot is written to its plots folder and the markdown shows it.
    """
    setup_django()
    repeat = 2 if quick else REPEAT
    result = fan_out(QUICK_SIZES if quick else SIZES, repeat)
    sections = ["## Short-term queue", fan_out_table(result), target_line(result)]
    if output is not None:
        fan_out_plot(result, output.plot(PLOT))
        sections.append(output.image(PLOT, "Fan-out: median latency against N, per approach"))
    sections.append(overhead_table(overhead(3 if quick else 7)))
    sections.append(overload_table(overload(1.0 if quick else OVERLOAD_SECONDS)))
    text = "\n\n".join(sections)
    print(text)
    return text


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:], output=SCRATCH)
