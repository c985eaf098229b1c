"""
The queue's accounting, as a property: whatever the listeners do (finish,
fail, overrun their limit in a task or in a thread) and whatever the callers
do (wait, get cancelled), every submitted item ends in exactly one outcome,
the counters add up, the bound holds, and nothing is left running.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from patchboard import Listener, ListenerOptions, Signal, _deadline
from patchboard._call import Call
from patchboard._config import QueueSettings
from patchboard._queue import ShortTermQueue
from tests.short_term_queue.support import wait_until


@dataclass(frozen=True)
class Item:
    kind: str  # "async" or "sync"
    duration: float
    fails: bool
    timeout: float | None
    fallback: str | None  # "sync", "async" (it awaits, so a cancellation can strike) or None


@dataclass(frozen=True)
class Caller:
    items: list[Item]
    cancel_after: float | None
    deadline: float | None = None
    """The dispatch's deadline (seconds): the budget of every item of this caller."""


items = st.builds(
    Item,
    kind=st.sampled_from(["async", "sync"]),
    duration=st.sampled_from([0.0, 0.001, 0.005, 0.015, 0.03]),
    fails=st.booleans(),
    timeout=st.sampled_from([None, None, 0.01]),
    fallback=st.sampled_from([None, "sync", "async"]),
)
callers = st.builds(
    Caller,
    items=st.lists(items, min_size=1, max_size=5),
    cancel_after=st.sampled_from([None, None, 0.0, 0.005, 0.02]),
    deadline=st.sampled_from([None, None, 0.003, 0.01, 0.03]),
)


@st.composite
def queue_settings(draw: st.DrawFn) -> QueueSettings:
    min_workers = draw(st.integers(1, 3))
    return QueueSettings(
        min_workers=min_workers,
        max_workers=draw(st.integers(min_workers, 4)),
        max_pending=draw(st.sampled_from([0, 2, 6, 20])),
        task_time_limit=draw(st.sampled_from([0.01, 0.02, 0.05])),
        item_expiry=draw(st.sampled_from([0.002, 0.005, 0.02, 0.2])),
        idle_shrink_after=0.05,
    )


class Probe:
    """Counts listener calls in progress from any thread (the peak is checked against the bound)."""

    def __init__(self, signal: Signal) -> None:
        self.signal = signal
        self.lock = threading.Lock()
        self.current = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.current += 1
            self.peak = max(self.peak, self.current)

    def exit(self) -> None:
        with self.lock:
            self.current -= 1


def make_listener(item: Item, probe: Probe) -> Listener:
    func: Callable[..., Any]
    if item.kind == "async":

        async def func(sender: Any, **kwargs: Any) -> str:
            probe.enter()
            try:
                await anyio.sleep(item.duration)
                if item.fails:
                    raise ValueError("listener failed")
                return "ok"
            finally:
                probe.exit()

    else:

        def func(sender: Any, **kwargs: Any) -> str:
            probe.enter()
            try:
                time.sleep(item.duration)  # the work itself, not synchronisation
                if item.fails:
                    raise ValueError("listener failed")
                return "ok"
            finally:
                probe.exit()

    options = ListenerOptions(
        timeout=item.timeout, on_error="log", fallback=FALLBACKS[item.fallback]
    )
    return Listener(func, options, weak=False)


def _sync_fallback(sender: Any, **kwargs: Any) -> str:
    return "fallback"


async def _async_fallback(sender: Any, **kwargs: Any) -> str:
    await anyio.sleep(0.001)
    return "fallback"


FALLBACKS: dict[str | None, Callable[..., Any] | None] = {
    None: None,
    "sync": _sync_fallback,
    "async": _async_fallback,
}


async def scenario(config: QueueSettings, plan: list[Caller]) -> None:
    await _play(config, plan, Probe(Signal()))


async def _play(config: QueueSettings, plan: list[Caller], probe: Probe) -> None:
    queue = ShortTermQueue(config)
    statuses: Counter[str] = Counter()
    submitted = sum(len(caller.items) for caller in plan)

    async def one(item: Item) -> None:
        try:
            outcome = await queue._run(Call(make_listener(item, probe), probe.signal, None, {}))
        except anyio.get_cancelled_exc_class():
            statuses["cancelled"] += 1
            raise
        statuses[outcome.status] += 1

    async def caller(spec: Caller) -> None:
        with anyio.CancelScope() as scope, _deadline.budget(spec.deadline):
            if spec.cancel_after is not None:
                scope.deadline = anyio.current_time() + spec.cancel_after
            async with anyio.create_task_group() as tg:
                for item in spec.items:
                    tg.start_soon(one, item)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for spec in plan:
                tg.start_soon(caller, spec)

    # Every call is over: each ended in exactly one way.
    assert sum(statuses.values()) == submitted
    assert asyncio.all_tasks() == {asyncio.current_task()}
    stats = queue.statistics()
    assert stats.waiting == 0
    assert stats.running == stats.abandoned_running
    assert stats.submitted == submitted
    assert stats.completed == statuses["ok"]
    assert stats.failed == statuses["error"]
    assert stats.timed_out == statuses["timeout"]
    assert stats.expired == statuses["expired"]
    assert stats.rejected == statuses["rejected"]
    assert stats.cancelled == statuses["cancelled"]
    assert (
        stats.completed
        + stats.failed
        + stats.timed_out
        + stats.expired
        + stats.rejected
        + stats.cancelled
        == stats.submitted
    )
    assert config.min_workers <= stats.workers <= config.max_workers
    assert probe.peak <= config.max_workers

    for status in statuses:
        event(f"an item ended {status}")  # shown by --hypothesis-show-statistics
    if stats.abandoned:
        event("a thread was abandoned")

    # Only abandoned threads outlive their calls; each gives its slot back.
    assert await anyio.to_thread.run_sync(
        wait_until, lambda: queue.statistics().abandoned_running == 0
    )
    stats = queue.statistics()
    assert (stats.running, stats.waiting, stats.abandoned_running) == (0, 0, 0)
    assert probe.current == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=queue_settings(), plan=st.lists(callers, min_size=1, max_size=4))
def test_every_item_ends_in_exactly_one_outcome(config: QueueSettings, plan: list[Caller]) -> None:
    asyncio.run(scenario(config, plan))
