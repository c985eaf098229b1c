"""
The short-term queue: one bound per process, time limits, rejection,
cancellation, abandoned threads and the statistics that account for them.

Expiry is in ``test_expiry.py``, scaling in ``test_scaling.py`` and
``test_standing.py`` (standing delay, shedding), the accounting property in
``test_property.py``.

Most tests here still run a ``ShortTermQueue`` of their own through its
engine hook ``_run`` (an internal); those that dispatch with
``collect_async(queue=True)`` go through the process's queue.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
import pytest
from django.db import connections
from django.test import override_settings

import patchboard
import patchboard._threads
from patchboard import CircuitOpen, ListenerTimeout, Rejected, Signal
from patchboard._call import Call
from patchboard._config import QueueSettings, get_settings
from patchboard._listeners import Listener
from patchboard._queue import (
    QueueStatistics,
    ShortTermQueue,
    get_queue,
    queue_stats,
)
from patchboard._state import state
from patchboard.testing import VirtualClock, reset
from tests.short_term_queue.support import Blocker, listener, wait_until

# -- helpers -------------------------------------------------------------------------


@contextmanager
def queue_settings(**values: Any) -> Iterator[None]:
    """``PATCHBOARD["SHORT_TERM_QUEUE"]`` with ``values`` (lower-case keys)."""
    section = {key.upper(): value for key, value in values.items()}
    with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": section}):
        yield


SIGNAL = Signal(name="tests.queue")


class Gauge:
    """
    Counts listener calls in progress, from any thread, and the most at once.

    ``full`` is set once ``full_at`` calls run together; listeners hold on
    until then, so the peak reaches the bound without any sleeping.
    """

    def __init__(self, full_at: int) -> None:
        self.full_at = full_at
        self.lock = threading.Lock()
        self.current = 0
        self.peak = 0
        self.calls = 0
        self.full = threading.Event()

    def enter(self) -> None:
        with self.lock:
            self.current += 1
            self.calls += 1
            self.peak = max(self.peak, self.current)
            if self.current >= self.full_at:
                self.full.set()

    def exit(self) -> None:
        with self.lock:
            self.current -= 1

    def sync_listener(self) -> Callable[..., Any]:
        def hold(sender: Any, **kwargs: Any) -> str:
            self.enter()
            try:
                self.full.wait(10)
                return "sync"
            finally:
                self.exit()

        return hold

    def async_listener(self) -> Callable[..., Any]:
        async def hold(sender: Any, **kwargs: Any) -> str:
            self.enter()
            try:
                await anyio.to_thread.run_sync(self.full.wait, 10)
                return "async"
            finally:
                self.exit()

        return hold


def _connect_all(signal: Signal, funcs: list[Callable[..., Any]]) -> None:
    for func in funcs:
        signal.connect(func, weak=False)


# -- the bound -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync", "mixed"])
async def test_many_callers_share_one_bound(kind: str) -> None:
    """Concurrent collectors on one loop never run more listeners at once than workers."""
    gauge = Gauge(full_at=3)
    funcs = [
        gauge.async_listener()
        if kind == "async" or (kind == "mixed" and i % 2)
        else gauge.sync_listener()
        for i in range(5)
    ]
    quote = Signal(name="quote")
    _connect_all(quote, funcs)
    results: list[patchboard.Collected] = []

    async def collector() -> None:
        results.append(await quote.collect_async(None, queue=True))

    with queue_settings(min_workers=3, max_workers=3), anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(collector)
        stats = queue_stats()

    assert gauge.peak == 3
    assert gauge.calls == 30
    assert all(len(c.by_status("ok")) == 5 for c in results)
    assert (stats.submitted, stats.completed, stats.running, stats.waiting) == (30, 30, 0, 0)


async def test_sync_twins_in_threads_go_through_the_same_bound() -> None:
    """collect() from WSGI-like threads (one event loop each) and async callers share it."""
    gauge = Gauge(full_at=4)
    funcs = [gauge.sync_listener() if i % 2 else gauge.async_listener() for i in range(6)]
    quote = Signal(name="quote")
    _connect_all(quote, funcs)
    from_threads: list[patchboard.Collected] = []
    errors: list[BaseException] = []

    def wsgi_request() -> None:
        try:
            from_threads.append(quote.collect(None, queue=True))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with queue_settings(min_workers=4, max_workers=4), anyio.fail_after(20):
        threads = [threading.Thread(target=wsgi_request) for _ in range(4)]
        for thread in threads:
            thread.start()
        from_loop = await quote.collect_async(None, queue=True)
        for thread in threads:
            await anyio.to_thread.run_sync(thread.join)
        stats = queue_stats()

    assert errors == []
    assert gauge.peak == 4
    assert gauge.calls == 30
    assert [len(c.by_status("ok")) for c in [from_loop, *from_threads]] == [6] * 5
    assert (stats.submitted, stats.completed, stats.running, stats.waiting) == (30, 30, 0, 0)


async def test_a_free_worker_goes_to_the_oldest_waiter_first() -> None:
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1))
    blocker = Blocker()
    order: list[int] = []

    def recorder(number: int) -> Listener:
        async def record(sender: Any, **kwargs: Any) -> None:
            order.append(number)

        return listener(record)

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        for number in range(5):
            tg.start_soon(queue._run, Call(recorder(number), SIGNAL, None, {}))
            await anyio.wait_all_tasks_blocked()
        assert queue.statistics().waiting == 5
        blocker.release()

    assert order == [0, 1, 2, 3, 4]


# -- time limits ---------------------------------------------------------------------


async def test_an_async_item_past_the_task_time_limit_is_cancelled(logs: Any) -> None:
    queue = ShortTermQueue(QueueSettings(task_time_limit=0.05))
    cancelled = anyio.Event()

    async def slow(sender: Any, **kwargs: Any) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    with anyio.fail_after(10):
        outcome = await queue._run(Call(listener(slow, on_error="log"), SIGNAL, None, {}))

    assert outcome.status == "timeout"
    assert isinstance(outcome.error, ListenerTimeout)
    assert outcome.error.limit == 0.05
    assert cancelled.is_set()
    stats = queue.statistics()
    assert (stats.timed_out, stats.running, stats.abandoned) == (1, 0, 0)
    [event] = [e for e in logs.entries if e["event"] == "listener_timeout"]
    assert event["limit_s"] == 0.05


async def test_the_listener_timeout_overrides_the_task_time_limit() -> None:
    queue = ShortTermQueue(QueueSettings(task_time_limit=30))

    async def slow(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        outcome = await queue._run(
            Call(listener(slow, timeout=0.05, on_error="log"), SIGNAL, None, {})
        )

    assert outcome.status == "timeout"
    assert isinstance(outcome.error, ListenerTimeout)
    assert outcome.error.limit == 0.05


async def test_an_abandoned_thread_keeps_its_worker_until_it_returns(logs: Any) -> None:
    """A sync item past its limit times out at once, but its thread still holds the slot."""
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1, task_time_limit=0.05))
    gauge = Gauge(full_at=99)
    unblock = threading.Event()

    def stuck(sender: Any, **kwargs: Any) -> None:
        gauge.enter()
        try:
            unblock.wait(10)
        finally:
            gauge.exit()

    def quick(sender: Any, **kwargs: Any) -> str:
        gauge.enter()
        gauge.exit()
        return "quick"

    with anyio.fail_after(20):
        timed_out = await queue._run(Call(listener(stuck, on_error="log"), SIGNAL, None, {}))
        assert timed_out.status == "timeout"
        stats = queue.statistics()
        assert (stats.running, stats.abandoned, stats.abandoned_running) == (1, 1, 1)
        [event] = [e for e in logs.entries if e["event"] == "queue_thread_abandoned"]
        assert event["listener"].endswith("stuck")
        assert event["abandoned_running"] == 1

        async with anyio.create_task_group() as tg:
            results: list[patchboard.Outcome] = []

            async def second() -> None:
                results.append(await queue._run(Call(listener(quick), SIGNAL, None, {})))

            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            # The abandoned thread still runs, so the second item waits.
            assert queue.statistics().waiting == 1
            assert gauge.calls == 1
            unblock.set()

    assert results[0].value == "quick"
    assert gauge.peak == 1
    stats = queue.statistics()
    assert (stats.running, stats.abandoned_running, stats.completed, stats.timed_out) == (
        0,
        0,
        1,
        1,
    )


async def test_sync_items_run_in_parallel_off_the_thread_sensitive_thread() -> None:
    queue = ShortTermQueue(QueueSettings(min_workers=3, max_workers=3))
    gauge = Gauge(full_at=3)
    names: list[str] = []

    def hold(sender: Any, **kwargs: Any) -> None:
        names.append(threading.current_thread().name)
        gauge.sync_listener()(sender)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(queue._run, Call(listener(hold), SIGNAL, None, {}))

    assert gauge.peak == 3
    assert all(name.startswith("patchboard-") for name in names)


# -- rejection -----------------------------------------------------------------------


@pytest.mark.parametrize("fallback", [False, True])
async def test_past_max_pending_an_item_is_rejected_at_once(logs: Any, fallback: bool) -> None:
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1, max_pending=2))
    blocker = Blocker()
    called: list[bool] = []

    def extra(sender: Any, **kwargs: Any) -> str:
        called.append(True)
        return "ran"

    options: dict[str, Any] = {"on_error": "log", "default": "default"}
    if fallback:
        options["fallback"] = lambda sender, **kwargs: "fallback"

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
            await anyio.wait_all_tasks_blocked()
        assert (queue.statistics().running, queue.statistics().waiting) == (1, 2)
        with anyio.fail_after(5):
            outcome = await queue._run(Call(listener(extra, **options), SIGNAL, Gauge, {}))
        assert queue.statistics().waiting == 2
        blocker.release()

    assert outcome.status == "rejected"
    assert outcome.value == ("fallback" if fallback else "default")
    assert isinstance(outcome.error, Rejected)
    assert outcome.error.max_pending == 2
    assert outcome.error.listener.endswith("extra")
    assert called == []
    [event] = [e for e in logs.entries if e["event"] == "queue_item_rejected"]
    assert event["listener"].endswith("extra")
    assert event["signal"] == "tests.queue"
    assert event["sender"] == "tests.short_term_queue.test_queue.Gauge"
    assert event["max_pending"] == 2
    stats = queue.statistics()
    assert (stats.submitted, stats.completed, stats.rejected) == (4, 3, 1)


async def test_with_max_pending_zero_nothing_waits(logs: Any) -> None:
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1, max_pending=0))
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        outcome = await queue._run(Call(listener(blocker.run, on_error="log"), SIGNAL, None, {}))
        other = await queue._run(Call(listener(_noop, on_error="log"), SIGNAL, None, {}))
        blocker.release()
    assert (outcome.status, other.status) == ("rejected", "rejected")
    assert blocker.started == 1
    # Logged once per listener (the limiter's key), so both are.
    rejected = [e["listener"] for e in logs.entries if e["event"] == "queue_item_rejected"]
    assert len(rejected) == 2


async def test_a_rejected_item_raises_for_a_raise_policy_collector() -> None:
    quote = Signal(name="quote")
    blocker = Blocker()
    quote.connect(blocker.run, weak=False)

    with queue_settings(min_workers=1, max_workers=1, max_pending=0):
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(quote.collect_async, None, queue=True))
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(Rejected):
                await quote.collect_async(None, queue=True)
            blocker.release()


# -- cancellation --------------------------------------------------------------------


async def test_a_cancelled_callers_waiting_item_leaves_the_queue() -> None:
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1))
    blocker = Blocker()
    never = Blocker()
    callers = [anyio.CancelScope(), anyio.CancelScope()]

    async def waiting_caller(caller: anyio.CancelScope) -> None:
        with caller:
            await queue._run(Call(listener(never.run), SIGNAL, None, {}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        for caller in callers:
            tg.start_soon(waiting_caller, caller)
        await anyio.wait_all_tasks_blocked()
        assert queue.statistics().waiting == 3
        for caller in callers:
            caller.cancel()
        await anyio.wait_all_tasks_blocked()
        stats = queue.statistics()
        assert (stats.waiting, stats.cancelled) == (1, 2)
        blocker.release()

    stats = queue.statistics()
    assert never.started == 0
    assert blocker.started == 2
    assert (stats.submitted, stats.completed, stats.cancelled) == (4, 2, 2)
    assert (stats.running, stats.waiting) == (0, 0)
    # They never reached the listener, yet the process's counts know how they ended.
    assert patchboard.outcome_counts()["cancelled"] == 2


async def test_a_waiting_task_cancelled_by_the_engine_leaves_the_queue() -> None:
    """The engine cancels its tasks with ``Task.cancel()`` (a sibling's error, a disconnect)."""
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1))
    blocker = Blocker()
    never = Blocker()

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        task = asyncio.ensure_future(queue._run(Call(listener(never.run), SIGNAL, None, {})))
        await anyio.wait_all_tasks_blocked()
        assert queue.statistics().waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = queue.statistics()
        assert (stats.waiting, stats.running, stats.cancelled) == (0, 1, 1)
        blocker.release()

    assert never.started == 0
    assert queue.statistics().running == 0


