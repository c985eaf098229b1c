"""
The Redis store's connections, on a private redis-server: bounded however many
event loops come and go, and one quiet return to Redis after an outage.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from patchboard import Signal
from patchboard.breaker import CircuitBreaker
from patchboard.breaker.redis import RedisLink
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
    assert b.statistics().fallback is False
    await b.aclose()
