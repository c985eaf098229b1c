"""
Expiry: an item that waited ``ITEM_EXPIRY`` in line is never started; its
outcome is ``"expired"``, answered by the listener's fallback, ``default`` or
error policy, and the queue logs and counts it.

The calls go through public dispatch (``collect_async(queue=True)``) on an
installed ``VirtualClock``. Two tests look at internals on purpose: when a
waiter plans to wake up (``loop_timers``: a wake-up that finds nothing to do
has no other effect), and the last one, a queue built with a clock of its own
that steps back (``ShortTermQueue(clock=...)`` run through its engine hook
``_run``), which patchboard's monotonic clock never does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from patchboard import Expired, Listener, ListenerOptions, Outcome, Signal, queue_stats
from patchboard._call import Call
from patchboard._config import QueueSettings
from patchboard._queue import ShortTermQueue
from patchboard.testing import VirtualClock
from tests.short_term_queue.support import SIGNAL_NAME, Blocker, all_blocked, dispatch, loop_timers

Configure = Callable[..., None]


def one_worker(configure_queue: Configure, **values: Any) -> None:
    """
    The process's queue with one worker, an expiry of 45 s, and a time limit
    of an hour: a blocker runs until released.
    """
    values.setdefault("task_time_limit", 3600)
    values.setdefault("item_expiry", 45)
    configure_queue(min_workers=1, max_workers=1, **values)


class Quote:
    """A listener that records whether it ever ran."""

    def __init__(self) -> None:
        self.ran = False

    async def run(self, sender: Any, **kwargs: Any) -> str:
        self.ran = True
        return "quote"


def _sync_fallback(sender: Any, **kwargs: Any) -> str:
    return "sync fallback"


async def _async_fallback(sender: Any, **kwargs: Any) -> str:
    await anyio.lowlevel.checkpoint()
    return "async fallback"


async def _expire_behind_a_blocker(
    clock: VirtualClock, wait: float = 46, **options: Any
) -> tuple[Outcome, Quote]:
    """Queue ``Quote`` behind a blocker, let ``wait`` seconds pass, free the worker."""
    blocker = Blocker()
    quote = Quote()
    outcomes: list[Outcome] = []

    async def waiting_caller() -> None:
        outcomes.append(await dispatch(quote.run, **options))

    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatch, blocker.run)
        await all_blocked()
        tg.start_soon(waiting_caller)
        await all_blocked()
        clock.advance(wait)
        blocker.release()
    return outcomes[0], quote


@pytest.mark.parametrize(
    ("fallback", "value"),
    [(_sync_fallback, "sync fallback"), (_async_fallback, "async fallback")],
    ids=["sync", "async"],
)
async def test_an_expired_item_is_answered_by_its_fallback(
    logs: Any,
    clock: VirtualClock,
    configure_queue: Configure,
    fallback: Callable[..., Any],
    value: str,
) -> None:
    one_worker(configure_queue)
    outcome, quote = await _expire_behind_a_blocker(clock, fallback=fallback)

    assert not quote.ran
    assert outcome.status == "expired"
    assert outcome.value == value
    assert isinstance(outcome.error, Expired)
    assert (outcome.error.waited, outcome.error.expiry) == (46, 45)
    assert outcome.error.listener.endswith("Quote.run")
    assert outcome.error.deadline is False
    [event] = [e for e in logs.entries if e["event"] == "queue_item_expired"]
    assert event["signal"] == SIGNAL_NAME
    assert event["listener"].endswith("Quote.run")
    assert (event["waited_s"], event["expiry_s"]) == (46, 45)
    assert (event["deadline"], event["shed"]) == (False, False)
    stats = queue_stats()
    assert (stats.submitted, stats.completed, stats.expired) == (2, 1, 1)


async def test_without_fallback_an_expired_item_gets_its_default(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    one_worker(configure_queue)
    outcome, quote = await _expire_behind_a_blocker(clock, on_error="log", default="stale")
    assert not quote.ran
    assert (outcome.status, outcome.value, outcome.propagate) == ("expired", "stale", False)


async def test_without_fallback_a_raise_policy_expiry_propagates(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    one_worker(configure_queue)
    blocker, quote = Blocker(), Quote()
    errors: list[Expired] = []

    async def waiting_caller() -> None:
        with pytest.raises(Expired) as raised:
            await dispatch(quote.run, on_error="raise")
        errors.append(raised.value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatch, blocker.run)
        await all_blocked()
        tg.start_soon(waiting_caller)
        await all_blocked()
        clock.advance(46)
        blocker.release()

    assert not quote.ran
    assert [(e.waited, e.expiry) for e in errors] == [(46, 45)]
    assert queue_stats().expired == 1


async def test_a_failing_fallback_falls_back_to_the_error_policy(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    def broken(sender: Any, **kwargs: Any) -> str:
        raise RuntimeError("fallback down")

    one_worker(configure_queue)
    outcome, _ = await _expire_behind_a_blocker(
        clock, fallback=broken, on_error="log", default="default"
    )
    assert (outcome.status, outcome.value) == ("expired", "default")
    assert any(e["event"] == "listener_fallback_failed" for e in logs.entries)


async def test_overdue_waiters_expire_when_another_item_arrives(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """The line is checked on every submit, not only when a worker frees up."""
    one_worker(configure_queue)
    blocker = Blocker()
    quotes = [Quote(), Quote()]
    outcomes: list[Outcome] = []

    async def waiting_caller(quote: Quote) -> None:
        outcomes.append(await dispatch(quote.run, on_error="log"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatch, blocker.run)
        await all_blocked()
        tg.start_soon(waiting_caller, quotes[0])
        await all_blocked()
        clock.advance(46)
        tg.start_soon(waiting_caller, quotes[1])
        await all_blocked()
        # The first waiter expired at once; the newcomer waits its turn.
        assert [o.status for o in outcomes] == ["expired"]
        stats = queue_stats()
        assert (stats.expired, stats.waiting, stats.running) == (1, 1, 1)
        blocker.release()

    assert [o.status for o in outcomes] == ["expired", "ok"]
    assert [q.ran for q in quotes] == [False, True]


async def test_an_item_within_its_expiry_runs(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    one_worker(configure_queue)
    outcome, quote = await _expire_behind_a_blocker(clock, wait=44)
    assert (outcome.status, outcome.value, quote.ran) == ("ok", "quote", True)
    assert queue_stats().expired == 0


async def test_a_waiter_expires_on_its_own_while_the_worker_stays_busy(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    """No release, no newcomer: the waiter's own timer expires it, at its expiry exactly."""
    one_worker(configure_queue)
    blocker = Blocker()
    quote = Quote()

    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatch, blocker.run)
        await all_blocked()
        started = clock()
        outcome = await dispatch(quote.run, fallback=_sync_fallback)
        waited = clock() - started
        assert queue_stats().running == 1, "the blocker still holds the worker"
        blocker.release()

    assert not quote.ran
    assert (outcome.status, outcome.value) == ("expired", "sync fallback")
    assert isinstance(outcome.error, Expired)
    assert outcome.error.waited == waited == outcome.elapsed == 45
    [event] = [e for e in logs.entries if e["event"] == "queue_item_expired"]
    assert event["waited_s"] == 45


