"""
Scaling on standing delay and shedding under overload: once the head of the
line has waited ``TARGET_WAIT``, the pool grows at once to a worker per call
present (at least doubling, up to ``MAX_WORKERS``); a call the line is
predicted not to reach within its budget (from how fast the line moves) is
told at once, as it arrives or as soon as the line slows down; a call whose
circuit is open never takes a place; and a worker never goes to a call whose
deadline would cut it short.

Through public dispatch (``collect_async(queue=True)``) on an installed,
autojumping ``VirtualClock``, in units of hundreds of seconds: the tests move
time themselves while the loop is busy, so only their own events evaluate the
rules, but one that lets the loop idle until the head's own timer fires. One
test patches a private constant (``_DRAIN_WINDOW``) to keep it short.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from patchboard import CircuitBreaker, CircuitOpen, Expired, Outcome, _queue, queue_stats
from patchboard.testing import VirtualClock
from tests.short_term_queue.support import Blocker, all_blocked, dispatch

Configure = Callable[..., None]


def make_queue(configure_queue: Configure, **values: Any) -> None:
    """
    The process's queue: 1 to 8 workers, standing after 100 s; expiry,
    at-risk age and idleness out of reach.
    """
    settings = {
        "min_workers": 1,
        "max_workers": 8,
        "target_wait": 100,
        "item_expiry": 100_000,
        "at_risk_fraction": 0.9,
        "idle_shrink_after": 100_000,
        "task_time_limit": 3600,
        **values,
    }
    configure_queue(**settings)


async def submit(tg: TaskGroup, func: Callable[..., Any], *, deadline: float | None = None) -> None:
    """
    Start one caller of ``func`` and wait until it is running or in line (or
    told it never will be: an error is logged, not raised).
    """
    tg.start_soon(functools.partial(dispatch, func, deadline=deadline, on_error="log"))
    await all_blocked()


def events(logs: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in logs.entries if e["event"] == name]


async def _hold_for(clock: VirtualClock, seconds: float) -> None:
    """Run one call that holds its worker for ``seconds`` of virtual time."""
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)
        clock.advance(seconds)
        blocker.release()


# -- standing delay ------------------------------------------------------------------


async def test_a_standing_line_grows_the_pool_at_once_to_a_worker_per_call_present(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    """Once its head has waited TARGET_WAIT: no doubling step by step (a cold pool)."""
    make_queue(configure_queue)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        for _ in range(4):  # one runs, three wait from 0
            await submit(tg, blocker.run)
        clock.advance(99)
        await submit(tg, blocker.run)
        assert queue_stats().workers == 1
        clock.advance(1)
        await submit(tg, blocker.run)  # the head has waited 100
        stats = queue_stats()
        assert (stats.workers, stats.running, stats.waiting) == (6, 6, 0)
        blocker.release()
    [event] = events(logs, "queue_scaled_up")
    assert (event["reason"], event["workers"], event["oldest_wait_s"], event["waiting"]) == (
        "standing",
        6,
        100,
        5,
    )


async def test_a_standing_line_at_least_doubles_the_pool(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    make_queue(configure_queue, min_workers=3)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        for _ in range(4):  # three run, one waits from 0
            await submit(tg, blocker.run)
        clock.advance(100)
        await submit(tg, blocker.run)  # 5 calls present, but 6 workers
        assert queue_stats().workers == 6
        blocker.release()
    assert [e["workers"] for e in events(logs, "queue_scaled_up")] == [6]


async def test_the_pool_grows_again_whenever_a_head_has_waited_target_wait(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    make_queue(configure_queue)
    blocker = Blocker()
    workers = []
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)  # runs
        await submit(tg, blocker.run)  # the head, from 0
        clock.advance(100)
        await submit(tg, blocker.run)  # grows to 3: everyone runs
        workers.append(queue_stats().workers)
        for _ in range(4):  # a new line, from 100
            await submit(tg, blocker.run)
        for step in (50, 49, 1):  # the new head has waited 50, 99, 100
            clock.advance(step)
            await submit(tg, blocker.run)
            workers.append(queue_stats().workers)
        blocker.release()
    assert workers == [3, 3, 3, 8]  # 3 running + 7 waiting, up to MAX_WORKERS
    up = events(logs, "queue_scaled_up")
    assert [(e["workers"], e["oldest_wait_s"], e["waiting"]) for e in up] == [
        (3, 100, 2),
        (8, 100, 7),
    ]


class Starts:
    """A listener holding its worker until ``release()``; ``at``: when it started."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.at: float | None = None
        self.started = anyio.Event()
        self.blocker = Blocker()

    async def run(self, sender: Any, **kwargs: Any) -> str:
        self.at = self.clock()
        self.started.set()
        return await self.blocker.run(sender, **kwargs)


