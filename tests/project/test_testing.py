"""patchboard.testing: the helpers users' suites use."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from datetime import UTC, datetime

import anyio
import pytest
from django.test import override_settings

from patchboard import CircuitBreaker, Signal, _clock, outcome_counts, queue_stats, receiver
from patchboard.testing import VirtualClock, capture_dispatches, reset


def test_capture_dispatches_records_each_dispatch_with_its_outcomes() -> None:
    paid = Signal()

    @receiver(paid, on_error="log")
    def audit(sender, **kwargs):
        raise ValueError("x")

    @receiver(paid)
    def receipt(sender, **kwargs):
        return "sent"

    with capture_dispatches() as dispatches:
        paid.send_sync(sender=int)
        paid.collect(sender=str)
    paid.send_sync(sender=None)

    assert [(d.signal, d.sender) for d in dispatches] == [(paid, int), (paid, str)]
    assert dispatches[0].statuses() == ["error", "ok"]
    assert dispatches[1].outcomes[1].value == "sent"


def test_capture_dispatches_records_a_dispatch_that_raised() -> None:
    paid = Signal()

    @receiver(paid)
    def strict(sender, **kwargs):
        raise KeyError("x")

    with capture_dispatches() as dispatches, pytest.raises(KeyError):
        paid.send_sync(sender=None)

    assert dispatches[0].statuses() == ["error"]


def test_reset_zeroes_counters_and_rebuilds_the_queue() -> None:
    paid = Signal()

    @receiver(paid)
    def ok(sender, **kwargs):
        return 1

    paid.collect(sender=None, queue=True)
    assert outcome_counts()["ok"] >= 1
    assert queue_stats().submitted >= 1

    reset()

    assert sum(outcome_counts().values()) == 0
    assert queue_stats().submitted == 0


def test_virtual_clock_moves_only_forward_when_told() -> None:
    clock = VirtualClock(start=10)
    assert clock() == 10
    clock.advance(2.5)
    assert clock() == 12.5
    clock.set(20)
    assert clock() == 20
    with pytest.raises(ValueError, match="seconds must be >= 0, got -1"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="now must be >= the current time"):
        clock.set(5)


# -- VirtualClock installed ----------------------------------------------------------


async def test_an_installed_clock_is_patchboards_and_the_loops_and_comes_off_after() -> None:
    loop = asyncio.get_running_loop()
    with VirtualClock(100, wall_start=1_700_000_000) as clock:
        assert (_clock.now(), loop.time(), anyio.current_time()) == (100, 100, 100)
        assert _clock.wall() == 1_700_000_000
        clock.advance(5)
        assert (_clock.now(), loop.time(), _clock.wall()) == (105, 105, 1_700_000_005)
    assert _clock.now is time.monotonic and _clock.wall is time.time
    assert abs(loop.time() - time.monotonic()) < 60  # the loop's own clock again


async def test_an_idle_loop_jumps_to_its_next_timer_exactly(clock: VirtualClock) -> None:
    start = clock()
    await anyio.sleep(3600)
    assert clock() - start == 3600
    with anyio.move_on_after(5) as scope:
        await anyio.Event().wait()
    assert scope.cancelled_caught
    assert clock() - start == 3605


async def test_a_manual_clock_fires_timers_only_when_advanced() -> None:
    fired = anyio.Event()
    with VirtualClock(0, autojump=False) as clock:
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await anyio.sleep(10)
                fired.set()

            tg.start_soon(sleeper)
            await anyio.wait_all_tasks_blocked()
            clock.advance(9.5)
            await anyio.wait_all_tasks_blocked()
            assert not fired.is_set()
            clock.advance(0.5)
            await fired.wait()
        assert clock() == 10


async def test_a_deadline_and_the_queue_expire_on_virtual_time(clock: VirtualClock) -> None:
    """A listener stuck behind a full queue expires at ITEM_EXPIRY of virtual time, at once."""
    signal = Signal()
    release = anyio.Event()

    async def holder(sender: object, **kwargs: object) -> str:
        await release.wait()
        return "held"

    async def quote(sender: object, **kwargs: object) -> str:
        return "quote"

    signal.connect(holder, weak=False)
    section = {"MIN_WORKERS": 1, "MAX_WORKERS": 1, "ITEM_EXPIRY": 45, "TASK_TIME_LIMIT": 3600}
    with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": section}):
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(signal.collect_async, sender=None, queue=True))
            await anyio.wait_all_tasks_blocked()
            late = Signal()
            late.connect(quote, weak=False, on_error="log", default="fallback")
            start = clock()
            [outcome] = await late.collect_async(sender=None, queue=True)
            assert (outcome.status, outcome.value) == ("expired", "fallback")
            assert clock() - start == 45
            release.set()


async def test_a_sync_listener_in_a_thread_is_waited_for_not_jumped_over(
    clock: VirtualClock,
) -> None:
    """While a listener thread runs, time does not jump to the call's time limit."""
    signal = Signal()
    started = threading.Event()

    def slow(sender: object, **kwargs: object) -> str:
        started.set()
        time.sleep(0.05)  # the work itself: real time, which the clock lets pass
        return "done"

    signal.connect(slow, weak=False, timeout=3600)
    before = clock()
    [outcome] = await signal.collect_async(sender=None)
    assert (outcome.status, outcome.value) == ("ok", "done")
    assert started.is_set()
    assert 0 < clock() - before < 3600  # the real time the loop waited, not the limit


def test_installing_two_clocks_at_once_is_refused() -> None:
    with VirtualClock(0), pytest.raises(RuntimeError, match="installed already"):
        VirtualClock(0).__enter__()
    assert _clock.now is time.monotonic


def test_an_installed_clock_must_keep_nanoseconds() -> None:
    with pytest.raises(RuntimeError, match="less than 4194304 seconds"):
        VirtualClock(1_700_000_000).__enter__()
    assert _clock.now is time.monotonic


def test_a_passive_clock_drives_a_breaker_given_as_clock() -> None:
    clock = VirtualClock(1_700_000_000)
    breaker = CircuitBreaker(
        "tests.testing.passive", failure_threshold=1, reset_timeout=30, clock=clock
    )
    with pytest.raises(LookupError), breaker:
        raise LookupError("down")
    assert breaker.state == "open"
    assert breaker.retry_at == datetime.fromtimestamp(1_700_000_030, UTC)
    clock.advance(30)
    assert breaker.state == "half_open"