async def test_the_head_of_a_line_that_cannot_grow_sleeps_until_it_is_at_risk(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """
    Regression: at MAX_WORKERS the head of the line still woke every
    TARGET_WAIT to see whether the pool could grow, for nothing.
    """
    one_worker(configure_queue, target_wait=0.05, at_risk_fraction=0.5)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatch, blocker.run)
        await all_blocked()
        with loop_timers() as timers:
            tg.start_soon(dispatch, Quote().run)
            await all_blocked()
        blocker.release()
    assert timers == [22.5]  # its at-risk age (AT_RISK_FRACTION x ITEM_EXPIRY), not TARGET_WAIT


async def test_the_expired_event_reports_seconds_to_the_microsecond(
    logs: Any, configure_queue: Configure
) -> None:
    one_worker(configure_queue, item_expiry=10.5000004)
    with VirtualClock(0) as clock:  # from 0: the sum is exact
        outcome, _ = await _expire_behind_a_blocker(clock, 11.0000004, on_error="log")

    assert isinstance(outcome.error, Expired)
    assert (outcome.error.waited, outcome.error.expiry) == (11.0000004, 10.5000004)
    [event] = [e for e in logs.entries if e["event"] == "queue_item_expired"]
    assert (event["waited_s"], event["expiry_s"]) == (11.0, 10.5)


