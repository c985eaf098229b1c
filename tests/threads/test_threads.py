"""
Listener threads: a process-wide bound on sync listener calls off the caller's
thread, abandoned threads included, and the sync twins' path without a loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from asgiref.sync import AsyncToSync
from django.test import override_settings

from patchboard import ListenerTimeout, Signal, thread_stats

LIMIT = 4
CALLERS = 20


class Stuck:
    """A sync listener that blocks until released, counting its calls and returns."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.started = 0
        self.returned = 0
        self.all_returned = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, sender: Any, **kwargs: Any) -> str:
        with self.lock:
            self.started += 1
            self.threads.add(threading.current_thread().name)
        self.release.wait(30)
        with self.lock:
            self.returned += 1
            if self.returned == self.started:
                self.all_returned.set()
        return "late"


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    # The setting change drops the process's listener threads: they are rebuilt with LIMIT.
    with override_settings(PATCHBOARD={"MAX_THREADS": LIMIT}):
        yield


def _signal_with(stuck: Stuck, **options: Any) -> Signal:
    signal = Signal(name="tests.threads")
    signal.connect(stuck, weak=False, on_error="log", **options)
    return signal


def _eventually(condition: Any, timeout: float = 10.0) -> bool:
    """Whether ``condition()`` holds within ``timeout`` (polled; another thread must act)."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return bool(condition())


def _live_patchboard_threads(stuck: Stuck) -> int:
    alive = {thread.name for thread in threading.enumerate()}
    return len(stuck.threads & alive)


async def test_abandoned_threads_keep_their_place_in_the_bound() -> None:
    """20 concurrent callers of a listener stuck past its timeout: never more than 4 threads."""
    stuck = Stuck()
    signal = _signal_with(stuck, timeout=0.05)

    results = await asyncio.gather(*(signal.collect_async(None) for _ in range(CALLERS)))

    statuses = [collected[0].status for collected in results]
    assert statuses == ["timeout"] * CALLERS
    assert stuck.started == LIMIT  # the others never got a thread within their time limit
    stats = thread_stats()
    assert (stats.limit, stats.busy, stats.waiting) == (LIMIT, LIMIT, 0)
    assert (stats.abandoned, stats.abandoned_running) == (LIMIT, LIMIT)
    assert _live_patchboard_threads(stuck) == LIMIT

    stuck.release.set()
    assert await anyio.to_thread.run_sync(stuck.all_returned.wait, 10)
    # The returning threads give their place back.
    assert await anyio.to_thread.run_sync(_eventually, lambda: thread_stats().busy == 0)
    stats = thread_stats()
    assert (stats.busy, stats.abandoned, stats.abandoned_running) == (0, LIMIT, 0)


async def test_an_abandoned_thread_is_logged_when_abandoned_and_when_it_returns(logs) -> None:
    stuck = Stuck()
    signal = _signal_with(stuck, timeout=0.05)

    collected = await signal.collect_async(Stuck)
    stuck.release.set()
    assert await anyio.to_thread.run_sync(stuck.all_returned.wait, 10)
    assert await anyio.to_thread.run_sync(
        _eventually, lambda: thread_stats().abandoned_running == 0
    )

    assert collected[0].status == "timeout"
    abandoned = [e for e in logs.entries if e["event"] == "listener_thread_abandoned"]
    returned = [e for e in logs.entries if e["event"] == "listener_thread_returned"]
    assert len(abandoned) == 1 and abandoned[0]["abandoned_running"] == 1
    assert abandoned[0]["listener"].endswith("Stuck")
    assert abandoned[0]["signal"] == "tests.threads"
    assert abandoned[0]["sender"] == "tests.threads.test_threads.Stuck"
    assert len(returned) == 1 and returned[0]["ran_s"] > 0
    assert returned[0]["listener"] == abandoned[0]["listener"]
    assert returned[0]["signal"] == "tests.threads"
    assert returned[0]["ran_s"] == round(returned[0]["ran_s"], 6)


def test_the_sync_twins_share_the_bound_without_an_event_loop(monkeypatch) -> None:
    """collect() from plain threads: timed sync listeners run in bounded threads, no loop."""
    loops = []
    original = AsyncToSync.__call__

    def counting(self: AsyncToSync, *args: Any, **kwargs: Any) -> Any:
        loops.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AsyncToSync, "__call__", counting)
    stuck = Stuck()
    signal = _signal_with(stuck, timeout=0.05)
    outcomes: list[Any] = []

    def caller() -> None:
        outcomes.append(signal.collect(None)[0])

    callers = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(30)

    assert [o.status for o in outcomes] == ["timeout"] * CALLERS
    # Those that never got a thread too: their own limit passed while they waited for one.
    assert all(isinstance(o.error, ListenerTimeout) and o.error.limit == 0.05 for o in outcomes)
    assert stuck.started == LIMIT
    assert thread_stats().busy == LIMIT
    assert loops == []  # the direct path: no async_to_sync, no event loop
    stuck.release.set()
    assert stuck.all_returned.wait(10)


def test_the_sync_twins_direct_path_returns_the_value_of_a_timed_listener(monkeypatch) -> None:
    loops = []
    original = AsyncToSync.__call__
    monkeypatch.setattr(
        AsyncToSync, "__call__", lambda self, *a, **k: loops.append(self) or original(self, *a, **k)
    )
    signal = Signal(name="tests.threads.quick")
    where: list[str] = []

    def quick(sender: Any, value: int, **kwargs: Any) -> int:
        where.append(threading.current_thread().name)
        return value * 2

    def inline(sender: Any, value: int, **kwargs: Any) -> int:
        return value + 1

    signal.connect(quick, weak=False, timeout=5)
    signal.connect(inline, weak=False)

    collected = signal.collect(sender=None, value=21)

    assert [(o.status, o.value) for o in collected] == [("ok", 42), ("ok", 22)]
    assert where and where[0].startswith("patchboard-")
    assert loops == []

    async def needs_a_loop(sender: Any, **kwargs: Any) -> str:
        return "async"

    signal.connect(needs_a_loop, weak=False)
    assert signal.collect(sender=None, value=1).values() == [2, 2, "async"]
    assert len(loops) == 1  # an async listener still takes the loop path (the counter works)


def test_a_thread_waiting_for_a_place_takes_the_first_one_freed() -> None:
    """Past the bound, a call waits (within its limit) and runs when a thread returns."""
    gate = threading.Event()
    inside = threading.Semaphore(0)

    def held(sender: Any, **kwargs: Any) -> str:
        inside.release()
        gate.wait(30)
        return "held"

    signal = Signal(name="tests.threads.wait")
    signal.connect(held, weak=False, timeout=20)
    results: list[Any] = []
    holders = [
        threading.Thread(target=lambda: results.append(signal.collect(None).values()))
        for _ in range(LIMIT + 1)
    ]
    for thread in holders:
        thread.start()
    for _ in range(LIMIT):
        assert inside.acquire(timeout=10)
    assert _eventually(lambda: thread_stats().waiting == 1)
    assert not inside.acquire(blocking=False)  # the fifth waits for a place: the bound holds
    gate.set()
    for thread in holders:
        thread.join(30)
    assert results == [["held"]] * (LIMIT + 1)
    assert thread_stats().abandoned == 0


async def test_a_thread_is_idle_again_before_its_place_is_free() -> None:
    """
    The call that takes a returning thread's place takes the thread too: 20
    callers, 400 calls, never more than ``MAX_THREADS`` threads started (nor,
    with ``CONN_MAX_AGE``, database connections; see
    tests/threads/test_connections.py).
    """
    signal = Signal(name="tests.threads.reuse")

    def where(sender: Any, **kwargs: Any) -> str:
        return threading.current_thread().name

    signal.connect(where, weak=False, timeout=5)

    async def caller() -> set[str]:
        return {(await signal.collect_async(None))[0].value for _ in range(CALLERS)}

    threads = set().union(*await asyncio.gather(*(caller() for _ in range(CALLERS))))
    assert len(threads) <= LIMIT


async def test_an_async_caller_waiting_for_a_place_takes_the_first_one_freed() -> None:
    """The async twin: past the bound, a caller's event loop is woken when a thread returns."""
    gate = threading.Event()
    inside = threading.Semaphore(0)

    def held(sender: Any, **kwargs: Any) -> str:
        inside.release()
        gate.wait(30)
        return "held"

    signal = Signal(name="tests.threads.wait_async")
    signal.connect(held, weak=False, timeout=20)
    with anyio.fail_after(30):
        callers = [asyncio.ensure_future(signal.collect_async(None)) for _ in range(LIMIT + 1)]
        for _ in range(LIMIT):
            assert await anyio.to_thread.run_sync(inside.acquire, True, 10)
        assert await anyio.to_thread.run_sync(_eventually, lambda: thread_stats().waiting == 1)
        assert not inside.acquire(blocking=False)  # the fifth waits for a place
        gate.set()
        results = await asyncio.gather(*callers)
    assert [collected.values() for collected in results] == [["held"]] * (LIMIT + 1)
    stats = thread_stats()
    assert (stats.abandoned, stats.waiting) == (0, 0)


