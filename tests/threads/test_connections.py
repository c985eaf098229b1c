"""
Listener threads and Django's database connections, on a real PostgreSQL:
kept between calls as Django's request cycle keeps a request thread's
(``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``), closed after each call with
``CONN_MAX_AGE=0``, when an idle thread exits and when an abandoned thread
returns, and never left inside a transaction.

Each test gives the listeners a database alias of its own (``ALIAS``, a
fresh PostgreSQL database of this module) and identifies a backend by its
``pid`` and ``backend_start``: a pid alone can be reused by the server.

Internal on purpose: ``_threads.IDLE_THREAD_TIMEOUT`` is shortened so an idle
thread exits within the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import psycopg
import pytest
from django.db import connections, transaction
from django.test import override_settings

import patchboard._threads
from patchboard import Signal, thread_stats
from tests.background.test_e2e import fresh_postgres_database

pytestmark = pytest.mark.postgres

ALIAS = "listeners"
LIMIT = 4
CALLERS = 20
COLLECTS = 200
IDLE = 0.2
"""Seconds an idle listener thread lives in these tests (so the test can wait for its exit)."""
BUSY_IDLE = 2.0
"""The same, for the tests that count backends over many calls: no thread exits mid-run."""


@dataclass(frozen=True, slots=True)
class Backend:
    """Where one listener call ran: its thread, its connection wrapper, the server's backend."""

    thread: threading.Thread
    wrapper: Any
    pid: int
    started: datetime

    @property
    def key(self) -> tuple[int, datetime]:
        return self.pid, self.started


@pytest.fixture(scope="module")
def database() -> Iterator[dict[str, Any]]:
    """A fresh PostgreSQL database with a ``note`` table, dropped afterwards."""
    with fresh_postgres_database("patchboard_conns") as params:
        with admin(params) as session:
            session.execute("CREATE TABLE note (id serial PRIMARY KEY, body text NOT NULL)")
        yield params


def admin(params: dict[str, Any]) -> psycopg.Connection[Any]:
    """A connection of the test's own (not Django's) to ``params``' database."""
    return psycopg.connect(
        host=params["HOST"],
        port=params["PORT"],
        user=params["USER"],
        dbname=params["NAME"],
        autocommit=True,
    )


class Listeners:
    """The listener database: where each call ran, and the threads to wait for at the end."""

    def __init__(self) -> None:
        self.backends: list[Backend] = []
        self.lock = threading.Lock()

    def record(self) -> Backend:
        """Run one query on ``ALIAS`` in this thread; where it ran."""
        wrapper = connections[ALIAS]
        with wrapper.cursor() as cursor:
            cursor.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
            pid, started = cursor.fetchone()
        backend = Backend(threading.current_thread(), wrapper, pid, started)
        with self.lock:
            self.backends.append(backend)
        return backend

    def query(self, sender: Any, **kwargs: Any) -> Backend:
        """The sync listener: one query."""
        return self.record()

    def threads(self) -> set[threading.Thread]:
        return {backend.thread for backend in self.backends}


@contextlib.contextmanager
def listener_database(
    database: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    django_db_blocker: Any,
    *,
    conn_max_age: float,
    health_checks: bool = False,
    idle: float = IDLE,
    max_threads: int = LIMIT,
) -> Iterator[Listeners]:
    """
    ``ALIAS`` configured with these settings for the block, ``MAX_THREADS``
    at ``max_threads``; afterwards, waits for the listener threads to exit
    (idle for ``idle`` seconds), so each closes what it kept.
    """
    params = {**database, "CONN_MAX_AGE": conn_max_age, "CONN_HEALTH_CHECKS": health_checks}
    connections.settings[ALIAS] = connections.configure_settings({"default": {}, ALIAS: params})[
        ALIAS
    ]
    monkeypatch.setattr(patchboard._threads, "IDLE_THREAD_TIMEOUT", idle)
    listeners = Listeners()
    try:
        with (
            django_db_blocker.unblock(),
            override_settings(PATCHBOARD={"MAX_THREADS": max_threads}),
        ):
            yield listeners
    finally:
        for thread in listeners.threads():
            thread.join(10 + idle)
        del connections.settings[ALIAS]


@pytest.fixture
def use_database(
    database: dict[str, Any], monkeypatch: pytest.MonkeyPatch, django_db_blocker: Any
) -> Callable[..., contextlib.AbstractContextManager[Listeners]]:
    """:func:`listener_database` on this module's database: ``use_database(conn_max_age=60)``."""
    return functools.partial(listener_database, database, monkeypatch, django_db_blocker)


