"""
Deadlines: a dispatch returns by its deadline whatever its listeners do, and
the deadline is the budget of everything under it.

Deadlines run on the real monotonic clock (asyncio has no virtual one); the
tests use short ones and assert what happened, never how long it took:
every wait that could hang is bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest
from django.test import override_settings

from patchboard import CircuitBreaker, Expired, ListenerTimeout, Signal, _deadline, outcome_counts
from patchboard._deadline import remaining
from patchboard.testing import VirtualClock

SHORT = 0.05


class Never:
    """A listener that waits for an event nobody sets: only a deadline ends it."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.started = 0

    async def __call__(self, sender: Any, **kwargs: Any) -> str:
        self.started += 1
        await self.event.wait()
        return "too late"


def _ended(counts: dict[str, int]) -> int:
    return sum(n for key, n in counts.items() if key != "submitted")


@pytest.mark.parametrize("verb", ["collect_async", "send_async"])
async def test_an_async_verb_returns_by_its_deadline_with_timeouts(verb: str) -> None:
    signal = Signal(name="tests.deadlines.collect")
    never = Never()

    async def quick(sender: Any, **kwargs: Any) -> str:
        return "quick"

    signal.connect(never, weak=False, on_error="log", default="stood in")
    signal.connect(quick, weak=False)

    with anyio.fail_after(5):
        collected = await getattr(signal, verb)(sender=None, deadline=SHORT)

    assert [o.status for o in collected] == ["timeout", "ok"]
    assert collected.values() == ["stood in", "quick"]
    error = collected[0].error
    assert isinstance(error, ListenerTimeout) and error.deadline
    assert collected.deadline_hit
    counts = outcome_counts()
    assert counts["submitted"] == 2 == _ended(counts)


async def test_without_a_deadline_hit_the_collect_says_so() -> None:
    signal = Signal(name="tests.deadlines.fine")

    async def quick(sender: Any, **kwargs: Any) -> str:
        return "quick"

    signal.connect(quick, weak=False)
    collected = await signal.collect_async(sender=None, deadline=5)
    assert (collected.values(), collected.deadline_hit) == (["quick"], False)


async def test_a_listeners_own_timeout_is_cut_to_what_is_left() -> None:
    signal = Signal(name="tests.deadlines.cut")
    never = Never()
    signal.connect(never, weak=False, timeout=30, on_error="log")

    with anyio.fail_after(5):
        collected = await signal.collect_async(sender=None, deadline=SHORT)

    error = collected[0].error
    assert isinstance(error, ListenerTimeout)
    assert error.deadline and error.limit <= SHORT


async def test_a_queued_call_never_waits_past_the_deadline() -> None:
    """One worker: the first call runs into the deadline, the second never starts."""
    queue = {"MIN_WORKERS": 1, "MAX_WORKERS": 1, "TARGET_WAIT": 10}
    signal = Signal(name="tests.deadlines.queue")
    first, second = Never(), Never()
    signal.connect(first, weak=False, on_error="log")
    signal.connect(second, weak=False, on_error="log", fallback=lambda **kw: "fallback")

    with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": queue}), anyio.fail_after(5):
        collected = await signal.collect_async(sender=None, queue=True, deadline=SHORT)

    assert [o.status for o in collected] == ["timeout", "expired"]
    assert (first.started, second.started) == (1, 0)
    expired = collected[1].error
    assert isinstance(expired, Expired) and expired.deadline
    assert collected[1].value == "fallback"
    assert collected.deadline_hit


async def test_a_nested_dispatch_inherits_the_remaining_budget() -> None:
    outer, inner = Signal(name="tests.deadlines.outer"), Signal(name="tests.deadlines.inner")
    seen: dict[str, Any] = {}

    async def measures(sender: Any, **kwargs: Any) -> None:
        seen["inner_left"] = remaining()

    async def dispatches_again(sender: Any, **kwargs: Any) -> str:
        seen["outer_left"] = remaining()
        await inner.collect_async(sender=None, deadline=60)  # the earlier deadline wins
        return "outer done"

    inner.connect(measures, weak=False)
    outer.connect(dispatches_again, weak=False, on_error="log")
    with anyio.fail_after(5):
        collected = await outer.collect_async(sender=None, deadline=0.5)

    assert collected.values() == ["outer done"]
    assert 0 < seen["inner_left"] <= seen["outer_left"] <= 0.5