async def test_a_deadline_as_long_as_the_expiry_is_not_the_limit(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """The expiry applies when the deadline leaves exactly as much: a deadline must be shorter."""
    one_worker(configure_queue)
    outcome, _ = await _expire_behind_a_blocker(clock, deadline=45, on_error="log")
    assert isinstance(outcome.error, Expired)
    assert (outcome.error.expiry, outcome.error.deadline) == (45, False)


async def test_a_deadline_shorter_than_the_expiry_is_the_limit(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    one_worker(configure_queue)
    outcome, _ = await _expire_behind_a_blocker(clock, deadline=44.5, on_error="log")
    assert isinstance(outcome.error, Expired)
    assert (outcome.error.waited, outcome.error.expiry, outcome.error.deadline) == (46, 44.5, True)


async def test_a_waiter_already_at_risk_sleeps_until_its_expiry(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """Woken as the new head exactly at its at-risk age, it next wakes at its expiry."""
    one_worker(configure_queue, item_expiry=4500, at_risk_fraction=0.5)
    first, second = Blocker(), Blocker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatch, first.run)
        await all_blocked()
        with loop_timers() as timers:
            for _ in range(2):
                tg.start_soon(dispatch, second.run)
                await all_blocked()
            clock.advance(2250)
            first.release()  # the head runs; the next, at risk from now, becomes the head
            await all_blocked()
        second.release()
    # The two waiters' at-risk ages, then the new head's expiry; and the time
    # limit of the call that ran (an hour).
    assert timers == [2250, 2250, 3600, 2250]


async def test_a_call_at_its_deadline_expires_and_grows_the_pool(
    logs: Any, configure_queue: Configure
) -> None:
    """A nanosecond left of the dispatch's budget: the call waits that long, not its expiry."""
    configure_queue(min_workers=1, max_workers=2, item_expiry=45, task_time_limit=3600)
    blocker = Blocker()
    quote = Quote()
    with VirtualClock(0):  # from 0: a nanosecond is exact
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatch, blocker.run)
            await all_blocked()
            outcome = await dispatch(quote.run, deadline=1e-9, on_error="log")
            blocker.release()

    assert not quote.ran
    assert isinstance(outcome.error, Expired)
    assert (outcome.status, outcome.error.waited, outcome.error.deadline) == (
        "expired",
        1e-9,
        True,
    )
    [event] = [e for e in logs.entries if e["event"] == "queue_scaled_up"]
    assert (event["reason"], event["workers"], event["oldest_wait_s"]) == ("expired", 2, 0)


async def test_every_overdue_waiter_expires_behind_a_granted_ones_expiry(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    """
    A granted call's place in the expiry order is skipped, not a stop: the
    overdue waiters behind it expire at the same event, and the pool grows
    by the longest wait among them.
    """
    configure_queue(
        min_workers=1, max_workers=2, item_expiry=45, target_wait=3600, task_time_limit=3600
    )
    first, second = Blocker(), Blocker()
    quotes = [Quote(), Quote()]
    outcomes: list[Outcome] = []

    async def waiting_caller(quote: Quote) -> None:
        outcomes.append(await dispatch(quote.run, on_error="log"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(dispatch, first.run)
        await all_blocked()
        tg.start_soon(dispatch, second.run)  # expires at 45
        await all_blocked()
        for quote in quotes:  # expire at 46 and 47
            clock.advance(1)
            tg.start_soon(waiting_caller, quote)
            await all_blocked()
        first.release()  # the call that expires first is granted
        await all_blocked()
        clock.advance(48)  # 50
        second.release()  # the event (a newcomer would be shed: the line stood 48 s)

    assert [(o.status, o.error.waited) for o in outcomes] == [("expired", 49), ("expired", 48)]  # type: ignore[union-attr]
    assert [q.ran for q in quotes] == [False, False]
    [event] = [e for e in logs.entries if e["event"] == "queue_scaled_up"]
    assert (event["reason"], event["workers"], event["oldest_wait_s"]) == ("expired", 2, 49)


SIGNAL = Signal(name=SIGNAL_NAME)


def listener(func: Callable[..., Any], **options: Any) -> Listener:
    """A strongly held Listener for ``func``, for calling ``queue._run`` directly."""
    return Listener(func, ListenerOptions(**options), weak=False)


class SettableClock:
    """A clock the test sets anywhere, backwards too (``VirtualClock`` never goes back)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_waiter_behind_a_newer_head_expires_itself_when_the_clock_went_back() -> None:
    """
    After the clock stepped back, the line is no longer in order of age: the
    waiter behind the head is overdue while the head is not. It expires on its
    own wake-up, exactly at ``ITEM_EXPIRY``, and leaves the line.
    """
    clock = SettableClock(100.0)
    # A tiny at-risk age: waiters look at the clock every 45 ms of real time.
    settings = QueueSettings(
        min_workers=1, max_workers=1, item_expiry=45, task_time_limit=3600, at_risk_fraction=0.001
    )
    queue = ShortTermQueue(settings, clock=clock)
    blocker = Blocker()
    head, behind = Quote(), Quote()
    outcomes: dict[str, Outcome] = {}
    behind_done = anyio.Event()

    async def waiting_caller(name: str, quote: Quote) -> None:
        call = Call(listener(quote.run, on_error="log", default="stale"), SIGNAL, None, {})
        outcomes[name] = await queue._run(call)
        if name == "behind":
            behind_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await all_blocked()
        tg.start_soon(waiting_caller, "head", head)  # joins at 100
        await all_blocked()
        clock.now = 50.0  # the clock steps back
        tg.start_soon(waiting_caller, "behind", behind)  # joins at 50, behind the head
        await all_blocked()
        clock.now = 95.0  # the head has waited -5 s, the one behind it 45 s
        with anyio.fail_after(5):  # it expires within one 45 ms look at the clock
            await behind_done.wait()
        stats = queue.statistics()
        assert (stats.waiting, stats.expired, stats.running) == (1, 1, 1)
        blocker.release()

    expired = outcomes["behind"]
    assert (expired.status, expired.value) == ("expired", "stale")
    assert isinstance(expired.error, Expired)
    assert (expired.error.waited, expired.error.expiry) == (45.0, 45)
    assert not behind.ran
    assert (outcomes["head"].status, head.ran) == ("ok", True)
    stats = queue.statistics()
    assert (stats.submitted, stats.completed, stats.expired, stats.waiting) == (3, 2, 1, 0)
