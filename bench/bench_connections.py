"""
What a deadline costs a sync listener that uses the database: PostgreSQL
connections and time, with and without ``deadline=``, in the same run.

Async view-like loops (one, then ``CONCURRENCY`` requests at once, each
collecting one after the other) collect a signal whose one sync listener runs one query
(``SELECT pg_backend_pid()``) on PostgreSQL with ``CONN_MAX_AGE=60``.
Without a deadline the listener runs through asgiref's ``sync_to_async``
(``thread_sensitive=True``: one shared thread, one connection); with
``deadline=1.5`` (what ``PATCHBOARD["DEFAULT_DEADLINE"]`` does to every web
collect) each call runs in a listener thread, which keeps its connection
between calls as Django's request cycle does. A third row, the deadline with
``CONN_MAX_AGE=0`` (Django's default), is what every call costs when
connections are not kept: a connection per call.

The modes are interleaved over ``ROUNDS`` rounds; the table gives the
connections opened (Django's ``connection_created``), the distinct backends
(``pg_backend_pid()``), and the median and p99 collect time. Targets:
distinct backends at most ``MAX_THREADS``, median with a deadline at most 2x
without. PostgreSQL at ``PATCHBOARD_BENCH_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``); skipped without it.

Run ``python -m bench.bench_connections [--quick]`` or ``python -m bench``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PG_URL = os.environ.get("PATCHBOARD_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CONCURRENCY = 8
LOOPS = (1, CONCURRENCY)
"""The concurrent view-like loops of each case: one, as the issue measured it, then several."""
COLLECTS = 1000
"""Collects per mode and round (``QUICK_COLLECTS`` with ``--quick``)."""
QUICK_COLLECTS = 400
ROUNDS = 3
DEADLINE = 1.5
KEPT = "bench_kept"
"""The database alias with ``CONN_MAX_AGE=60``."""
PER_CALL = "bench_per_call"
"""The same database with ``CONN_MAX_AGE=0``."""
SLOWER_AT_MOST = 2.0
"""Target: the median collect with a deadline at most this times the one without."""


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    alias: str
    deadline: float | None
    loops: int = 1


MODES = tuple(
    mode
    for loops in LOOPS
    for mode in (
        Mode("no deadline, CONN_MAX_AGE=60", KEPT, None, loops),
        Mode(f"deadline={DEADLINE:g}, CONN_MAX_AGE=60", KEPT, DEADLINE, loops),
        Mode(f"deadline={DEADLINE:g}, CONN_MAX_AGE=0", PER_CALL, DEADLINE, loops),
    )
)


@dataclass(slots=True)
class Measured:
    latencies: list[float] = field(default_factory=list)
    backends: set[int] = field(default_factory=set)
    opened: int = 0
    failed: int = 0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def database_settings(url: str) -> dict[str, Any]:
    """Django ``DATABASES`` parameters of a ``postgresql://user@host:port/name`` URL."""
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": parts.port or 5432,
        "USER": parts.username or "postgres",
        "PASSWORD": parts.password or "",
        "NAME": parts.path.lstrip("/") or "postgres",
    }


def reachable(params: dict[str, Any]) -> str | None:
    """None if PostgreSQL answers at ``params``, else why not."""
    import psycopg

    try:
        psycopg.connect(
            host=params["HOST"],
            port=params["PORT"],
            user=params["USER"],
            password=params["PASSWORD"],
            dbname=params["NAME"],
            connect_timeout=2,
        ).close()
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


def add_aliases(params: dict[str, Any]) -> None:
    """The two aliases, added to this process's Django connections (the bench has no project)."""
    from django.db import connections

    configured = connections.configure_settings(
        {
            "default": {},
            KEPT: {**params, "CONN_MAX_AGE": 60},
            PER_CALL: {**params, "CONN_MAX_AGE": 0},
        }
    )
    for alias in (KEPT, PER_CALL):
        connections.settings[alias] = configured[alias]