async def test_a_nested_listener_is_cut_at_the_outer_deadline() -> None:
    outer, inner = Signal(name="tests.deadlines.outer2"), Signal(name="tests.deadlines.inner2")
    never = Never()
    inner.connect(never, weak=False, on_error="log")

    async def dispatches_again(sender: Any, **kwargs: Any) -> None:
        await inner.collect_async(sender=None)  # no deadline of its own: the outer one binds

    outer.connect(dispatches_again, weak=False, on_error="log")
    with anyio.fail_after(5):
        collected = await outer.collect_async(sender=None, deadline=SHORT)

    assert collected[0].status == "timeout" and collected.deadline_hit
    assert never.started == 1
    counts = outcome_counts()
    # The inner call ended too: cut with its dispatch ("cancelled") or at the deadline ("timeout").
    assert counts["submitted"] == 2 == _ended(counts)


def test_the_sync_twin_returns_by_its_deadline_abandoning_the_thread() -> None:
    signal = Signal(name="tests.deadlines.sync")
    release = threading.Event()
    started = threading.Event()

    def stuck(sender: Any, **kwargs: Any) -> str:  # plain sync: runs in a thread under a deadline
        started.set()
        release.wait(30)
        return "late"

    def quick(sender: Any, **kwargs: Any) -> str:
        return "quick"

    signal.connect(stuck, weak=False, on_error="log")
    signal.connect(quick, weak=False)
    try:
        collected = signal.collect(sender=None, deadline=SHORT)
        assert [o.status for o in collected] == ["timeout", "ok"]
        assert started.is_set() and collected.deadline_hit
    finally:
        release.set()


def test_an_ordered_signal_under_a_deadline_starts_nothing_late() -> None:
    signal = Signal(ordered=True, name="tests.deadlines.ordered")
    release = threading.Event()
    calls: list[str] = []

    def first(sender: Any, **kwargs: Any) -> None:
        calls.append("first")
        release.wait(30)

    def second(sender: Any, **kwargs: Any) -> None:
        calls.append("second")

    signal.connect(first, weak=False, priority=2, on_error="log")
    signal.connect(second, weak=False, priority=1, on_error="log")
    try:
        collected = signal.collect(sender=None, deadline=SHORT)
    finally:
        release.set()
    assert [o.status for o in collected] == ["timeout", "expired"]
    assert calls == ["first"]


def test_a_call_is_late_with_less_than_half_of_its_dispatchs_budget_left() -> None:
    assert not _deadline.started_late(0.1)  # no deadline: never late
    with _deadline.budget(10):
        assert not _deadline.started_late(5.1) and _deadline.started_late(4.9)
        assert not _deadline.started_late(5.0)  # exactly half left: not less than half
        with _deadline.budget(1):  # a shorter nested budget: late by its own
            assert not _deadline.started_late(0.6) and _deadline.started_late(0.4)
        with _deadline.budget(60):  # a longer one changes nothing: late by the request's
            assert _deadline.started_late(4.9)


async def test_a_deadline_cut_counts_against_the_breaker_unless_the_call_started_late(
    clock: VirtualClock,
) -> None:
    """
    Regression: a hung service never opened a circuit whose callers' deadlines
    were shorter than its listener's timeout (each cut counted as nothing).
    """
    breaker = CircuitBreaker("tests.deadlines.breaker", store="memory", failure_threshold=1)
    signal = Signal(name="tests.deadlines.breaker")
    never = Never()
    signal.connect(never, weak=False, breaker=breaker, on_error="log", timeout=30)

    # Late: the request spent most of its budget before this dispatch (waiting in
    # line, or on slower work): the caller ran out of time, not the service.
    with _deadline.budget(1.0):
        clock.advance(0.6)
        with anyio.fail_after(5):
            late = await signal.collect_async(sender=None)
    assert late[0].status == "timeout" and late.deadline_hit
    assert (breaker.state, breaker.statistics().failures_total) == ("closed", 0)

    # The whole budget, and no answer: the service failed the test.
    with anyio.fail_after(5):
        cut = await signal.collect_async(sender=None, deadline=SHORT)
    assert cut[0].status == "timeout" and cut.deadline_hit
    assert (breaker.state, breaker.statistics().failures_total) == ("open", 1)