def test_a_sync_call_past_its_timeout_abandons_its_thread(logs) -> None:
    """collect() without a loop: the thread it stopped waiting for is counted and logged."""
    stuck = Stuck()
    signal = _signal_with(stuck, timeout=0.05)

    collected = signal.collect(None)

    assert collected[0].status == "timeout"
    stats = thread_stats()
    assert (stats.busy, stats.abandoned, stats.abandoned_running) == (1, 1, 1)
    assert [e["event"] for e in logs.entries if e["event"].startswith("listener_thread")] == [
        "listener_thread_abandoned"
    ]
    stuck.release.set()
    assert stuck.all_returned.wait(10)
    assert _eventually(lambda: thread_stats().abandoned_running == 0)
    assert _eventually(lambda: thread_stats().busy == 0)
    assert [e["event"] for e in logs.entries if e["event"].startswith("listener_thread")] == [
        "listener_thread_abandoned",
        "listener_thread_returned",
    ]


def test_a_sync_call_that_returns_in_time_abandons_nothing(logs) -> None:
    signal = Signal(name="tests.threads.in_time")
    signal.connect(lambda sender, **kwargs: "quick", weak=False, timeout=5)

    assert signal.collect(None).values() == ["quick"]
    assert _eventually(lambda: thread_stats().busy == 0)
    stats = thread_stats()
    assert (stats.abandoned, stats.abandoned_running) == (0, 0)
    assert not [e for e in logs.entries if e["event"].startswith("listener_thread")]