async def test_a_caller_cancelled_as_it_is_granted_a_worker_gives_it_to_the_next() -> None:
    """
    Cancelled after the queue handed its call a worker but before the call
    woke up: the worker goes to the next in line, the call counts as cancelled.
    """
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1))
    blocker = Blocker()
    never = Blocker()
    next_in_line = Blocker()
    next_in_line.release()
    tasks: list[asyncio.Task[Any]] = []

    async def first() -> None:
        await queue._run(Call(listener(blocker.run), SIGNAL, None, {}))
        # The worker was just handed to the waiter behind; it has not woken yet.
        tasks[0].cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tasks.append(asyncio.ensure_future(queue._run(Call(listener(never.run), SIGNAL, None, {}))))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(queue._run, Call(listener(next_in_line.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        assert queue.statistics().waiting == 2
        blocker.release()
        with pytest.raises(asyncio.CancelledError):
            await tasks[0]

    assert never.started == 0
    assert next_in_line.started == 1
    stats = queue.statistics()
    assert (stats.submitted, stats.completed, stats.cancelled) == (3, 2, 1)
    assert (stats.running, stats.waiting) == (0, 0)


async def test_a_waiter_leaving_the_line_reevaluates_it(logs: Any) -> None:
    """A cancelled waiter's departure is an event like any other: an at-risk head grows the pool."""
    clock = VirtualClock(0)
    settings = QueueSettings(
        min_workers=1, max_workers=2, target_wait=3000, item_expiry=3600, task_time_limit=3600
    )
    queue = ShortTermQueue(settings, clock=clock)
    blocker = Blocker()
    leaving = anyio.CancelScope()

    async def leaving_caller() -> None:
        with leaving:
            await queue._run(Call(listener(blocker.run), SIGNAL, None, {}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))  # the head
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(leaving_caller)
        await anyio.wait_all_tasks_blocked()
        clock.advance(1800.0000004)  # the head is at risk (AT_RISK_FRACTION 0.5 x 3600 s)
        leaving.cancel()
        await anyio.wait_all_tasks_blocked()
        stats = queue.statistics()
        assert (stats.workers, stats.running, stats.waiting, stats.cancelled) == (2, 2, 0, 1)
        blocker.release()

    [event] = [e for e in logs.entries if e["event"] == "queue_scaled_up"]
    assert (event["reason"], event["workers"], event["waiting"]) == ("at_risk", 2, 1)
    assert event["oldest_wait_s"] == 1800.0  # to the microsecond


async def test_a_cancelled_callers_running_item_is_cancelled() -> None:
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1))
    cancelled = anyio.Event()

    async def slow(sender: Any, **kwargs: Any) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(slow), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        assert queue.statistics().running == 1
        tg.cancel_scope.cancel()

    assert cancelled.is_set()
    stats = queue.statistics()
    assert (stats.running, stats.cancelled, stats.submitted) == (0, 1, 1)


async def test_a_cancelled_callers_sync_item_is_abandoned_and_accounted(logs: Any) -> None:
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1))
    entered = threading.Event()
    unblock = threading.Event()
    returned = threading.Event()

    def stuck(sender: Any, **kwargs: Any) -> None:
        entered.set()
        unblock.wait(10)
        returned.set()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue._run, Call(listener(stuck), SIGNAL, None, {}))
            await anyio.to_thread.run_sync(entered.wait, 10)
            tg.cancel_scope.cancel()
        stats = queue.statistics()
        assert (stats.cancelled, stats.abandoned, stats.abandoned_running, stats.running) == (
            1,
            1,
            1,
            1,
        )
        unblock.set()
        await anyio.to_thread.run_sync(returned.wait, 10)
        # The worker is given back right after the listener returns; the next item gets it.
        outcome = await queue._run(Call(listener(_done_blocker().run), SIGNAL, None, {}))

    assert outcome.status == "ok"
    stats = queue.statistics()
    assert (stats.running, stats.abandoned_running) == (0, 0)
    assert [e["event"] for e in logs.entries].count("queue_thread_abandoned") == 1