async def run_mode(mode: Mode, collects: int, measured: Measured) -> None:
    from django.db import connections
    from django.db.backends.signals import connection_created

    import patchboard

    signal = patchboard.Signal(name="bench.connections")

    def query(sender: Any, **kwargs: Any) -> int:
        with connections[mode.alias].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid: int = cursor.fetchone()[0]
        return pid

    opened: Counter[str] = Counter()
    lock = threading.Lock()

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        with lock:
            opened[connection.alias] += 1

    signal.connect(query, weak=False, on_error="log")
    connection_created.connect(created)

    async def view(count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            collected = await signal.collect_async(None, deadline=mode.deadline)
            measured.latencies.append(time.perf_counter() - started)
            outcome = collected[0]
            if outcome.ok:
                measured.backends.add(outcome.value)
            else:
                measured.failed += 1

    try:
        await asyncio.gather(*(view(collects // mode.loops) for _ in range(mode.loops)))
    finally:
        connection_created.disconnect(created)
    measured.opened += opened[mode.alias]


async def close_shared_thread_connections() -> None:
    """The no-deadline mode's connection lives in asgiref's shared thread: close it there."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    await sync_to_async(connections.close_all, thread_sensitive=True)()


def measure(collects: int, rounds: int) -> dict[Mode, Measured]:
    results = {mode: Measured() for mode in MODES}
    for number in range(rounds):
        for mode in MODES:
            asyncio.run(run_mode(mode, collects, results[mode]))
            # Each no-deadline run opens its own (listener threads keep theirs: the point).
            asyncio.run(close_shared_thread_connections())
            print(
                f"  connections: round {number + 1}, {mode.loops} loops, {mode.name}: "
                f"median {statistics.median(results[mode].latencies) * 1000:.2f} ms",
                file=sys.stderr,
                flush=True,
            )
    return results


def table(results: dict[Mode, Measured], collects: int, rounds: int, max_threads: int) -> str:
    ms = 1000
    lines = [
        "### A sync listener running one query, with and without a deadline",
        "",
        f"Async view-like loops (one, then {CONCURRENCY} at once) share {collects} collects per "
        f"mode and round, {rounds} rounds, the modes interleaved; PostgreSQL on loopback, "
        f"MAX_THREADS {max_threads}. Connections opened: Django's `connection_created`; "
        "backends: distinct `pg_backend_pid()`. The modes share the process's listener "
        "threads, so a connection a thread opened in one mode can serve the next.",
        "",
        "| loops | mode | collects | connections opened | distinct backends | median ms "
        "| p99 ms | median vs no deadline | failed |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for loops in LOOPS:
        modes = [mode for mode in MODES if mode.loops == loops]
        bare, budgeted = results[modes[0]], results[modes[1]]
        base = statistics.median(bare.latencies)
        for mode in modes:
            measured = results[mode]
            median = statistics.median(measured.latencies)
            lines.append(
                f"| {loops} | {mode.name} | {len(measured.latencies)} | {measured.opened} "
                f"| {len(measured.backends)} | {median * ms:.2f} "
                f"| {measured.percentile(99) * ms:.2f} | {median / base:.2f}x | {measured.failed} |"
            )
        ratio = statistics.median(budgeted.latencies) / base
        met = len(budgeted.backends) <= max_threads and ratio <= SLOWER_AT_MOST
        verdicts.append(
            f"{loops} loop{'s' if loops > 1 else ''}: **{'met' if met else 'MISSED'}** "
            f"({len(budgeted.backends)} backends, {ratio:.2f}x)"
        )
    lines += [
        "",
        f"Target, with `CONN_MAX_AGE=60`: distinct backends with a deadline at most MAX_THREADS "
        f"({max_threads}), its median at most {SLOWER_AT_MOST:g}x the one without: "
        f"{'; '.join(verdicts)}. With `CONN_MAX_AGE=0` (Django's default) every call "
        "connects, as every request does.",
    ]
    return "\n".join(lines)


def main(*, quick: bool = False) -> str:
    """Measure (or say why not); print and return the markdown."""
    from bench.bench_dispatch import setup_django

    setup_django()
    title = "## Database connections of sync listeners under a deadline"
    params = database_settings(PG_URL)
    why = reachable(params)
    if why is not None:
        text = f"{title}\n\n_Skipped: no PostgreSQL at {PG_URL} ({why})._"
        print(text)
        return text
    from patchboard._config import get_settings
    from patchboard.testing import reset

    reset()
    add_aliases(params)
    collects, rounds = (QUICK_COLLECTS, 1) if quick else (COLLECTS, ROUNDS)
    results = measure(collects, rounds)
    text = f"{title}\n\n{table(results, collects, rounds, get_settings().max_threads)}"
    print(text)
    return text


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
