"""
Criticality under overload: the queue sheds ``"sheddable"`` calls first and
``"critical"`` ones last, at entry, from a standing line and at a full line;
the outcome stays ``"expired"`` or ``"rejected"``, with the criticality in
its log event.

Through public dispatch on an autojumping ``VirtualClock`` (see
``test_standing.py``, whose queue settings and line helpers these reuse), but
one test that needs a queue of its own, on a clock no loop follows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from patchboard import Outcome, Signal, queue_stats
from patchboard._call import Call
from patchboard._config import QueueSettings
from patchboard._queue import ShortTermQueue
from patchboard.testing import VirtualClock
from tests.short_term_queue.support import Blocker, all_blocked, dispatch, listener
from tests.short_term_queue.test_standing import (
    Configure,
    _line_moved_after,
    events,
    make_queue,
    shed_queue,
)


async def submit(
    tg: TaskGroup,
    func: Callable[..., Any],
    criticality: str,
    outcomes: list[Outcome] | None = None,
) -> None:
    """Start one caller of ``func`` with ``criticality``; wait until it runs, waits or is told."""

    async def caller() -> None:
        outcome = await dispatch(func, on_error="log", criticality=criticality)
        if outcomes is not None:
            outcomes.append(outcome)

    tg.start_soon(caller)
    await all_blocked()


async def test_a_standing_line_turns_sheddable_calls_away_and_admits_critical_ones(
    logs: Any, clock: VirtualClock, configure_queue: Configure
) -> None:
    """Where a default call is shed (past 2 x TARGET_WAIT), a critical one joins."""
    shed_queue(configure_queue)  # TARGET_WAIT 100; at risk at half of a 100_000 s budget
    await _line_moved_after(clock, 10)
    blocker = Blocker()
    told: list[Outcome] = []
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run, "default")  # runs
        await submit(tg, blocker.run, "default")  # the head
        clock.advance(100)  # standing at MAX_WORKERS: (10 + 100) s per place
        await submit(tg, blocker.run, "sheddable", told)  # place 2, 220 s: past 200
        await submit(tg, blocker.run, "default", told)  # the same place and prediction
        await submit(tg, blocker.run, "critical", told)  # held to its budget alone
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (2, 2)
        blocker.release()
    assert [o.status for o in told[:2]] == ["expired", "expired"]
    # One event per listener at most a while (log_limited): the first one's.
    [expired] = events(logs, "queue_item_expired")
    assert (expired["criticality"], expired["shed"]) == ("sheddable", True)


async def test_a_sheddable_call_joins_no_standing_line_even_at_its_head(
    clock: VirtualClock, configure_queue: Configure
) -> None:
    shed_queue(configure_queue)
    for _ in range(2):
        await _line_moved_after(clock, 1)
    blocker = Blocker()
    told: list[Outcome] = []
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run, "default")  # runs
        await submit(tg, blocker.run, "default")  # the head
        clock.advance(100)  # standing: place 2 is 102 s away, within 200
        await submit(tg, blocker.run, "sheddable", told)
        await submit(tg, blocker.run, "default")
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (2, 1)
        blocker.release()
    assert [o.status for o in told] == ["expired"]


@pytest.mark.parametrize(
    ("line", "change", "left"),
    [
        # The calls that matter more move up.
        (["sheddable", "critical", "sheddable"], "default", 2),
        # None does, the sheddable ones leave all the same. (The line never moved
        # yet: no prediction turns the sheddable newcomer away as it arrives.)
        (["sheddable"], "sheddable", 0),
    ],
)
async def test_sheddable_waiters_leave_a_line_once_it_stands(
    logs: Any,
    clock: VirtualClock,
    configure_queue: Configure,
    line: list[str],
    change: str,
    left: int,
) -> None:
    make_queue(configure_queue, min_workers=1, max_workers=1)
    blocker = Blocker()
    shed: list[Outcome] = []
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run, "default")  # runs
        for criticality in line:  # the first is the head
            await submit(tg, blocker.run, criticality, shed if criticality == "sheddable" else None)
        clock.advance(100)  # the head has waited TARGET_WAIT at MAX_WORKERS
        # A change: the rules run.
        await submit(tg, blocker.run, change, shed if change == "sheddable" else None)
        stats = queue_stats()
        assert (stats.waiting, stats.shed) == (left, 2)
        blocker.release()
    assert [o.status for o in shed] == ["expired", "expired"]
    assert {e["criticality"] for e in events(logs, "queue_item_expired")} == {"sheddable"}


async def test_a_sheddable_call_is_turned_away_by_a_standing_head_expiring_as_it_arrives() -> None:
    """
    The line stood until that very moment (its head waited out its whole
    budget): the newcomer is judged on the line it found, not on the young
    line left once the head is gone. A queue of its own, on a clock no loop
    follows: nothing happens but what the test does.
    """
    clock = VirtualClock(0)
    settings = QueueSettings(
        min_workers=1, max_workers=1, target_wait=100, item_expiry=150, at_risk_fraction=0.9
    )
    queue = ShortTermQueue(settings, clock=clock)
    signal = Signal(name="tests.queue_criticality")

    def call(func: Callable[..., Any], criticality: str = "default") -> Call:
        return Call(listener(func, on_error="log", criticality=criticality), signal, None, {})

    async def noop(sender: Any, **kwargs: Any) -> None:
        return None

    first, second = Blocker(), Blocker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(queue._run, call(first.run))
        for _ in range(8):  # the line moves 8 places at once: 150 / 8 s per place at 150 s
            tg.start_soon(queue._run, call(noop))
        await all_blocked()
        first.release()
        await all_blocked()
        tg.start_soon(queue._run, call(second.run))  # runs
        tg.start_soon(queue._run, call(second.run))  # the head
        await all_blocked()
        clock.advance(100)
        tg.start_soon(queue._run, call(second.run))  # joins the standing line
        await all_blocked()
        clock.advance(50)  # the head expires now; the line left has stood 50 s
        told: list[Outcome] = []

        async def sheddable() -> None:
            told.append(await queue._run(call(second.run, "sheddable")))  # place 3: 56 s away

        tg.start_soon(sheddable)
        await all_blocked()
        stats = queue.statistics()
        assert (stats.waiting, stats.expired, stats.shed) == (1, 2, 1)
        assert [o.status for o in told] == ["expired"]
        second.release()


async def test_at_a_full_line_a_critical_call_takes_the_place_of_the_newest_sheddable(
    logs: Any, configure_queue: Configure
) -> None:
    make_queue(configure_queue, min_workers=1, max_workers=1, max_pending=2)
    blocker = Blocker()
    first: list[Outcome] = []
    second: list[Outcome] = []
    refused: list[Outcome] = []
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run, "default")  # runs
        await submit(tg, blocker.run, "sheddable", first)
        await submit(tg, blocker.run, "sheddable", second)
        await submit(tg, blocker.run, "critical")  # the line is full: the newest sheddable goes
        assert [o.status for o in second] == ["rejected"]
        await submit(tg, blocker.run, "sheddable", refused)  # nobody below it: rejected
        assert [o.status for o in refused] == ["rejected"]
        stats = queue_stats()
        assert (stats.waiting, stats.rejected) == (2, 2)
        blocker.release()
    assert [o.status for o in first] == ["ok"]
    rejected = events(logs, "queue_item_rejected")
    assert {e["criticality"] for e in rejected} == {"sheddable"}


async def test_without_criticality_a_full_line_rejects_the_newcomer(
    configure_queue: Configure,
) -> None:
    """The rule before criticality, kept between calls of the same rank."""
    make_queue(configure_queue, min_workers=1, max_workers=1, max_pending=1)
    blocker = Blocker()
    waiting: list[Outcome] = []
    refused: list[Outcome] = []
    async with anyio.create_task_group() as tg:
        await submit(tg, blocker.run, "critical")
        await submit(tg, blocker.run, "critical", waiting)
        await submit(tg, blocker.run, "critical", refused)
        assert [o.status for o in refused] == ["rejected"]
        blocker.release()
    assert [o.status for o in waiting] == ["ok"]
