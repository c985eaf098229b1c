"""
Expiry: an item that waited ``ITEM_EXPIRY`` in line is never started; its
outcome is ``"expired"``, answered by the listener's fallback, ``default`` or
error policy, and the queue logs and counts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from patchboard import Expired, Signal, _deadline
from patchboard._call import Call
from patchboard._config import QueueSettings
from patchboard._outcomes import Outcome
from patchboard._queue import ShortTermQueue
from patchboard.testing import VirtualClock
from tests.short_term_queue.support import Blocker, listener, record_waits

SIGNAL = Signal(name="tests.queue_expiry")


def one_worker(clock: Callable[[], float], **values: Any) -> ShortTermQueue:
    """
    One worker, waits on ``clock``. The time limit of a running call is a
    cancel scope on the event loop's real clock: an hour, so that a busy
    machine can never end a blocker early (it once freed the worker for the
    next waiter, which then ran).
    """
    values.setdefault("task_time_limit", 3600)
    values.setdefault("item_expiry", 45)
    settings = QueueSettings(min_workers=1, max_workers=1, **values)
    return ShortTermQueue(settings, clock=clock)


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


async def _expire_behind_a_blocker(**options: Any) -> tuple[Outcome, Quote, ShortTermQueue]:
    """Queue ``Quote`` behind a blocker, let 46 virtual seconds pass, free the worker."""
    clock = VirtualClock()
    return await _expire_behind_a_blocker_on(clock, one_worker(clock), **options)


async def _expire_behind_a_blocker_on(
    clock: VirtualClock, queue: ShortTermQueue, wait: float = 46, **options: Any
) -> tuple[Outcome, Quote, ShortTermQueue]:
    """Queue ``Quote`` behind a blocker on ``queue``, let ``wait`` seconds pass, free the worker."""
    blocker = Blocker()
    quote = Quote()
    outcomes: list[Outcome] = []

    async def waiting_caller() -> None:
        outcomes.append(await queue._run(Call(listener(quote.run, **options), SIGNAL, None, {})))

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiting_caller)
        await anyio.wait_all_tasks_blocked()
        clock.advance(wait)
        blocker.release()
    return outcomes[0], quote, queue


@pytest.mark.parametrize(
    ("fallback", "value"),
    [(_sync_fallback, "sync fallback"), (_async_fallback, "async fallback")],
    ids=["sync", "async"],
)
async def test_an_expired_item_is_answered_by_its_fallback(
    logs: Any, fallback: Callable[..., Any], value: str
) -> None:
    outcome, quote, queue = await _expire_behind_a_blocker(fallback=fallback)

    assert not quote.ran
    assert outcome.status == "expired"
    assert outcome.value == value
    assert isinstance(outcome.error, Expired)
    assert (outcome.error.waited, outcome.error.expiry) == (46, 45)
    assert outcome.error.listener.endswith("Quote.run")
    assert outcome.error.deadline is False
    [event] = [e for e in logs.entries if e["event"] == "queue_item_expired"]
    assert event["signal"] == "tests.queue_expiry"
    assert event["listener"].endswith("Quote.run")
    assert (event["waited_s"], event["expiry_s"]) == (46, 45)
    assert (event["deadline"], event["shed"]) == (False, False)
    stats = queue.statistics()
    assert (stats.submitted, stats.completed, stats.expired) == (2, 1, 1)


async def test_without_fallback_an_expired_item_gets_its_default() -> None:
    outcome, quote, _ = await _expire_behind_a_blocker(on_error="log", default="stale")
    assert not quote.ran
    assert (outcome.status, outcome.value, outcome.propagate) == ("expired", "stale", False)


async def test_without_fallback_a_raise_policy_expiry_propagates() -> None:
    outcome, _, _ = await _expire_behind_a_blocker(on_error="raise")
    assert outcome.status == "expired"
    assert outcome.propagate
    assert isinstance(outcome.error, Expired)


async def test_a_failing_fallback_falls_back_to_the_error_policy(logs: Any) -> None:
    def broken(sender: Any, **kwargs: Any) -> str:
        raise RuntimeError("fallback down")

    outcome, _, _ = await _expire_behind_a_blocker(
        fallback=broken, on_error="log", default="default"
    )
    assert (outcome.status, outcome.value) == ("expired", "default")
    assert any(e["event"] == "listener_fallback_failed" for e in logs.entries)


async def test_overdue_waiters_expire_when_another_item_arrives() -> None:
    """The line is checked on every submit, not only when a worker frees up."""
    clock = VirtualClock()
    queue = one_worker(clock)
    blocker = Blocker()
    quotes = [Quote(), Quote()]
    outcomes: list[Outcome] = []

    async def waiting_caller(quote: Quote) -> None:
        outcomes.append(
            await queue._run(Call(listener(quote.run, on_error="log"), SIGNAL, None, {}))
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiting_caller, quotes[0])
        await anyio.wait_all_tasks_blocked()
        clock.advance(46)
        tg.start_soon(waiting_caller, quotes[1])
        await anyio.wait_all_tasks_blocked()
        # The first waiter expired at once; the newcomer waits its turn.
        assert [o.status for o in outcomes] == ["expired"]
        stats = queue.statistics()
        assert (stats.expired, stats.waiting, stats.running) == (1, 1, 1)
        blocker.release()

    assert [o.status for o in outcomes] == ["expired", "ok"]
    assert [q.ran for q in quotes] == [False, True]


async def test_an_item_within_its_expiry_runs() -> None:
    clock = VirtualClock()
    queue = one_worker(clock)
    blocker = Blocker()
    outcomes: list[Outcome] = []

    async def waiting_caller() -> None:
        outcomes.append(await queue._run(Call(listener(Quote().run), SIGNAL, None, {})))

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiting_caller)
        await anyio.wait_all_tasks_blocked()
        clock.advance(44)
        blocker.release()

    assert outcomes[0].status == "ok"
    assert outcomes[0].value == "quote"
    assert queue.statistics().expired == 0


async def test_a_waiter_expires_on_its_own_while_the_worker_stays_busy(logs: Any) -> None:
    """No release, no newcomer: the waiter's own deadline expires it (real time)."""
    settings = QueueSettings(min_workers=1, max_workers=1, item_expiry=0.2)
    queue = ShortTermQueue(settings)
    blocker = Blocker()
    quote = Quote()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
            await anyio.wait_all_tasks_blocked()
            outcome = await queue._run(
                Call(listener(quote.run, fallback=_sync_fallback), SIGNAL, None, {})
            )
            assert queue.statistics().running == 1, "the blocker still holds the worker"
            blocker.release()

    assert not quote.ran
    assert (outcome.status, outcome.value) == ("expired", "sync fallback")
    assert isinstance(outcome.error, Expired)
    assert outcome.error.waited >= 0.2
    assert outcome.elapsed >= 0.2
    [event] = [e for e in logs.entries if e["event"] == "queue_item_expired"]
    assert event["waited_s"] >= 0.2