def _half_open(name: str) -> CircuitBreaker:
    clock = VirtualClock()
    breaker = CircuitBreaker(
        name, store="memory", failure_threshold=1, reset_timeout=10, clock=clock
    )
    with pytest.raises(RuntimeError), breaker:
        raise RuntimeError("down")
    clock.advance(10)
    assert breaker.state == "half_open"
    return breaker


async def test_a_caller_with_a_deadline_shorter_than_the_timeout_probes() -> None:
    """
    Regression: a caller whose deadline was shorter than its listener's
    timeout got no probe, so a circuit whose callers all had one (the
    README's quickstart: deadline 1.5 s, timeout 2 s) never closed again.
    """
    breaker = _half_open("tests.deadlines.probe.short")
    signal = Signal(name="tests.deadlines.probe.short")

    async def probe(sender: Any, **kwargs: Any) -> str:
        return "healthy"

    signal.connect(probe, weak=False, breaker=breaker, timeout=5, on_error="log")
    collected = await signal.collect_async(sender=None, deadline=1)  # less than its timeout
    assert collected[0].status == "ok" and breaker.state == "closed"


async def test_no_probe_for_a_late_caller(clock: VirtualClock) -> None:
    breaker = _half_open("tests.deadlines.probe")
    signal = Signal(name="tests.deadlines.probe")
    calls = []

    async def probe(sender: Any, **kwargs: Any) -> str:
        calls.append(remaining())
        return "healthy"

    signal.connect(probe, weak=False, breaker=breaker, timeout=5, on_error="log")

    with _deadline.budget(1.0):
        clock.advance(0.6)
        late = await signal.collect_async(sender=None)
    assert late[0].status == "circuit_open" and calls == []
    stats = breaker.statistics()
    assert (stats.state, stats.probes, stats.rejected) == ("half_open", 0, 1)

    on_time = await signal.collect_async(sender=None, deadline=1)
    assert on_time[0].status == "ok" and len(calls) == 1
    assert breaker.state == "closed"


RECEIPTS: list[Any] = []


async def send_receipt(sender: Any, **kwargs: Any) -> None:
    """A background listener (module level, so a worker can find it)."""
    await asyncio.sleep(0.1)  # longer than the request's deadline
    RECEIPTS.append(remaining())


async def test_background_listeners_are_not_bound_by_the_deadline() -> None:
    """The immediate backend runs the task inside the request: still no deadline in it."""
    signal = Signal(name="tests.deadlines.background")
    signal.connect(send_receipt, weak=False, mode="background")
    RECEIPTS.clear()
    try:
        with anyio.fail_after(5):
            collected = await signal.send_async(sender=None, deadline=SHORT)
    finally:
        signal.disconnect(send_receipt)
    assert [o.status for o in collected] == ["enqueued"]
    assert not collected.deadline_hit
    assert RECEIPTS == [None]  # it ran to its end, under no deadline


async def test_the_default_deadline_applies_to_collects_only() -> None:
    signal = Signal(name="tests.deadlines.default")
    never = Never()
    signal.connect(never, weak=False, on_error="log")

    with override_settings(PATCHBOARD={"DEFAULT_DEADLINE": SHORT}), anyio.fail_after(5):
        collected = await signal.collect_async(sender=None)
        assert collected[0].status == "timeout"
        with anyio.move_on_after(0.2) as scope:
            await signal.send_async(sender=None)  # no deadline: waits for the listener
        assert scope.cancelled_caught
        with anyio.move_on_after(0.2) as scope:
            await signal.collect_async(sender=None, deadline=None)  # explicitly none
        assert scope.cancelled_caught
    never.event.set()
    counts = outcome_counts()
    assert counts["submitted"] == 3
    assert counts["timeout"] == 1 and counts["cancelled"] == 2