async def test_a_returning_abandoned_thread_hands_its_worker_on_at_once(logs: Any) -> None:
    """
    The worker an abandoned thread kept goes to the head of the line the
    moment the thread returns (woken from that thread), and how long the
    thread held it counts in the service time. Virtual time: the waiter's own
    timers are half an hour away, so only the returning thread can wake it.
    """
    clock = VirtualClock(1000)
    settings = QueueSettings(
        min_workers=2,
        max_workers=4,
        target_wait=3000,
        item_expiry=3600,
        task_time_limit=0.05,  # real seconds: the stuck calls time out at once
    )
    queue = ShortTermQueue(settings, clock=clock)
    unblock = [threading.Event(), threading.Event()]

    def stuck(index: int) -> Callable[..., None]:
        def run(sender: Any, **kwargs: Any) -> None:
            unblock[index].wait(10)

        return run

    async def quick(sender: Any, **kwargs: Any) -> str:
        return "quick"

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for index in range(2):
                call = Call(listener(stuck(index), on_error="log"), SIGNAL, None, {})
                tg.start_soon(queue._run, call)
        stats = queue.statistics()
        assert (stats.timed_out, stats.abandoned, stats.abandoned_running, stats.running) == (
            2,
            2,
            2,
            2,
        )
        async with anyio.create_task_group() as tg:
            results: list[patchboard.Outcome] = []

            async def waiting_caller() -> None:
                results.append(await queue._run(Call(listener(quick), SIGNAL, None, {})))

            tg.start_soon(waiting_caller)
            await anyio.wait_all_tasks_blocked()
            assert queue.statistics().waiting == 1
            clock.advance(1800)  # the waiter is at risk now, the threads held 1800 s
            unblock[0].set()

        stats = queue.statistics()
        # The thread's 1800 s, then the quick call's 0 s: 1800 + 0.2 x (0 - 1800).
        assert stats.service_time == 1440
        assert (stats.workers, stats.abandoned, stats.abandoned_running) == (4, 2, 1)
        unblock[1].set()
        assert await anyio.to_thread.run_sync(
            wait_until, lambda: queue.statistics().abandoned_running == 0
        )

    assert [r.value for r in results] == ["quick"]
    stats = queue.statistics()
    assert (stats.running, stats.completed, stats.timed_out) == (0, 1, 2)
    [event] = [e for e in logs.entries if e["event"] == "queue_scaled_up"]
    assert (event["reason"], event["workers"], event["waiting"]) == ("at_risk", 4, 1)