async def test_the_head_of_a_line_that_cannot_grow_sleeps_until_it_is_at_risk(monkeypatch) -> None:
    """
    Regression: at MAX_WORKERS the head of the line still woke every
    TARGET_WAIT to see whether the pool could grow, for nothing.
    """
    waits = record_waits(monkeypatch)
    clock = VirtualClock()
    queue = one_worker(clock, target_wait=0.05, at_risk_fraction=0.5)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(queue._run, Call(listener(Quote().run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        blocker.release()
    assert waits == [22.5]  # its at-risk age (AT_RISK_FRACTION x ITEM_EXPIRY), not TARGET_WAIT


async def test_the_expired_event_reports_seconds_to_the_microsecond(logs: Any) -> None:
    clock = VirtualClock(0)
    queue = one_worker(clock, item_expiry=10.5000004)
    outcome, _, _ = await _expire_behind_a_blocker_on(clock, queue, 11.0000004, on_error="log")

    assert isinstance(outcome.error, Expired)
    assert (outcome.error.waited, outcome.error.expiry) == (11.0000004, 10.5000004)
    [event] = [e for e in logs.entries if e["event"] == "queue_item_expired"]
    assert (event["waited_s"], event["expiry_s"]) == (11.0, 10.5)


async def test_a_deadline_as_long_as_the_expiry_is_not_the_limit(monkeypatch: Any) -> None:
    """The expiry applies when the deadline leaves exactly as much: a deadline must be shorter."""
    import patchboard._queue

    monkeypatch.setattr(patchboard._queue._deadline, "remaining", lambda: 45.0)
    clock = VirtualClock(0)
    queue = one_worker(clock)
    outcome, _, _ = await _expire_behind_a_blocker_on(clock, queue, on_error="log")
    assert isinstance(outcome.error, Expired)
    assert (outcome.error.expiry, outcome.error.deadline) == (45, False)


async def test_a_waiter_already_at_risk_sleeps_until_its_expiry(monkeypatch: Any) -> None:
    """Woken as the new head exactly at its at-risk age, it next wakes at its expiry."""
    waits = record_waits(monkeypatch)
    clock = VirtualClock(0)
    queue = one_worker(clock, item_expiry=4500, at_risk_fraction=0.5)
    first, second = Blocker(), Blocker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(first.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        for _ in range(2):
            tg.start_soon(queue._run, Call(listener(second.run), SIGNAL, None, {}))
            await anyio.wait_all_tasks_blocked()
        clock.advance(2250)
        first.release()  # the head runs; the next, at risk from now, becomes the head
        await anyio.wait_all_tasks_blocked()
        second.release()
    assert waits == [2250, 2250, 2250]


async def test_a_call_whose_deadline_passed_expires_at_once_and_grows_the_pool(logs: Any) -> None:
    clock = VirtualClock(0)
    queue = ShortTermQueue(
        QueueSettings(min_workers=1, max_workers=2, item_expiry=45, task_time_limit=3600),
        clock=clock,
    )
    blocker = Blocker()
    quote = Quote()
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        with _deadline.budget(0):  # nothing left of the dispatch's budget
            call = Call(listener(quote.run, on_error="log"), SIGNAL, None, {})
            outcome = await queue._run(call)
        blocker.release()

    assert not quote.ran
    assert isinstance(outcome.error, Expired)
    assert (outcome.status, outcome.error.waited, outcome.error.deadline) == ("expired", 0, True)
    [event] = [e for e in logs.entries if e["event"] == "queue_scaled_up"]
    assert (event["reason"], event["workers"], event["oldest_wait_s"]) == ("expired", 2, 0)


async def test_every_overdue_waiter_expires_behind_a_granted_ones_expiry(logs: Any) -> None:
    """
    A granted call's place in the expiry order is skipped, not a stop: the
    overdue waiters behind it expire at the same event, and the pool grows
    by the longest wait among them.
    """
    clock = VirtualClock(0)
    settings = QueueSettings(
        min_workers=1, max_workers=2, item_expiry=45, target_wait=3600, task_time_limit=3600
    )
    queue = ShortTermQueue(settings, clock=clock)
    first, second = Blocker(), Blocker()
    quotes = [Quote(), Quote()]
    outcomes: list[Outcome] = []

    async def waiting_caller(quote: Quote) -> None:
        call = Call(listener(quote.run, on_error="log"), SIGNAL, None, {})
        outcomes.append(await queue._run(call))

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, Call(listener(first.run), SIGNAL, None, {}))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(queue._run, Call(listener(second.run), SIGNAL, None, {}))  # expires at 45
        await anyio.wait_all_tasks_blocked()
        for quote in quotes:  # expire at 46 and 47
            clock.advance(1)
            tg.start_soon(waiting_caller, quote)
            await anyio.wait_all_tasks_blocked()
        first.release()  # the call that expires first is granted
        await anyio.wait_all_tasks_blocked()
        clock.advance(48)  # 50
        second.release()  # the event (a newcomer would be shed: the line stood 48 s)

    assert [(o.status, o.error.waited) for o in outcomes] == [("expired", 49), ("expired", 48)]
    assert [q.ran for q in quotes] == [False, False]
    [event] = [e for e in logs.entries if e["event"] == "queue_scaled_up"]
    assert (event["reason"], event["workers"], event["oldest_wait_s"]) == ("expired", 2, 49)


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
    queue = one_worker(clock, at_risk_fraction=0.001)
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
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiting_caller, "head", head)  # joins at 100
        await anyio.wait_all_tasks_blocked()
        clock.now = 50.0  # the clock steps back
        tg.start_soon(waiting_caller, "behind", behind)  # joins at 50, behind the head
        await anyio.wait_all_tasks_blocked()
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