@pytest.mark.parametrize(
    ("deadline", "error", "message"),
    [
        (0, ValueError, "deadline must be a finite number of seconds > 0, got 0"),
        (-1, ValueError, "deadline must be a finite number of seconds > 0, got -1"),
        (float("inf"), ValueError, "deadline must be a finite number of seconds > 0"),
        ("1", TypeError, "deadline must be a number of seconds, got '1'"),
    ],
)
async def test_a_bad_deadline_is_refused_naming_it(deadline: Any, error: Any, message: str) -> None:
    signal = Signal(name="tests.deadlines.bad")
    with pytest.raises(error, match=message.replace("(", r"\(")):
        await signal.collect_async(sender=None, deadline=deadline)
    with pytest.raises(error):
        signal.send_sync(sender=None, deadline=deadline)


async def test_a_cancelled_collect_counts_every_call_once() -> None:
    signal = Signal(name="tests.deadlines.cancelled")
    nevers = [Never() for _ in range(3)]
    for never in nevers:
        signal.connect(never, weak=False)
    task = asyncio.ensure_future(signal.collect_async(sender=None))
    await anyio.wait_all_tasks_blocked()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    counts = outcome_counts()
    assert counts["submitted"] == 3 == counts["cancelled"] == _ended(counts)


def test_under_a_deadline_a_plain_sync_listener_runs_in_a_listener_thread() -> None:
    """Without one it runs in the caller's thread; a deadline takes it to a thread
    the deadline can abandon."""
    signal = Signal(name="tests.deadlines.placed")
    where: list[str] = []

    def listener(sender: Any, **kwargs: Any) -> None:
        where.append(threading.current_thread().name)

    signal.connect(listener, weak=False)
    signal.collect(sender=None)
    signal.collect(sender=None, deadline=30)

    assert where[0] == threading.current_thread().name
    assert where[1].startswith("patchboard-")


def test_a_sync_call_with_nothing_left_of_its_deadline_never_starts() -> None:
    """On an ordered signal, the first listener uses the whole budget (on a
    virtual clock, to the tick): the next never starts, and ends "expired"
    having waited nothing (a call is expired, not timed out, at exactly zero)."""
    signal = Signal(name="tests.deadlines.nothing_left", ordered=True)
    calls: list[str] = []
    with VirtualClock(autojump=False) as clock:

        def spends_it_all(sender: Any, **kwargs: Any) -> None:
            calls.append("first")
            clock.advance(1)

        def too_late(sender: Any, **kwargs: Any) -> None:
            calls.append("second")

        signal.connect(spends_it_all, weak=False, priority=2)
        signal.connect(too_late, weak=False, priority=1, on_error="log")
        first, second = signal.collect(sender=None, deadline=1)

    assert calls == ["first"]
    assert first.status == "ok"
    assert second.status == "expired" and isinstance(second.error, Expired)
    assert second.error.waited == 0.0


async def test_an_async_call_with_nothing_left_of_its_deadline_never_starts() -> None:
    """The async twin: the ordered signal's first listener uses the whole budget on a
    virtual clock; the async listener after it never starts and ends "expired"."""
    signal = Signal(name="tests.deadlines.nothing_left_async", ordered=True)
    calls: list[str] = []
    with VirtualClock(autojump=False) as clock:

        async def spends_it_all(sender: Any, **kwargs: Any) -> None:
            calls.append("first")
            clock.advance(1)

        async def too_late(sender: Any, **kwargs: Any) -> None:
            calls.append("second")

        signal.connect(spends_it_all, weak=False, priority=2)
        signal.connect(too_late, weak=False, priority=1, on_error="log", default="none")
        first, second = await signal.collect_async(sender=None, deadline=1)

    assert calls == ["first"]
    assert first.status == "ok"
    assert (second.status, second.value) == ("expired", "none")
    assert isinstance(second.error, Expired) and second.error.waited == 0.0