async def _noop(sender: Any, **kwargs: Any) -> None:
    return None


def _done_blocker() -> Blocker:
    blocker = Blocker()
    blocker.release()
    return blocker


async def test_a_failing_listener_never_cancels_another_collectors_items() -> None:
    failing = Signal(name="failing")
    steady = Signal(name="steady")
    gate = anyio.Event()
    sibling_cancelled = anyio.Event()

    @patchboard.receiver(failing, on_error="raise")
    async def boom(sender: Any, **kwargs: Any) -> None:
        await gate.wait()
        raise RuntimeError("boom")

    @patchboard.receiver(failing)
    async def sibling(sender: Any, **kwargs: Any) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            sibling_cancelled.set()

    @patchboard.receiver(steady)
    async def keeps_going(sender: Any, **kwargs: Any) -> str:
        await sibling_cancelled.wait()
        return "done"

    steady_results: list[patchboard.Collected] = []

    async def steady_collector() -> None:
        steady_results.append(await steady.collect_async(None, queue=True))

    with queue_settings(min_workers=4, max_workers=4), anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(steady_collector)
            await anyio.wait_all_tasks_blocked()
            gate.set()
            with pytest.raises(RuntimeError, match="boom"):
                await failing.collect_async(None, queue=True)
        stats = queue_stats()

    assert steady_results[0].values() == ["done"]
    assert (stats.completed, stats.failed, stats.cancelled) == (1, 1, 1)


