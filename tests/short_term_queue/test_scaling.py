"""
Scaling on the expiry: the pool grows (to a worker per call present, at
least doubling) when the head of the line is at risk of expiring (or an
item expired), never for the line's length alone, and
halves after ``IDLE_SHRINK_AFTER`` seconds of spare capacity; always between
``MIN_WORKERS`` and ``MAX_WORKERS``. ``TARGET_WAIT`` is set out of reach
here, so that the standing-delay rule (tests/short_term_queue/test_standing.py) stays
out of the way. Virtual time throughout, but one test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from patchboard import Signal
from patchboard._call import Call
from patchboard._config import QueueSettings
from patchboard._queue import ShortTermQueue
from patchboard.testing import VirtualClock
from tests.short_term_queue.support import Blocker, listener

SIGNAL = Signal(name="tests.queue_scaling")


async def _noop(sender: Any, **kwargs: Any) -> None:
    return None


def make_queue(clock: VirtualClock, **values: Any) -> ShortTermQueue:
    """2 to 8 workers, 40 s expiry (at risk after 20 s), shrink after 30 idle seconds."""
    settings = {
        "min_workers": 2,
        "max_workers": 8,
        "target_wait": 1000,
        "item_expiry": 40,
        "at_risk_fraction": 0.5,
        "idle_shrink_after": 30,
        **values,
    }
    return ShortTermQueue(QueueSettings(**settings), clock=clock)


async def submit(tg: TaskGroup, queue: ShortTermQueue, func: Callable[..., Any], n: int) -> None:
    """Start ``n`` callers of ``func`` and wait until each is running or in line."""
    for _ in range(n):
        tg.start_soon(queue._run, Call(listener(func), SIGNAL, None, {}))
    await anyio.wait_all_tasks_blocked()


def events(logs: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in logs.entries if e["event"] == name]


async def test_the_pool_doubles_when_the_oldest_waiter_is_at_risk(logs: Any) -> None:
    clock = VirtualClock()
    queue = make_queue(clock)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, queue, blocker.run, 3)
        assert (queue.statistics().running, queue.statistics().waiting) == (2, 1)
        clock.advance(21)
        await submit(tg, queue, blocker.run, 1)  # any event re-evaluates the rule
        stats = queue.statistics()
        assert (stats.workers, stats.running, stats.waiting) == (4, 4, 0)
        blocker.release()

    [event] = events(logs, "queue_scaled_up")
    assert event["reason"] == "at_risk"
    assert event["workers"] == 4
    assert event["oldest_wait_s"] == 21


async def test_a_head_at_risk_within_a_second_reports_its_own_wait(logs: Any) -> None:
    """The growth's ``oldest_wait_s`` is the head's wait, however short (here 0.25 s)."""
    clock = VirtualClock(0)
    queue = make_queue(clock, item_expiry=0.5)  # at risk after 0.25 s
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, queue, blocker.run, 3)
        clock.advance(0.25)
        await submit(tg, queue, blocker.run, 1)
        blocker.release()

    [event] = events(logs, "queue_scaled_up")
    assert (event["reason"], event["workers"], event["oldest_wait_s"]) == ("at_risk", 4, 0.25)


async def test_a_long_line_of_young_items_does_not_grow_the_pool(logs: Any) -> None:
    clock = VirtualClock()
    queue = make_queue(clock)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, queue, blocker.run, 2 + 50)
        clock.advance(19)
        await submit(tg, queue, blocker.run, 1)
        stats = queue.statistics()
        assert (stats.workers, stats.running, stats.waiting) == (2, 2, 51)
        assert stats.oldest_wait == 19
        blocker.release()
    assert events(logs, "queue_scaled_up") == []


async def test_an_expired_item_grows_the_pool(logs: Any) -> None:
    clock = VirtualClock()
    queue = make_queue(clock)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, queue, blocker.run, 3)
        clock.advance(41)
        await submit(tg, queue, blocker.run, 1)
        stats = queue.statistics()
        assert (stats.workers, stats.expired, stats.running) == (4, 1, 3)
        blocker.release()

    [event] = events(logs, "queue_scaled_up")
    assert (event["reason"], event["workers"], event["oldest_wait_s"]) == ("expired", 4, 41)
    assert blocker.started == 3


async def test_growth_stops_at_max_workers(logs: Any) -> None:
    """23 calls present need 23 workers: the pool grows to 8, and no further."""
    clock = VirtualClock()
    queue = make_queue(clock)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, queue, blocker.run, 2 + 20)
        clock.advance(21)
        workers = []
        for _ in range(4):  # the head is still at risk at each of these events
            await submit(tg, queue, blocker.run, 1)
            workers.append(queue.statistics().workers)
        assert workers == [8, 8, 8, 8]
        blocker.release()
    assert [e["workers"] for e in events(logs, "queue_scaled_up")] == [8]


async def _grow_to_eight(clock: VirtualClock, queue: ShortTermQueue) -> None:
    """Grow the pool to 8 workers with at-risk waiters, then let everything finish."""
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, queue, blocker.run, 2 + 8)
        clock.advance(21)
        await submit(tg, queue, blocker.run, 1)
        await submit(tg, queue, blocker.run, 1)
        assert queue.statistics().workers == 8
        blocker.release()


async def test_the_pool_halves_after_idle_shrink_after_seconds(logs: Any) -> None:
    clock = VirtualClock()
    queue = make_queue(clock)
    await _grow_to_eight(clock, queue)

    clock.advance(29)
    await queue._run(Call(listener(_noop), SIGNAL, None, {}))
    assert queue.statistics().workers == 8
    clock.advance(1)
    await queue._run(Call(listener(_noop), SIGNAL, None, {}))
    assert queue.statistics().workers == 4
    clock.advance(30)
    await queue._run(Call(listener(_noop), SIGNAL, None, {}))
    assert queue.statistics().workers == 2
    clock.advance(300)
    await queue._run(Call(listener(_noop), SIGNAL, None, {}))
    assert queue.statistics().workers == 2, "never below MIN_WORKERS"

    assert [(e["previous"], e["workers"]) for e in events(logs, "queue_scaled_down")] == [
        (8, 4),
        (4, 2),
    ]


async def test_idleness_counts_from_the_last_halving(logs: Any) -> None:
    """The next halving comes IDLE_SHRINK_AFTER after the last, a call running across it or not."""
    clock = VirtualClock()
    queue = make_queue(clock)
    await _grow_to_eight(clock, queue)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        clock.advance(30.5000004)
        await submit(tg, queue, blocker.run, 1)  # halves to 4 as it starts
        assert queue.statistics().workers == 4
        clock.advance(30)
        blocker.release()  # 30 s later, as it ends: halves to 2
    assert queue.statistics().workers == 2
    assert [
        (e["previous"], e["workers"], e["idle_s"]) for e in events(logs, "queue_scaled_down")
    ] == [
        (8, 4, 30.5),
        (4, 2, 30),
    ]


async def test_a_long_idle_spell_shrinks_by_every_period_at_once(logs: Any) -> None:
    clock = VirtualClock()
    queue = make_queue(clock)
    await _grow_to_eight(clock, queue)
    clock.advance(95)
    await queue._run(Call(listener(_noop), SIGNAL, None, {}))
    assert queue.statistics().workers == 2
    [event] = events(logs, "queue_scaled_down")
    assert (event["previous"], event["workers"]) == (8, 2)


async def test_a_busy_pool_does_not_shrink() -> None:
    """Being full at any moment restarts the idle count."""
    clock = VirtualClock()
    queue = make_queue(clock)
    await _grow_to_eight(clock, queue)
    for _ in range(3):
        clock.advance(20)
        blocker = Blocker()
        async with anyio.create_task_group() as tg:
            await submit(tg, queue, blocker.run, 8)
            blocker.release()
    assert queue.statistics().workers == 8


async def test_shrinking_never_drops_below_what_is_running() -> None:
    clock = VirtualClock()
    queue = make_queue(clock)
    await _grow_to_eight(clock, queue)
    blocker = Blocker()
    async with anyio.create_task_group() as tg:
        await submit(tg, queue, blocker.run, 6)  # 6 of 8: spare capacity, but in use
        clock.advance(30)
        await submit(tg, queue, blocker.run, 1)
        assert queue.statistics().workers == 7
        blocker.release()
    clock.advance(30)
    await queue._run(Call(listener(_noop), SIGNAL, None, {}))
    assert queue.statistics().workers == 3, "half of 7, rounded down"


async def test_a_waiter_grows_the_pool_by_itself_at_the_at_risk_age(logs: Any) -> None:
    """Real time: nothing else happens, the waiter's own deadline evaluates the rule."""
    settings = QueueSettings(
        min_workers=1, max_workers=2, target_wait=100, item_expiry=5.0, at_risk_fraction=0.02
    )
    queue = ShortTermQueue(settings)
    blocker = Blocker()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue._run, Call(listener(blocker.run), SIGNAL, None, {}))
            await anyio.wait_all_tasks_blocked()
            outcome = await queue._run(Call(listener(_noop), SIGNAL, None, {}))
            blocker.release()

    assert outcome.status == "ok"
    [event] = events(logs, "queue_scaled_up")
    assert (event["reason"], event["workers"]) == ("at_risk", 2)
    assert event["oldest_wait_s"] >= 0.1