async def one_query(listeners: Listeners) -> Backend:
    """Collect a signal whose one sync listener runs one query, under a deadline: where it ran."""
    signal = Signal(name="tests.connections.query")
    signal.connect(listeners.query, weak=False)
    outcome = (await signal.collect_async(None, deadline=5))[0]
    assert outcome.status == "ok", outcome.error
    return outcome.value  # type: ignore[no-any-return]


def notes(params: dict[str, Any]) -> int:
    """How many rows the ``note`` table holds, committed."""
    with admin(params) as session:
        row = session.execute("SELECT count(*) FROM note").fetchone()
    assert row is not None
    return int(row[0])


def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``condition()`` holds within ``timeout`` (polled; another thread must act)."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        pause.wait(0.01)
    return condition()


def _on_server(params: dict[str, Any], pid: int) -> str | None:
    """The state of backend ``pid`` of the database (``idle``, ``idle in transaction``...)."""
    with admin(params) as session:
        row = session.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s AND datname = %s",
            (pid, params["NAME"]),
        ).fetchone()
    return None if row is None else str(row[0])


# -- kept between calls ---------------------------------------------------------------------

PATHS = {
    "deadline": ({}, {"deadline": 5}),
    "timeout": ({"timeout": 5}, {}),
    "thread_sensitive=False": ({"thread_sensitive": False}, {}),
    "queue": ({}, {"queue": True}),
}
"""How a sync listener comes to run in a listener thread: (connect options, collect options)."""