# -- statistics, repr and the process's queue ------------------------------------------


async def test_queue_stats_counts_each_outcome_once() -> None:
    """A call its circuit refused is ``circuit_open``, not ``failed``: a listener's error."""
    quote = Signal(name="quote")
    down = patchboard.CircuitBreaker("tests.short_term_queue.down")
    down.force_open()

    @patchboard.receiver(quote)
    async def ok(sender: Any, **kwargs: Any) -> int:
        return 1

    @patchboard.receiver(quote, on_error="log")
    def fails(sender: Any, **kwargs: Any) -> int:
        raise ValueError("nope")

    @patchboard.receiver(quote, timeout=0.02, on_error="log")
    async def late(sender: Any, **kwargs: Any) -> int:
        await anyio.sleep_forever()
        return 0  # pragma: no cover

    @patchboard.receiver(quote, breaker=down, on_error="log")
    async def refused(sender: Any, **kwargs: Any) -> int:
        return 0  # pragma: no cover

    with queue_settings(), anyio.fail_after(10):
        await quote.collect_async(None, queue=True)
        await quote.collect_async(None, queue=True)
        stats = queue_stats()

    assert stats == QueueStatistics(
        workers=4,
        running=0,
        waiting=0,
        oldest_wait=0.0,
        service_time=stats.service_time,
        submitted=8,
        completed=2,
        failed=2,
        circuit_open=2,
        timed_out=2,
        expired=0,
        shed=0,
        rejected=0,
        cancelled=0,
        abandoned=0,
        abandoned_running=0,
    )


