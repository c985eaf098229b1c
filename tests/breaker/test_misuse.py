"""Using a breaker the wrong way is refused clearly, or made harmless."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from patchboard import CircuitBreaker, CircuitOpen
from patchboard.testing import VirtualClock


class Boom(Exception):
    pass


@pytest.fixture
def breaker() -> CircuitBreaker:
    return CircuitBreaker(
        "tests.misuse", failure_threshold=2, reset_timeout=30, store="memory", clock=VirtualClock()
    )


def test_call_sync_refuses_an_async_function_without_calling_or_counting_it(breaker) -> None:
    called = []

    async def fetch() -> str:
        called.append(True)
        return "never awaited"

    with pytest.raises(
        TypeError, match=r"call_sync\(\).*async function.*fetch.*await breaker.call"
    ):
        breaker.call_sync(fetch)
    stats = breaker.statistics()
    assert (called, stats.successes, stats.failures_total) == ([], 0, 0)


def test_call_sync_refuses_a_function_that_returns_an_awaitable(breaker) -> None:
    async def fetch() -> str:
        return "never awaited"

    with pytest.raises(TypeError, match=r"cannot call the async function.*returned a coroutine"):
        breaker.call_sync(lambda: fetch())
    stats = breaker.statistics()
    assert (stats.successes, stats.failures_total) == (0, 0)


async def test_call_refuses_a_function_that_returns_no_awaitable(breaker) -> None:
    with pytest.raises(TypeError, match=r"call\(\) awaits.*returned int.*call_sync"):
        await breaker.call(lambda: 42)
    stats = breaker.statistics()
    assert (stats.successes, stats.failures_total) == (0, 0)


async def test_a_guarded_function_passed_to_its_own_breaker_counts_once(breaker) -> None:
    """Re-entry is harmless: the outer entry decides; an inner one passes through."""

    @breaker
    async def fetch() -> str:
        return "ok"

    @breaker
    async def failing() -> str:
        raise Boom

    assert await breaker.call(fetch) == "ok"
    assert breaker.statistics().successes == 1
    with pytest.raises(Boom):
        await breaker.call(failing)
    assert breaker.statistics().failures_total == 1
    assert breaker.state == "closed"  # one failure of two: still closed


def test_a_nested_sync_entry_counts_once(breaker) -> None:
    @breaker
    def failing() -> None:
        raise Boom

    with pytest.raises(Boom):
        breaker.call_sync(failing)
    assert breaker.statistics().failures_total == 1
    with pytest.raises(Boom), breaker:
        failing()
    assert breaker.statistics().failures_total == 2
    assert breaker.state == "open"


async def test_an_inner_refusal_never_reopens_the_circuit(breaker) -> None:
    """While half-open, the probe's own nested entry must not refuse and fail it."""
    clock: Any = breaker.config.clock

    @breaker
    async def probe_me() -> str:
        return "healthy"

    for _ in range(2):
        with pytest.raises(Boom):
            async with breaker:
                raise Boom
    assert breaker.state == "open"
    clock.advance(30)
    assert await breaker.call(probe_me) == "healthy"
    assert breaker.state == "closed"
    with pytest.raises(CircuitOpen):
        breaker.force_open()
        await breaker.call(probe_me)
    assert breaker.statistics().rejected == 1


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_huge_backoff_without_a_cap_grows_to_the_longest_wait_not_to_overflow(
    store: str, request: pytest.FixtureRequest
) -> None:
    """Found by the properties: ``backoff_factor=1e300`` made the second opening overflow."""
    from patchboard.testing import VirtualClock

    clock = VirtualClock(1_700_000_000.0)
    options: dict[str, Any] = {"clock": clock}
    if store == "redis":
        options = {"store": request.getfixturevalue("redis_url"), "sync_interval": 0}
    name = f"tests.hostile.backoff.{store}.{id(clock)}"
    breaker = CircuitBreaker(
        name, failure_threshold=1, reset_timeout=0.01, backoff_factor=1e300, **options
    )

    class Down(Exception):
        pass

    with pytest.raises(Down), breaker:
        raise Down
    clock.advance(1)
    if store == "redis":
        import time

        time.sleep(0.05)  # the Redis store runs on the server's clock
    with pytest.raises(Down), breaker:  # the probe fails: the reset timeout grows
        raise Down
    assert breaker.state == "open"
    assert breaker.retry_at is not None and breaker.retry_at.year > 2200