@pytest.mark.parametrize("path", list(PATHS))
async def test_listener_threads_keep_their_connections_between_calls(
    path: str, use_database: Callable[..., Any]
) -> None:
    """200 collects from 20 concurrent callers: at most MAX_THREADS backends, one per thread."""
    connect, collect = PATHS[path]
    with use_database(conn_max_age=60, idle=BUSY_IDLE) as listeners:
        signal = Signal(name="tests.connections.kept")
        signal.connect(listeners.query, weak=False, **connect)

        async def caller() -> None:
            for _ in range(COLLECTS // CALLERS):
                collected = await signal.collect_async(None, **collect)
                assert collected[0].status == "ok", collected[0].error

        await asyncio.gather(*(caller() for _ in range(CALLERS)))

    backends = listeners.backends
    assert len(backends) == COLLECTS
    assert all(b.thread.name.startswith("patchboard-") for b in backends)
    per_thread = {b.thread: {o.key for o in backends if o.thread is b.thread} for b in backends}
    assert all(len(used) == 1 for used in per_thread.values()), "a thread reconnected"
    assert len({b.key for b in backends}) <= LIMIT


def test_the_sync_twins_threads_keep_their_connections_too(
    use_database: Callable[..., Any],
) -> None:
    """collect() with a deadline from plain threads (no event loop): the same threads, kept."""
    with use_database(conn_max_age=60, idle=BUSY_IDLE) as listeners:
        signal = Signal(name="tests.connections.twins")
        signal.connect(listeners.query, weak=False)
        failures: list[Any] = []

        def caller() -> None:
            for _ in range(COLLECTS // LIMIT):
                outcome = signal.collect(None, deadline=5)[0]
                if outcome.status != "ok":
                    failures.append(outcome.error)

        callers = [threading.Thread(target=caller) for _ in range(LIMIT)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join(60)

    assert failures == []
    backends = listeners.backends
    assert len(backends) == COLLECTS
    assert all(b.thread.name.startswith("patchboard-") for b in backends)
    assert len({b.key for b in backends}) <= LIMIT


async def test_with_conn_max_age_0_each_call_closes_its_connection(
    use_database: Callable[..., Any],
) -> None:
    """Django's default: like a request, each listener call ends with its connection closed."""
    with use_database(conn_max_age=0, max_threads=1) as listeners:
        for _ in range(5):
            backend = await one_query(listeners)
            assert backend.wrapper.connection is None

    assert len(listeners.threads()) == 1  # one thread served every call
    assert len({b.key for b in listeners.backends}) == 5  # and connected for each


async def test_an_idle_thread_closes_its_connections_when_it_exits(
    use_database: Callable[..., Any], database: dict[str, Any]
) -> None:
    with use_database(conn_max_age=60) as listeners:
        first = await one_query(listeners)
        second = await one_query(listeners)
        assert second.key == first.key  # kept while the thread lives
        assert first.wrapper.connection is not None

        await anyio.to_thread.run_sync(first.thread.join, 10)

        assert not first.thread.is_alive()
        assert first.wrapper.connection is None
        assert await anyio.to_thread.run_sync(
            _eventually, lambda: _on_server(database, first.pid) is None
        )


async def test_an_abandoned_thread_closes_its_connections_when_it_returns(
    use_database: Callable[..., Any],
) -> None:
    """Its caller gave up: the connection it used is not trusted with another call."""
    release = threading.Event()
    with use_database(conn_max_age=60, max_threads=1) as listeners:

        def stuck(sender: Any, **kwargs: Any) -> None:
            listeners.record()
            release.wait(30)

        signal = Signal(name="tests.connections.abandoned")
        signal.connect(stuck, weak=False, on_error="log")
        collected = await signal.collect_async(None, deadline=0.2)
        assert collected[0].status == "timeout"
        [abandoned] = listeners.backends
        assert abandoned.wrapper.connection is not None  # still running
        release.set()
        assert await anyio.to_thread.run_sync(
            _eventually, lambda: thread_stats().abandoned_running == 0
        )
        assert abandoned.wrapper.connection is None

        after = await one_query(listeners)
        assert after.thread is abandoned.thread  # the thread serves on, with a new connection
        assert after.key != abandoned.key


# -- never inside a transaction -------------------------------------------------------------


async def test_a_listener_that_fails_inside_atomic_leaves_its_kept_connection_clean(
    use_database: Callable[..., Any], database: dict[str, Any]
) -> None:
    with use_database(conn_max_age=60, max_threads=1) as listeners:

        def fails(sender: Any, **kwargs: Any) -> None:
            listeners.record()
            with transaction.atomic(using=ALIAS), connections[ALIAS].cursor() as cursor:
                cursor.execute("INSERT INTO note (body) VALUES ('fails')")
                raise RuntimeError("after the insert")

        signal = Signal(name="tests.connections.atomic_error")
        signal.connect(fails, weak=False, on_error="log")
        assert (await signal.collect_async(None, deadline=5))[0].status == "error"
        [failed] = listeners.backends
        assert _on_server(database, failed.pid) == "idle"

        after = await one_query(listeners)
        assert after.key == failed.key  # rolled back by atomic: kept
        assert not after.wrapper.in_atomic_block
    assert notes(database) == 0


async def test_a_transaction_left_open_is_rolled_back_and_its_connection_dropped(
    use_database: Callable[..., Any], database: dict[str, Any]
) -> None:
    """A listener that enters an atomic block and never leaves it: nothing stays open."""
    with use_database(conn_max_age=60, max_threads=1) as listeners:

        def leaves_it_open(sender: Any, **kwargs: Any) -> None:
            listeners.record()
            transaction.atomic(using=ALIAS).__enter__()
            with connections[ALIAS].cursor() as cursor:
                cursor.execute("INSERT INTO note (body) VALUES ('left open')")

        signal = Signal(name="tests.connections.left_open")
        signal.connect(leaves_it_open, weak=False)
        assert (await signal.collect_async(None, deadline=5))[0].status == "ok"
        [left] = listeners.backends
        assert await anyio.to_thread.run_sync(
            _eventually, lambda: _on_server(database, left.pid) is None
        )

        after = await one_query(listeners)
        assert after.thread is left.thread
        assert after.key != left.key
        assert not after.wrapper.in_atomic_block
    assert notes(database) == 0


# -- health checks ----------------------------------------------------------------------------


async def test_a_kept_connection_the_server_closed_is_replaced_by_the_health_check(
    use_database: Callable[..., Any], database: dict[str, Any]
) -> None:
    """CONN_HEALTH_CHECKS: the next call finds its thread's dead connection and reconnects."""
    with use_database(conn_max_age=60, health_checks=True, max_threads=1) as listeners:
        first = await one_query(listeners)
        with admin(database) as session:
            session.execute("SELECT pg_terminate_backend(%s)", (first.pid,))

        after = await one_query(listeners)

        assert after.thread is first.thread
        assert after.key != first.key


@override_settings(DEBUG=True)
async def test_each_call_starts_with_no_queries_logged(use_database: Callable[..., Any]) -> None:
    """Under DEBUG, ``connection.queries`` holds one call's queries, as one request's."""
    with use_database(conn_max_age=60, max_threads=1) as listeners:

        def logged(sender: Any, **kwargs: Any) -> int:
            listeners.record()
            return len(connections[ALIAS].queries)

        signal = Signal(name="tests.connections.queries")
        signal.connect(logged, weak=False)
        counts = [(await signal.collect_async(None, deadline=5))[0].value for _ in range(3)]

    assert len({b.key for b in listeners.backends}) == 1
    assert counts == [1, 1, 1]
