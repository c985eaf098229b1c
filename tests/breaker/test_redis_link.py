"""
The Redis store's connections, on a private redis-server: bounded however many
event loops come and go, one quiet return to Redis after an outage, and what
the in-process fallback learned meanwhile kept (the more pessimistic state wins).

Internals on purpose: ``RedisLink`` and ``RedisStore``, driven directly to watch
the connections and the fallback that ``CircuitBreaker`` hides.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from patchboard import CircuitBreaker, CircuitOpen, Signal
from patchboard._breaker._machine import FAILURE
from patchboard._breaker._redis import RedisLink, RedisStore
from tests.services import RedisServer

pytestmark = pytest.mark.redis


def test_sync_dispatches_keep_to_the_pooled_connections(private_redis: RedisServer) -> None:
    # Every collect()/send() below reaches an async listener through
    # async_to_sync, on an event loop made for that one call; with
    # sync_interval=0 each one asks Redis.
    CircuitBreaker("pooled", store=f"{private_redis.url}?max_connections=4", sync_interval=0)
    signal = Signal(name="pooled")

    async def quote(sender: object, **kwargs: object) -> str:
        return "quote"

    signal.connect(quote, breaker="pooled")
    clients = int(private_redis.info("clients")["connected_clients"])
    commands = int(private_redis.info("stats")["total_commands_processed"])
    for _ in range(150):
        assert signal.collect(sender=None).values() == ["quote"]
    for _ in range(150):
        assert [response for _, response in signal.send(sender=None)] == ["quote"]
    stats = private_redis.info("stats")
    assert int(stats["total_commands_processed"]) - commands >= 300
    # No more connections than the pool holds, however many loops came and went.
    opened = int(private_redis.info("clients")["connected_clients"]) - clients
    assert opened <= 4


def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` (from a thread or a loop's executor) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


async def test_an_outage_ends_with_one_quiet_return_to_redis(
    private_redis: RedisServer, logs, monkeypatch
) -> None:
    monkeypatch.setattr(RedisLink, "retry_after", 0.05)
    # Every change of the link's state is logged: the events count them.
    monkeypatch.setattr(RedisLink, "log_interval", 0.0)
    b = CircuitBreaker("outage", store=private_redis.url, sync_interval=0)
    stop = threading.Event()
    calls = [0] * 12  # per caller: 6 threads, then 6 tasks; every call asks Redis

    def sync_caller(i: int) -> None:
        while not stop.is_set():
            with b:
                calls[i] += 1
            time.sleep(0.001)

    async def async_caller(i: int) -> None:
        while not stop.is_set():
            async with b:
                calls[i] += 1
            await asyncio.sleep(0.001)

    def each_made(more: int) -> Callable[[], bool]:
        target = [count + more for count in calls]
        return lambda: all(c >= t for c, t in zip(calls, target, strict=True))

    def events() -> list[str]:
        return [e["event"] for e in logs.entries if e["event"].startswith("circuit_store")]

    async def wait(condition: Callable[[], bool], what: str) -> None:
        await asyncio.to_thread(until, condition, what)

    threads = [threading.Thread(target=sync_caller, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    tasks = [asyncio.create_task(async_caller(i)) for i in range(6, 12)]
    try:
        await wait(each_made(20), "calls on Redis")  # every pool holds connections
        private_redis.stop()
        await wait(lambda: b.statistics().fallback, "the fallback")
        await wait(each_made(20), "calls on the fallback")
        private_redis.start()
        await wait(lambda: "circuit_store_recovered" in events(), "the recovery")
        await wait(each_made(100), "calls after the recovery")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for thread in threads:
            thread.join(timeout=30)
    assert events() == ["circuit_store_unavailable", "circuit_store_recovered"]
    store = [e for e in logs.entries if e["event"].startswith("circuit_store")]
    assert [e["breaker"] for e in store] == ["outage", "outage"]
    assert store[1]["down_s"] > 0
    assert b.statistics().fallback is False
    await b.aclose()


# -- what the fallback learned during an outage -------------------------------------------


class Boom(Exception):
    pass


async def call(b: CircuitBreaker, guard: str, calls: list[str], *, fail: bool = False) -> None:
    """One call through ``b``, with the async or the sync guard; it counts itself when it runs."""
    if guard == "async":
        async with b:
            calls.append("ran")
            if fail:
                raise Boom()
    else:
        with b:
            calls.append("ran")
            if fail:
                raise Boom()


def shared_state(server: RedisServer, name: str) -> dict[bytes, bytes]:
    with redis.Redis.from_url(server.url) as client:
        return client.hgetall(f"patchboard:breaker:{{{name}}}")  # type: ignore[return-value]


async def opened_in_an_outage(server: RedisServer, guard: str, calls: list[str]) -> CircuitBreaker:
    """A breaker whose circuit opened in-process while ``server`` was down; it is up again."""
    b = CircuitBreaker(
        "carrier", failure_threshold=2, reset_timeout=60, sync_interval=0, store=server.url
    )
    await call(b, guard, calls)  # Redis holds the state: closed
    server.stop()
    for _ in range(2):
        with pytest.raises(Boom):
            await call(b, guard, calls, fail=True)
    assert (b.statistics().fallback, b.state) == (True, "open")
    server.start()  # a restarted Redis: its state is gone (closed)
    return b


@pytest.mark.parametrize("guard", ["async", "sync"])
async def test_a_circuit_opened_during_an_outage_is_written_back_on_recovery(
    private_redis: RedisServer, logs, monkeypatch, guard: str
) -> None:
    monkeypatch.setattr(RedisLink, "retry_after", 0.0)  # try Redis again on the next call
    calls: list[str] = []
    b = await opened_in_an_outage(private_redis, guard, calls)

    for _ in range(20):
        with pytest.raises(CircuitOpen):
            await call(b, guard, calls)

    assert len(calls) == 3, "a call reached the dead carrier after Redis came back"
    stats = b.statistics()
    assert (stats.fallback, stats.state) == (False, "open")
    shared = shared_state(private_redis, "carrier")
    assert shared[b"s"] == b"o", "every process must know"
    assert (shared[b"f"], stats.failures) == (b"2", 2), "and why: the failures that opened it"
    # Open for what was left of the local circuit (60 s, less this test's seconds).
    assert stats.retry_at is not None
    left = stats.retry_at.timestamp() - time.time()
    assert 30 < left <= 60
    opened = [e for e in logs.entries if e["event"] == "circuit_opened"]
    assert len(opened) == 1, "the circuit opened once, in the outage; recovery changes nothing"
    await b.aclose()


async def test_an_open_circuit_in_redis_wins_over_the_local_one(
    private_redis: RedisServer, monkeypatch
) -> None:
    monkeypatch.setattr(RedisLink, "retry_after", 0.0)
    calls: list[str] = []
    b = await opened_in_an_outage(private_redis, "async", calls)
    # Meanwhile another process (a link of its own) opened the shared circuit, for 5 s.
    other = RedisStore(
        "carrier",
        dataclasses.replace(b.config, reset_timeout=5),
        f"{private_redis.url}?socket_timeout=1",
    )
    for _ in range(2):
        other.record(other.acquire(), FAILURE)
    theirs = shared_state(private_redis, "carrier")
    assert theirs[b"s"] == b"o"

    with pytest.raises(CircuitOpen):
        await call(b, "async", calls)

    assert shared_state(private_redis, "carrier")[b"ra"] == theirs[b"ra"], "Redis's stays"
    stats = b.statistics()
    assert stats.retry_at is not None
    assert stats.retry_at.timestamp() * 1000 == pytest.approx(int(theirs[b"ra"]), abs=1)
    other.link.close()
    await b.aclose()


async def test_a_fallback_that_stayed_closed_writes_nothing_back(
    private_redis: RedisServer, monkeypatch
) -> None:
    monkeypatch.setattr(RedisLink, "retry_after", 0.0)
    b = CircuitBreaker(
        "carrier", failure_threshold=3, reset_timeout=60, sync_interval=0, store=private_redis.url
    )
    calls: list[str] = []
    private_redis.stop()
    with pytest.raises(Boom):
        await call(b, "async", calls, fail=True)
    assert (b.statistics().fallback, b.state) == (True, "closed")
    private_redis.start()

    await call(b, "async", calls)

    assert shared_state(private_redis, "carrier") == {}
    assert (b.statistics().fallback, b.state) == (False, "closed")
    await b.aclose()


# -- leaving a dead Redis alone --------------------------------------------------------


class DeadRedis:
    """
    A TCP server that answers no Redis command: it counts each connection and
    closes it at once (a command on it fails), except that, while ``holding``,
    it keeps the next connection open without a word (a command on it hangs)
    until :meth:`release`.
    """

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}?socket_timeout=20"
        self.connections = 0
        self.holding = False
        self.held = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            self.connections += 1
            if self.holding:
                self.holding = False
                self.held.set()
                self._release.wait(20)
            conn.close()

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._release.set()
        self._server.close()


@pytest.fixture
def dead_redis() -> Iterator[DeadRedis]:
    server = DeadRedis()
    yield server
    server.close()


def test_a_failed_redis_is_left_alone_for_retry_after(dead_redis: DeadRedis, monkeypatch) -> None:
    monkeypatch.setattr(RedisLink, "retry_after", 60.0)
    b = CircuitBreaker("dead-redis", store=dead_redis.url, sync_interval=0)
    calls: list[str] = []

    asyncio.run(call(b, "sync", calls))  # finds Redis dead: the fallback admits it
    tried = dead_redis.connections
    assert tried > 0 and b.statistics().fallback

    for _ in range(5):
        asyncio.run(call(b, "sync", calls))
    assert dead_redis.connections == tried, "a call went back to the dead Redis at once"
    assert len(calls) == 6


def test_after_the_back_off_one_call_tries_redis_while_the_others_stay_away(
    dead_redis: DeadRedis, monkeypatch
) -> None:
    monkeypatch.setattr(RedisLink, "retry_after", 0.0)
    b = CircuitBreaker("dead-redis", store=dead_redis.url, sync_interval=0)
    calls: list[str] = []
    asyncio.run(call(b, "sync", calls))  # Redis is down; with no back-off, the next call tries
    assert b.statistics().fallback
    monkeypatch.setattr(RedisLink, "retry_after", 60.0)
    dead_redis.holding = True
    trying = threading.Thread(target=asyncio.run, args=(call(b, "sync", calls),))
    trying.start()
    try:
        assert dead_redis.held.wait(10), "no call tried Redis again"
        tried = dead_redis.connections

        for _ in range(5):  # meanwhile: the fallback, not Redis
            asyncio.run(call(b, "sync", calls))
        assert dead_redis.connections == tried, "a second caller went to Redis"
    finally:
        dead_redis.release()
        trying.join(30)
    tried = dead_redis.connections  # the try failed: Redis is left alone again
    asyncio.run(call(b, "sync", calls))
    assert dead_redis.connections == tried, "a call went back to Redis right after the try failed"
    assert len(calls) == 8 and b.statistics().fallback


# -- Redis gone in the middle -----------------------------------------------------------


@pytest.mark.parametrize("guard", ["async", "sync"])
async def test_a_failure_reported_once_redis_is_gone_counts_on_the_fallback(
    private_redis: RedisServer, guard: str
) -> None:
    b = CircuitBreaker(
        "carrier", failure_threshold=1, reset_timeout=60, sync_interval=0, store=private_redis.url
    )
    calls: list[str] = []

    async def admitted_by_redis_then_redis_goes() -> None:
        private_redis.stop()
        raise Boom()

    with pytest.raises(Boom):
        if guard == "async":
            async with b:
                await admitted_by_redis_then_redis_goes()
        else:
            with b:
                await admitted_by_redis_then_redis_goes()

    assert (b.statistics().fallback, b.state) == (True, "open")
    with pytest.raises(CircuitOpen):
        await call(b, guard, calls)
    assert calls == []


def test_forcing_a_circuit_open_while_redis_is_down_raises_and_forces_the_fallback(
    private_redis: RedisServer,
) -> None:
    b = CircuitBreaker("carrier", sync_interval=0, store=private_redis.url)
    calls: list[str] = []
    asyncio.run(call(b, "sync", calls))  # Redis holds the state: closed
    private_redis.stop()

    with pytest.raises(redis.RedisError):
        b.force_open()

    with pytest.raises(CircuitOpen) as refused:
        asyncio.run(call(b, "sync", calls))
    assert refused.value.retry_at is None  # forced: no probe ever
    assert calls == ["ran"]


async def test_a_result_reported_when_redis_is_back_ends_the_outage(
    private_redis: RedisServer, monkeypatch, logs
) -> None:
    monkeypatch.setattr(RedisLink, "retry_after", 0.0)  # the next command tries Redis again
    b = CircuitBreaker("carrier", failure_threshold=10, sync_interval=60, store=private_redis.url)
    failed: list[BaseException] = []

    def another_caller() -> None:  # admitted from the fresh view; its failure finds Redis gone
        try:
            asyncio.run(call(b, "sync", [], fail=True))
        except Boom as exc:
            failed.append(exc)

    with pytest.raises(Boom):
        async with b:  # admitted by Redis
            private_redis.stop()
            other = threading.Thread(target=another_caller)
            other.start()
            other.join(30)
            assert failed and b.statistics().fallback
            private_redis.start()
            raise Boom()  # its failure is the first command Redis answers again

    assert b.statistics().fallback is False
    events = [e for e in logs.entries if e["event"].startswith("circuit_store")]
    assert [(e["event"], e["breaker"]) for e in events] == [
        ("circuit_store_unavailable", "carrier"),
        ("circuit_store_recovered", "carrier"),
    ]
    await b.aclose()


def test_store_events_say_how_many_were_not_logged_and_how_bad(logs, monkeypatch) -> None:
    """At most one of each event per log_interval; the next one logged counts the others."""
    link = RedisLink("redis://127.0.0.1:1/0")
    for _ in range(3):  # three outages in a row, each over at once
        link.failed(OSError("down"), "carrier", time.monotonic())
        link.succeeded("carrier", time.monotonic())
    monkeypatch.setattr(RedisLink, "log_interval", 0.0)
    link.failed(OSError("down"), "carrier", time.monotonic())
    link.succeeded("carrier", time.monotonic())

    events = [
        (e["event"], e["log_level"], e["suppressed"])
        for e in logs.entries
        if e["event"].startswith("circuit_store")
    ]
    assert events == [
        ("circuit_store_unavailable", "warning", 0),
        ("circuit_store_recovered", "info", 0),
        ("circuit_store_unavailable", "warning", 2),
        ("circuit_store_recovered", "info", 2),
    ]
    recovered = [e for e in logs.entries if e["event"] == "circuit_store_recovered"]
    assert all(e["down_s"] >= 0 and e["breaker"] == "carrier" for e in recovered)


def test_a_circuit_forced_open_stays_forced_on_the_fallback(private_redis: RedisServer) -> None:
    b = CircuitBreaker("carrier", sync_interval=0, store=private_redis.url)
    calls: list[str] = []
    b.force_open()
    private_redis.stop()

    with pytest.raises(CircuitOpen) as refused:
        asyncio.run(call(b, "sync", calls))

    assert b.statistics().fallback and calls == []
    assert refused.value.retry_at is None  # forced: no probe, on the fallback either


def test_a_control_that_reaches_redis_again_ends_the_outage(
    private_redis: RedisServer, monkeypatch, logs
) -> None:
    monkeypatch.setattr(RedisLink, "retry_after", 60.0)  # no call would try Redis meanwhile
    b = CircuitBreaker("carrier", sync_interval=0, store=private_redis.url)
    asyncio.run(call(b, "sync", []))
    private_redis.stop()
    asyncio.run(call(b, "sync", []))  # on the fallback
    private_redis.start()

    b.reset()  # a control always asks Redis

    assert b.statistics().fallback is False
    events = [e for e in logs.entries if e["event"].startswith("circuit_store")]
    assert [(e["event"], e["breaker"]) for e in events] == [
        ("circuit_store_unavailable", "carrier"),
        ("circuit_store_recovered", "carrier"),
    ]