async def test_the_head_wakes_when_the_pool_is_due_to_grow(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    """
    With nothing else happening, the head of the line wakes once it has
    waited TARGET_WAIT and grows the pool; so does a later head, TARGET_WAIT
    after it joined the line (not after it became the head).
    """
    make_queue(configure_queue, max_workers=4)
    start = clock()
    first, head, newer, newest = Blocker(), Starts(clock), Starts(clock), Starts(clock)
    async with anyio.create_task_group() as tg:
        await submit(tg, first.run)  # runs
        await submit(tg, head.run)  # the head, from 0
        await head.started.wait()  # the loop idles until the head's timer: 100
        await submit(tg, newer.run)  # from 100
        clock.advance(20)
        await submit(tg, newest.run)  # from 120
        clock.advance(30)
        first.release()  # at 150 the newer one runs; the newest heads the line
        await newest.started.wait()
        for call in (head, newer, newest):
            call.blocker.release()

    assert [call.at for call in (head, newer, newest)] == [start + 100, start + 150, start + 220]
    up = events(logs, "queue_scaled_up")
    assert [(e["reason"], e["workers"], e["oldest_wait_s"]) for e in up] == [
        ("standing", 2, 100),
        ("standing", 4, 100),
    ]


async def test_a_pool_at_max_workers_does_not_grow_on_a_standing_line(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    make_queue(configure_queue, min_workers=2, max_workers=2)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            await submit(tg, blocker.run)
        for _ in range(3):
            clock.advance(100)
            await submit(tg, blocker.run)
        assert queue_stats().workers == 2
        blocker.release()
    assert events(logs, "queue_scaled_up") == []


# -- shedding ------------------------------------------------------------------------


async def test_the_service_time_is_a_moving_average_of_how_long_a_call_held_a_worker(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    make_queue(configure_queue)
    assert queue_stats().service_time == 0.0
    await _hold_for(clock, 40)
    assert queue_stats().service_time == 40
    await _hold_for(clock, 90)
    assert queue_stats().service_time == 50  # 40 + 0.2 x (90 - 40)


async def _line_moved_after(clock: VirtualClock, seconds: float) -> None:
    """A call waits behind another for ``seconds``, then runs: the line moved a place in that."""
    first, second = Blocker(), Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, first.run)
        await submit(tg, second.run)
        clock.advance(seconds)
        first.release()
        await all_blocked()
        second.release()


async def line_up(tg: TaskGroup, blockers: list[Blocker], outcomes: dict[int, Outcome]) -> None:
    """Start a caller of each blocker in turn (running or in line); its outcome at its index."""

    async def caller(index: int) -> None:
        outcomes[index] = await dispatch(blockers[index].run, on_error="log")

    for index in range(len(blockers)):
        tg.start_soon(caller, index)
        await all_blocked()


def shed_queue(configure_queue: Configure, **values: Any) -> None:
    """One worker (no growth to predict); a waiter is at risk at half its budget."""
    make_queue(configure_queue, min_workers=1, max_workers=1, at_risk_fraction=0.5, **values)


async def test_a_call_predicted_to_wait_past_the_at_risk_part_of_its_budget_is_shed(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    """Predicted: its place in line x the time the line took per place (100 s here)."""
    shed_queue(configure_queue, item_expiry=1000)
    await _line_moved_after(clock, 100)
    blocker, late = Blocker(), Blocker()
    outcomes: list[Outcome] = []

    async def caller(func: Callable[..., Any]) -> None:
        outcomes.append(await dispatch(func, on_error="log", default="shed"))

    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)  # runs
        for _ in range(5):  # places 1 to 5: 100 to 500 s away, within half of 1000 s
            await submit(tg, blocker.run)
        stats = queue_stats()
        assert (stats.running, stats.waiting, stats.shed) == (1, 5, 0)
        tg.start_soon(caller, late.run)  # place 6: 600 s away
        await all_blocked()
        stats = queue_stats()
        assert (stats.waiting, stats.shed, stats.expired) == (5, 1, 1)
        blocker.release()

    [outcome] = outcomes
    assert (outcome.status, outcome.value) == ("expired", "shed")
    assert isinstance(outcome.error, Expired)
    assert (outcome.error.waited, outcome.error.expiry, outcome.error.deadline) == (0, 1000, False)
    assert late.started == 0
    [event] = events(logs, "queue_item_expired")
    assert (event["shed"], event["waited_s"], event["expiry_s"], event["deadline"]) == (
        True,
        0,
        1000,
        False,
    )


async def test_a_shed_call_whose_caller_is_cancelled_counts_cancelled_not_shed(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """
    ``shed`` is a part of ``expired``: a shed call is counted when its caller
    gets the outcome, and one cancelled meanwhile (here, while its fallback
    runs) is ``cancelled`` only. (A fresh user saw ``shed`` 23,272 above
    ``expired`` 23,243 after a load run with clients going away.)
    """
    shed_queue(configure_queue, item_expiry=1000)
    await _line_moved_after(clock, 100)
    blocker = Blocker()
    in_fallback = anyio.Event()

    async def fallback(sender: Any, **kwargs: Any) -> str:
        in_fallback.set()
        await anyio.sleep_forever()
        return "never"

    async def late(sender: Any, **kwargs: Any) -> None:
        raise AssertionError("a shed call never runs")

    async def caller() -> None:
        await dispatch(late, fallback=fallback)

    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)  # runs
        for _ in range(5):  # places 1 to 5: within half of the budget
            await submit(tg, blocker.run)
        async with anyio.create_task_group() as inner:
            inner.start_soon(caller)  # place 6: shed as it arrives, its fallback waits
            await in_fallback.wait()
            inner.cancel_scope.cancel()
        blocker.release()

    stats = queue_stats()
    assert (stats.shed, stats.expired, stats.cancelled) == (0, 0, 1)
    assert stats.submitted == stats.completed + stats.cancelled


async def test_mixed_service_times_never_keep_a_call_waiting_out_its_budget(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """
    Calls that take no time (refused at once, say), then long ones: as soon
    as the line has moved, the waiters it cannot reach in time are told, not
    at their expiry. (Issue 15: a moving average of service time, dragged
    down by the quick calls, let them wait out their budget.)
    """
    shed_queue(configure_queue, item_expiry=350)
    for _ in range(5):
        await _hold_for(clock, 0)
    blockers = [Blocker() for _ in range(7)]
    outcomes: dict[int, Outcome] = {}
    async with anyio.create_task_group() as tg:
        await line_up(tg, blockers, outcomes)  # the first runs, six wait from 0
        for index in range(4):  # each holds its worker 100 s
            clock.advance(100)
            blockers[index].release()
            await all_blocked()

    # At 100 the line has moved a place in 100 s: places 1 and 2 start by 300,
    # within their budget (350); places 3 to 5 could not, and are told then.
    assert [outcomes[i].status for i in range(7)] == ["ok"] * 4 + ["expired"] * 3
    never_ran = [outcomes[i].error for i in range(4, 7)]
    assert [(e.waited, e.expiry) for e in never_ran if isinstance(e, Expired)] == [(100, 350)] * 3
    assert queue_stats().shed == 3


async def test_a_line_that_stops_moving_sheds_the_waiters_it_cannot_reach(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """The time since the line last moved counts: a worker that hangs slows the rate at once."""
    shed_queue(configure_queue, item_expiry=1000)
    await _line_moved_after(clock, 100)  # at 100: 100 s per place
    hung, newcomer = Blocker(), Blocker()
    waiting = [Blocker() for _ in range(3)]
    outcomes: dict[int, Outcome] = {}
    async with anyio.create_task_group() as tg:
        await submit(tg, hung.run)
        await line_up(tg, waiting, outcomes)  # places 1 to 3, 100 to 300 s away
        clock.advance(300)  # at 400, the line has not moved for 300 s: 400 s per place
        await submit(tg, newcomer.run)  # place 4, 1600 s away: shed as it comes
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (1, 3)  # places 2 and 3: 800, 1200 > 700 left
        hung.release()
        await all_blocked()
        waiting[0].release()

    assert [outcomes[i].status for i in range(3)] == ["ok", "expired", "expired"]
    assert [outcomes[i].error.waited for i in (1, 2)] == [300, 300]  # type: ignore[union-attr]
    assert newcomer.started == 0


async def test_a_waiter_behind_a_shed_one_is_judged_at_the_place_it_moves_up_to(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """Shed from place 2, a call leaves it to the one behind, whose wait is then judged from 2."""
    shed_queue(configure_queue, item_expiry=1000)
    await _line_moved_after(clock, 100)  # 100 s per place
    hung, blocker, newcomer = Blocker(), Blocker(), Blocker()
    outcomes: dict[str, Outcome] = {}

    async def caller(name: str, deadline: float | None = None) -> None:
        outcomes[name] = await dispatch(blocker.run, deadline=deadline, on_error="log")

    async with anyio.create_task_group() as tg:
        await submit(tg, hung.run)
        for name, deadline in (("first", None), ("short", 500), ("third", None)):
            tg.start_soon(caller, name, deadline)  # places 1 to 3: 100 to 300 s away
            await all_blocked()
        clock.advance(200)  # the line has not moved for 200 s: 300 s per place
        # Place 2 is 600 s away: "short" (300 s left) is shed; "third" moves up to
        # place 2, 600 s away too, within its 800 s left (at place 3, 900 s: shed).
        await submit(tg, newcomer.run)  # a change: the rules run (it is shed as it comes)
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (2, 2)
        hung.release()
        blocker.release()

    assert {name: o.status for name, o in outcomes.items()} == {
        "first": "ok",
        "short": "expired",
        "third": "ok",
    }
    assert newcomer.started == 0


async def test_a_line_that_emptied_without_moving_is_not_held_against_the_next(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """Its waiters expired (or were shed) already: the next line is judged on the grants."""
    shed_queue(configure_queue, item_expiry=1000)
    await _line_moved_after(clock, 100)  # at 100: 100 s per place
    hung, blocker = Blocker(), Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, hung.run)
        await submit(tg, blocker.run)  # waits from 100, expires at 1100
        clock.advance(1100)
        hung.release()  # at 1200: the waiter expires, the line is empty
        await all_blocked()
        assert queue_stats().expired == 1
        await submit(tg, blocker.run)  # runs
        for _ in range(3):  # places 1 to 3: 100 to 300 s away, within 500
            await submit(tg, blocker.run)
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (3, 0)
        blocker.release()


async def test_a_line_standing_at_max_workers_admits_two_target_waits_of_it(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """CoDel's controlled delay: a longer line would add wait, not throughput."""
    shed_queue(configure_queue)  # TARGET_WAIT 100; half a budget: 50_000
    await _line_moved_after(clock, 10)  # at 10: 10 s per place
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)  # runs
        await submit(tg, blocker.run)  # the head, from 10
        clock.advance(99)  # 109 s per place: place 2 is 218 s away, and the line not standing
        await submit(tg, blocker.run)
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (2, 0)
        clock.advance(1)  # the head has waited 100: place 3, 330 s away, is past 200
        await submit(tg, blocker.run)
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (2, 1)
        blocker.release()


async def test_a_standing_line_still_admits_a_call_predicted_within_two_target_waits(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """The standing limit is 2 x TARGET_WAIT (200 s here), not anything shorter."""
    shed_queue(configure_queue)
    for _ in range(2):  # the line moved a place a second
        await _line_moved_after(clock, 1)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)  # runs
        await submit(tg, blocker.run)  # the head
        clock.advance(100)  # standing, at MAX_WORKERS: (1 + 1 + 100) / 2 s a place
        await submit(tg, blocker.run)  # place 2: 102 s away, within 200
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (2, 0)
        blocker.release()


async def test_a_line_that_always_moved_at_once_predicts_no_wait(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """An empty line adds nothing to the prediction: a call at place 1 waits."""
    shed_queue(configure_queue, item_expiry=1)  # shed past 0.5 s of predicted wait
    await _line_moved_after(clock, 0)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)  # runs; the line is empty
        await submit(tg, blocker.run)  # place 1: 0 s away
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (1, 0)
        blocker.release()


async def test_the_drain_rate_forgets_grants_older_than_its_window(
    monkeypatch, clock: VirtualClock, configure_queue: Configure
) -> None:
    """
    Measured over the line's latest grants only (64; 4 here, to keep the test
    short: the window is patched): an old slow grant no longer slows the
    prediction down.
    """
    monkeypatch.setattr(_queue, "_DRAIN_WINDOW", 4)
    shed_queue(configure_queue, item_expiry=10_000)  # shed past 5,000 s of predicted wait
    await _line_moved_after(clock, 4_000)  # one place in 4,000 s
    for _ in range(4):  # then four at once: the slow one is out of the window
        await _line_moved_after(clock, 0)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)  # runs
        # 60 s to its deadline: shed past 30 s of predicted wait.
        await submit(tg, blocker.run, deadline=60)  # place 1: 0 s away (800 s with the old grant)
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (1, 0)
        blocker.release()


async def test_a_call_whose_circuit_is_open_takes_no_place_in_line(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    """It is settled at once (its fallback answers), counted as circuit_open and rejected."""
    shed_queue(configure_queue)
    breaker = CircuitBreaker("tests.queue_standing.down", clock=clock)
    breaker.force_open()
    blocker = Blocker()
    outcomes: list[Outcome] = []

    async def down(sender: Any, **kwargs: Any) -> None:
        raise AssertionError("its circuit is open")  # pragma: no cover

    def cached(sender: Any, **kwargs: Any) -> str:
        return "cached"

    async def caller() -> None:
        outcomes.append(await dispatch(down, breaker=breaker, fallback=cached))

    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)  # runs
        await submit(tg, blocker.run)  # waits
        tg.start_soon(caller)
        await all_blocked()
        assert len(outcomes) == 1  # without waiting for the worker
        stats = queue_stats()
        assert (stats.running, stats.waiting, stats.submitted, stats.circuit_open) == (1, 1, 3, 1)
        blocker.release()

    [outcome] = outcomes
    assert (outcome.status, outcome.value) == ("circuit_open", "cached")
    assert isinstance(outcome.error, CircuitOpen)
    assert breaker.statistics().rejected == 1
    assert queue_stats().failed == 0


async def test_a_worker_never_goes_to_a_call_its_deadline_would_cut_short(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    """
    When its turn comes, a waiter whose deadline leaves it less than the
    service time is shed, and the worker goes to the next; one left exactly
    the service time is not.
    """
    make_queue(configure_queue, max_workers=4)  # up to 4 workers: every caller fits in line
    await _hold_for(clock, 200)  # service time 200
    blocker = Blocker()
    short, exact = Blocker(), Blocker()
    outcomes: dict[str, Outcome] = {}

    async def caller(name: str, func: Callable[..., Any], deadline: float) -> None:
        outcomes[name] = await dispatch(func, deadline=deadline, on_error="log", default=name)

    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run)  # runs
        callers = (
            ("short", short.run, 400),
            ("shorter", short.run, 450),
            ("exact", exact.run, 460),
        )
        for name, func, deadline in callers:
            tg.start_soon(caller, name, func, deadline)
            await all_blocked()
        assert queue_stats().waiting == 3
        clock.advance(250)
        # The blocker held 250 s: service time 200 + 0.2 x 50 = 210. "short" has
        # 150 s left, "shorter" 200, "exact" 210.
        blocker.release()
        await all_blocked()
        stats = queue_stats()
        assert (stats.running, stats.waiting, stats.shed, stats.expired) == (1, 0, 2, 2)
        assert stats.service_time == 210
        exact.release()

    assert (short.started, exact.started) == (0, 1)
    shed = outcomes["short"]
    assert (shed.status, shed.value) == ("expired", "short")
    assert isinstance(shed.error, Expired)
    assert (shed.error.waited, shed.error.expiry, shed.error.deadline) == (250, 400, True)
    [event] = events(logs, "queue_item_expired")
    assert (event["shed"], event["deadline"], event["waited_s"]) == (True, True, 250)
    assert outcomes["shorter"].status == "expired"
    assert outcomes["exact"].status == "ok"