class OwnGuard:
    """A guard of the user's own that refuses every call: the queue cannot ask it beforehand."""

    def __enter__(self) -> OwnGuard:
        raise CircuitOpen("own", None)

    def __exit__(self, *exc_info: object) -> None:
        return None  # pragma: no cover

    async def __aenter__(self) -> OwnGuard:
        raise CircuitOpen("own", None)

    async def __aexit__(self, *exc_info: object) -> None:
        return None  # pragma: no cover


async def test_a_call_its_guard_refuses_on_a_worker_counts_as_circuit_open() -> None:
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1))
    guarded = listener(Blocker().run, breaker=OwnGuard(), on_error="log")
    outcome = await queue._run(Call(guarded, SIGNAL, None, {}))
    assert outcome.status == "circuit_open"
    stats = queue.statistics()
    assert (stats.submitted, stats.circuit_open, stats.failed) == (1, 1, 0)


async def test_the_wait_observer_sees_how_long_each_call_that_ran_waited_in_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """0.0 for a call that found a worker free, its wait for one that waited; none if refused."""
    waits: list[float] = []
    monkeypatch.setattr(ShortTermQueue, "wait_observer", waits.append)
    clock = VirtualClock(1000)
    settings = QueueSettings(min_workers=1, max_workers=1, target_wait=3000, max_pending=1)
    queue = ShortTermQueue(settings, clock=clock)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))  # waits
        await anyio.wait_all_tasks_blocked()
        refused = await queue._run(Call(listener(blocker.run, on_error="log"), SIGNAL, None, {}))
        assert refused.status == "rejected"  # the line is full
        clock.advance(3)
        blocker.release()
    assert waits == [0.0, 3.0]


