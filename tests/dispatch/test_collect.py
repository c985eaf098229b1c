"""collect_async / collect: every listener's response, gathered, never aggregated."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

import patchboard
from patchboard import Collected, Outcome, Signal, receiver

# The longest a test below waits for listeners to meet: only a broken build (listeners
# run one after another) ever waits that long, and then the test fails.
BARRIER_S = 5


class Boom(Exception):
    pass


async def test_values_in_connect_order_and_aggregation_is_the_collectors() -> None:
    quote = Signal(name="quote")
    dhl_done = anyio.Event()

    @receiver(quote)
    async def ups(sender, **kwargs):
        await dhl_done.wait()  # finishes after dhl: the order is connect order, not completion
        return 10

    @receiver(quote)
    async def dhl(sender, **kwargs):
        dhl_done.set()
        return 20

    @receiver(quote)
    def post(sender, **kwargs):
        return 12

    with anyio.fail_after(BARRIER_S):  # only if ups were awaited before dhl started
        collected = await quote.collect_async(sender=None)

    assert isinstance(collected, Collected)
    assert collected.values() == [10, 20, 12]
    assert sum(collected.values()) == 42
    assert [o.receiver for o in collected] == [ups, dhl, post]
    assert all(isinstance(o, Outcome) and o.status == "ok" and o.error is None for o in collected)
    assert collected.as_pairs() == [(ups, 10), (dhl, 20), (post, 12)]
    assert collected.errors() == {}


async def test_async_listeners_run_concurrently() -> None:
    """All three listeners are waiting at once: none waits for another to finish first."""
    slow = Signal()
    started = []
    release = anyio.Event()
    for _ in range(3):

        async def nap(sender, **kwargs):
            started.append(True)
            await release.wait()
            return "rested"

        slow.connect(nap, weak=False)

    collected: list[Outcome] = []

    async def collect() -> None:
        collected.extend(await slow.collect_async(sender=None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        try:
            await anyio.wait_all_tasks_blocked()
            # One after another, only the first would have started by now.
            assert len(started) == 3
        finally:
            release.set()

    assert [o.value for o in collected] == ["rested"] * 3


async def test_kwargs_and_sender_reach_listeners() -> None:
    quote = Signal()
    seen = {}

    @receiver(quote)
    async def listener(sender, *, cart, signal, **kwargs):
        seen.update(sender=sender, cart=cart, signal=signal)
        return cart * 2

    collected = await quote.collect_async(sender=Outcome, cart=21)

    assert collected.values() == [42]
    assert seen == {"sender": Outcome, "cart": 21, "signal": quote}


async def test_a_listener_that_never_suspends_runs_before_the_loop_turns() -> None:
    """Eagerly started: it runs inside the call, before anything already scheduled."""
    quote = Signal()
    turned: list[bool] = []
    seen: list[bool] = []

    @receiver(quote)
    async def quick(sender, **kwargs):
        seen.append(bool(turned))
        return 1

    asyncio.get_running_loop().call_soon(turned.append, True)
    assert (await quote.collect_async(sender=None)).values() == [1]
    assert seen == [False]


async def test_log_policy_turns_an_error_into_an_outcome_with_the_default(logs) -> None:
    quote = Signal(name="quote_requested")

    @receiver(quote, on_error="log", default=0)
    async def broken(sender, **kwargs):
        raise LookupError("no rate")

    @receiver(quote)
    async def fine(sender, **kwargs):
        return 5

    collected = await quote.collect_async(sender=Outcome, secret="hunter2")

    failed = collected[0]
    assert failed.status == "error"
    assert failed.value == 0
    assert isinstance(failed.error, LookupError)
    assert not failed.ok
    assert collected.values() == [0, 5]
    assert collected.errors() == {broken: failed.error}
    [event] = [e for e in logs.entries if e["event"] == "listener_failed"]
    assert event["log_level"] == "error"
    assert event["signal"] == "quote_requested"
    assert event["listener"].endswith("broken")
    assert event["sender"] == "patchboard._outcomes.Outcome"
    assert isinstance(event["exc_info"], LookupError)
    assert "hunter2" not in repr(event), "kwargs' values are never logged by default"


@override_settings(PATCHBOARD={"ON_ERROR": "log"})
async def test_listeners_that_do_not_say_follow_the_on_error_setting() -> None:
    quote = Signal()

    async def broken(sender, **kwargs):
        raise ValueError("boom")

    quote.connect(broken)

    collected = await quote.collect_async(sender=None)

    assert collected[0].status == "error"
    assert collected.values() == [None]


@override_settings(PATCHBOARD={"LOG_KWARGS": True})
async def test_kwargs_are_logged_only_when_asked(logs) -> None:
    quote = Signal()

    @receiver(quote, on_error="log")
    async def broken(sender, **kwargs):
        raise ValueError("boom")

    await quote.collect_async(sender=None, cart="c-1")

    [event] = [e for e in logs.entries if e["event"] == "listener_failed"]
    assert event["kwargs"] == {"cart": "c-1"}


async def test_cancelling_the_collector_cancels_its_listeners() -> None:
    quote = Signal()
    finished = []

    @receiver(quote)
    async def slow(sender, **kwargs):
        try:
            await asyncio.sleep(10)
        finally:
            finished.append("slow")

    with anyio.move_on_after(0.05) as scope:
        await quote.collect_async(sender=None)

    assert scope.cancelled_caught
    assert finished == ["slow"], "the listener task ended before the call returned"
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_no_listeners_collects_nothing() -> None:
    quote = Signal()
    collected = await quote.collect_async(sender=None)
    assert list(collected) == []
    assert not collected
    assert collected.values() == []


async def test_sender_filtering() -> None:
    quote = Signal()

    class Cart:
        pass

    class Basket:
        pass

    @receiver(quote, sender=Cart)
    async def only_carts(sender, **kwargs):
        return "cart"

    @receiver(quote)
    async def anyone(sender, **kwargs):
        return "any"

    assert (await quote.collect_async(sender=Cart)).values() == ["cart", "any"]
    assert (await quote.collect_async(sender=Basket)).values() == ["any"]


async def test_sync_and_async_listeners_overlap() -> None:
    """A sync listener runs concurrently with async ones, not before them (Django's asend)."""
    mixed = Signal()
    both_running = threading.Barrier(2, timeout=BARRIER_S)

    @receiver(mixed)
    def blocking(sender, **kwargs):
        both_running.wait()
        return "sync"

    @receiver(mixed)
    async def waiting(sender, **kwargs):
        await anyio.to_thread.run_sync(both_running.wait)
        return "async"

    collected = await mixed.collect_async(sender=None)

    assert collected.errors() == {}
    assert collected.values() == ["sync", "async"]


async def test_thread_insensitive_sync_listeners_run_in_parallel() -> None:
    """Three sync listeners in three threads at once: they all reach the barrier."""
    mixed = Signal()
    all_running = threading.Barrier(3, timeout=BARRIER_S)
    for _ in range(3):

        def blocking(sender, **kwargs):
            all_running.wait()
            return 1

        mixed.connect(blocking, weak=False, thread_sensitive=False)

    collected = await mixed.collect_async(sender=None)

    assert collected.errors() == {}
    assert collected.values() == [1, 1, 1]


def test_every_call_is_counted_once_by_status() -> None:
    from asgiref.sync import async_to_sync

    from patchboard import outcome_counts

    quote = Signal()

    @receiver(quote, on_error="log")
    async def broken(sender, **kwargs):
        raise ValueError("x")

    @receiver(quote)
    def fine(sender, **kwargs):
        return 1

    before = outcome_counts()
    async_to_sync(quote.collect_async)(sender=None)
    quote.collect(sender=None)
    after = outcome_counts()

    assert after["ok"] - before["ok"] == 2
    assert after["error"] - before["error"] == 2
    ended = sum(n for key, n in after.items() if key != "submitted")
    ended -= sum(n for key, n in before.items() if key != "submitted")
    assert ended == 4
    assert after["submitted"] - before["submitted"] == 4


async def test_a_listener_that_raises_cancelled_error_on_its_own_is_an_error_outcome() -> None:
    """Nothing is lost: a stray CancelledError from a listener is its error, not a cancellation."""
    quote = Signal()

    @receiver(quote, on_error="log", default="n/a")
    async def stray(sender, **kwargs):
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    @receiver(quote)
    async def fine(sender, **kwargs):
        await asyncio.sleep(0.01)
        return 1

    collected = await quote.collect_async(sender=None)

    assert [o.status for o in collected] == ["error", "ok"]
    assert isinstance(collected[0].error, asyncio.CancelledError)
    assert collected.values() == ["n/a", 1]


async def test_an_object_with_an_async_call_method_is_an_async_listener() -> None:
    """Regression: such a listener was called as a sync one, and its coroutine never awaited."""
    signal = Signal()

    class Quote:
        async def __call__(self, sender, **kwargs):
            await asyncio.sleep(0)
            return "awaited"

    signal.connect(Quote(), weak=False)
    assert (await signal.collect_async(sender=None)).values() == ["awaited"]
    collected = await sync_to_async(signal.collect, thread_sensitive=False)(sender=None)
    assert collected.values() == ["awaited"]


async def test_a_cancellation_while_siblings_are_cleaned_up_is_not_lost() -> None:
    """Cancelled while it waits for a cancelled sibling to finish: the collector ends cancelled."""
    quote = Signal()
    cleaning = anyio.Event()
    may_finish = anyio.Event()

    @receiver(quote)
    async def slow_to_stop(sender, **kwargs):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cleaning.set()
            await may_finish.wait()
            raise

    @receiver(quote, on_error="raise")
    async def broken(sender, **kwargs):
        raise LookupError("no rate")

    collector = asyncio.create_task(quote.collect_async(sender=None))
    await cleaning.wait()  # the error stopped the dispatch; its sibling is cleaning up
    collector.cancel()
    await anyio.wait_all_tasks_blocked()  # the collector got it, and still waits
    assert not collector.done()
    may_finish.set()

    with pytest.raises(asyncio.CancelledError):
        await collector
    assert collector.cancelled(), "the cancellation wins over the listener's error"


class Fatal(BaseException):
    """Not an Exception: never a listener's outcome, always the caller's."""


@pytest.mark.parametrize(
    ("error", "options"),
    [(LookupError, {"on_error": "raise"}), (Fatal, {})],
    ids=["raise_policy", "base_exception"],
)
@pytest.mark.parametrize("eager", [True, False], ids=["at_once", "after_a_checkpoint"])
async def test_an_error_reaches_the_caller_after_its_siblings_are_cancelled(
    eager: bool, error: type[BaseException], options: dict[str, str]
) -> None:
    quote = Signal()
    cancelled = anyio.Event()

    @receiver(quote)
    async def patient(sender, **kwargs):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @receiver(quote, **options)
    async def broken(sender, **kwargs):
        if not eager:
            await asyncio.sleep(0)
        raise error("no rate")

    with anyio.fail_after(BARRIER_S), pytest.raises(error, match="no rate"):
        await quote.collect_async(sender=None)
    assert cancelled.is_set(), "the sibling was cancelled before the call returned"


async def test_an_async_error_reaches_the_caller_while_the_sync_batch_is_in_its_thread() -> None:
    """
    Regression (``run_concurrently`` mutant 74, once listed as equivalent): an
    async listener with ``on_error="raise"`` fails while the sync batch still
    runs in the thread-sensitive thread. The batch's task is cancelled and has
    no result; the caller gets the listener's error, not a ``TypeError`` from
    reading the batch's missing outcomes, and the batch's calls still count.
    """
    signal = Signal(name="tests.collect.batch_in_thread")
    in_thread, release = threading.Event(), threading.Event()

    def slow_sync(sender, **kwargs):
        in_thread.set()
        release.wait(BARRIER_S)
        return "late"

    async def fails(sender, **kwargs):
        await anyio.to_thread.run_sync(in_thread.wait, BARRIER_S)
        raise Boom("fails")

    signal.connect(slow_sync, weak=False)
    signal.connect(fails, weak=False, on_error="raise")
    before = patchboard.outcome_counts()
    try:
        with pytest.raises(Boom):
            await signal.collect_async(sender=None)
        assert in_thread.is_set()  # the batch was in its thread when the error came
    finally:
        release.set()
    await sync_to_async(lambda: None, thread_sensitive=True)()  # the batch has ended
    after = patchboard.outcome_counts()
    assert after["ok"] - before["ok"] == 1  # the batch's call counted itself
    assert after["error"] - before["error"] == 1


async def test_an_async_listener_that_raises_before_its_first_step_fails_alone() -> None:
    """Calling it raised (a keyword it requires is missing): its outcome is the
    error, and the listeners after it still run, each timed from its own start."""
    signal = Signal(name="tests.collect.raises_at_call")

    async def needs_order(sender: Any, *, order: int, **kwargs: Any) -> int:
        return order

    async def answers(sender: Any, **kwargs: Any) -> str:
        return "ok"

    signal.connect(needs_order, weak=False, on_error="log")
    signal.connect(answers, weak=False)
    failed, ok = await signal.collect_async(sender=None)

    assert failed.status == "error" and isinstance(failed.error, TypeError)
    assert (ok.status, ok.value) == ("ok", "ok") and ok.elapsed >= 0