async def test_a_caller_cancelled_after_its_thread_returned_abandons_nothing() -> None:
    """The thread returned, but its caller was cancelled before it heard: nothing to abandon."""
    gate = threading.Event()
    inside = threading.Event()

    def quick(sender: Any, **kwargs: Any) -> str:
        inside.set()
        gate.wait(30)
        return "quick"

    signal = Signal(name="tests.threads.raced")
    signal.connect(quick, weak=False, timeout=20)
    caller = asyncio.ensure_future(signal.collect_async(None))
    assert await anyio.to_thread.run_sync(inside.wait, 10)
    gate.set()
    # The loop is held here until the thread has returned and given its place back:
    # the caller, still waiting, is cancelled before the loop tells it.
    assert _eventually(lambda: thread_stats().busy == 0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    stats = thread_stats()
    assert (stats.abandoned, stats.abandoned_running) == (0, 0)


def test_listener_threads_are_daemons_numbered_from_one() -> None:
    """They never keep the process alive (an idle one lingers IDLE_THREAD_TIMEOUT)."""
    stuck = Stuck()
    signal = _signal_with(stuck, timeout=0.05)
    callers = [threading.Thread(target=signal.collect, args=(None,)) for _ in range(LIMIT)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(30)
    assert stuck.threads == {f"patchboard-{n}" for n in range(1, LIMIT + 1)}
    assert all(thread.daemon for thread in threading.enumerate() if thread.name in stuck.threads)
    stuck.release.set()
    assert stuck.all_returned.wait(10)