# -- re-entry through a thread's fast sync entry (it writes no context variable) ------------


def test_entries_inside_a_fast_sync_entry_count_once_whatever_their_form(breaker) -> None:
    """``with``, ``call_sync()``, a decorated function and an event loop run inside a
    fast sync entry are nested in it: one success for the whole."""

    @breaker
    async def fetch() -> str:
        return "ok"

    @breaker
    def outer() -> str:
        with breaker:
            inner = breaker.call_sync(lambda: asyncio.run(breaker.call(fetch)))
        return inner

    @breaker
    def in_a_loop() -> str:
        return asyncio.run(breaker.call(fetch))  # the loop's task: the same thread

    assert outer() == "ok"
    with breaker:
        assert breaker.call_sync(outer) == "ok"
    assert in_a_loop() == "ok"
    assert (breaker.statistics().successes, breaker.statistics().failures_total) == (3, 0)


def test_a_nested_entry_never_refuses_after_another_thread_opened_the_circuit(breaker) -> None:
    """The outer entry was admitted while closed; another thread opens the circuit
    meanwhile: the inner entry is part of the admitted call, not a new one."""
    opened = threading.Event()

    def open_it() -> None:
        for _ in range(2):
            with pytest.raises(Boom), breaker:
                raise Boom
        opened.set()

    @breaker
    def outer() -> str:
        threading.Thread(target=open_it).start()
        assert opened.wait(10)
        assert breaker.state == "open"
        with breaker:  # nested: neither refused nor counted
            return breaker.call_sync(lambda: "still admitted")

    assert outer() == "still admitted"
    stats = breaker.statistics()
    assert (stats.rejected, stats.successes, stats.failures_total) == (0, 1, 2)


def test_fast_sync_entries_of_many_threads_each_count_once_with_their_nested_ones(
    breaker,
) -> None:
    b = CircuitBreaker("tests.misuse.threads", failure_threshold=10_000, store="memory")
    start = threading.Barrier(6)

    @b
    def leaf(n: int) -> None:
        if n % 4 == 0:
            raise Boom

    def worker() -> None:
        start.wait()
        for n in range(400):
            with contextlib.suppress(Boom):
                if n % 2:
                    b.call_sync(leaf, n)  # a nested entry inside a fast one
                else:
                    with b:
                        leaf(n)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stats = b.statistics()
    assert (stats.successes, stats.failures_total) == (6 * 300, 6 * 100)


async def test_a_sync_with_block_that_awaits_is_one_tasks_entry_not_anothers(breaker) -> None:
    """Inside a running loop, ``with`` keeps to the context stack: two tasks whose
    blocks interleave in one thread are two calls, neither nested in the other."""
    both_in = asyncio.Barrier(2)

    async def guarded() -> None:
        with breaker:
            await both_in.wait()

    await asyncio.gather(guarded(), guarded())
    assert breaker.statistics().successes == 2


async def test_a_sync_entry_in_another_thread_with_the_outer_entrys_context_is_nested(
    breaker,
) -> None:
    """sync_to_async runs the sync function in a thread with a copy of the caller's
    context: the async entry's stack travels with it, so the inner entry is nested."""

    @breaker
    def inner() -> str:
        with breaker:
            return "ok"

    async with breaker:
        assert await sync_to_async(inner)() == "ok"
    assert breaker.statistics().successes == 1