async def test_repr_shows_live_state() -> None:
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=8))
    blocker = Blocker()
    assert repr(queue) == "<ShortTermQueue 1/8 workers, 0 running, 0 waiting>"
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        assert repr(queue) == "<ShortTermQueue 1/8 workers, 1 running, 2 waiting>"
        blocker.release()


def test_a_queue_built_without_settings_has_the_default_ones() -> None:
    queue = ShortTermQueue()
    assert queue.config == QueueSettings()
    assert queue.statistics().workers == QueueSettings().min_workers


def test_get_queue_is_rebuilt_when_the_setting_changes() -> None:
    first = get_queue()
    assert get_queue() is first
    with queue_settings(min_workers=2, max_workers=6):
        changed = get_queue()
        assert changed is not first
        assert (changed.config.min_workers, changed.config.max_workers) == (2, 6)
        assert queue_stats().workers == 2
    assert get_queue() is not changed


def test_a_queue_built_from_settings_no_longer_current_is_rebuilt() -> None:
    """
    A thread that read ``PATCHBOARD`` just before it changed may put back a
    queue built from the old settings: the next call replaces it.
    """
    with queue_settings(min_workers=2, max_workers=6):
        stale = get_queue()
    state.queue = stale  # what the racing thread did after the change dropped the queue
    current = get_queue()
    assert current is not stale
    assert current.config is get_settings().short_term_queue
    assert get_queue() is current


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID", default="none")


async def test_a_sync_item_sees_the_callers_context_variables() -> None:
    queue = ShortTermQueue(QueueSettings())

    def read(sender: Any, **kwargs: Any) -> str:
        return REQUEST_ID.get()

    token = REQUEST_ID.set("request-42")
    try:
        outcome = await queue._run(Call(listener(read), SIGNAL, None, {}))
    finally:
        REQUEST_ID.reset(token)
    assert outcome.value == "request-42"


@pytest.mark.django_db
async def test_a_sync_item_closes_the_db_connections_its_thread_opened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = ShortTermQueue(QueueSettings())
    wrapper_class = type(connections["default"])
    closed: list[Any] = []
    original_close = wrapper_class.close

    def close(self: Any) -> None:
        closed.append(self)
        original_close(self)  # (a no-op for SQLite's in-memory test database)

    monkeypatch.setattr(wrapper_class, "close", close)
    used: list[Any] = []

    def query(sender: Any, **kwargs: Any) -> Any:
        used.append(connections["default"])
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone()[0]

    outcome = await queue._run(Call(listener(query), SIGNAL, None, {}))
    assert outcome.value == 1
    assert closed == used, "the worker thread's connection was closed when the listener returned"


async def test_an_idle_worker_thread_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patchboard._threads, "IDLE_THREAD_TIMEOUT", 0.01)
    queue = ShortTermQueue(QueueSettings())

    def which(sender: Any, **kwargs: Any) -> threading.Thread:
        return threading.current_thread()

    first = (await queue._run(Call(listener(which), SIGNAL, None, {}))).value
    await anyio.to_thread.run_sync(first.join, 10)
    assert not first.is_alive()
    second = (await queue._run(Call(listener(which), SIGNAL, None, {}))).value
    assert second is not first
    assert second.name.startswith("patchboard-")


def test_reset_starts_a_fresh_queue() -> None:
    first = get_queue()
    reset()
    assert get_queue() is not first
    assert queue_stats().submitted == 0
