"""
A listener's fallback at the edges of a call: after the dispatch's deadline
expired the call (it answers what it has at once, and cannot hold the
collect past the deadline), and when the caller goes away while it runs
(the call is counted cancelled). ``make stress`` found each of these defects;
each test failed before its fix.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from django.test import override_settings

from patchboard import CircuitBreaker, Signal, outcome_counts

GUARD_S = 5.0
"""The test's own limit: a hundred times the deadline under test."""

ONE_WORKER = {"SHORT_TERM_QUEUE": {"MIN_WORKERS": 1, "MAX_WORKERS": 1}}


def queued_behind_a_held_worker(signal: Signal, fallback: Any) -> None:
    """
    Connect a listener that holds the queue's only worker for good, then one
    with ``fallback`` that waits in line behind it (with ``ONE_WORKER``).
    """
    never = asyncio.Event()

    async def holds_the_worker(sender: Any, **kwargs: Any) -> str:
        await never.wait()
        return "never"

    async def queued(sender: Any, **kwargs: Any) -> str:
        return "quote"

    signal.connect(holds_the_worker, weak=False, on_error="log")
    signal.connect(queued, weak=False, on_error="log", fallback=fallback)


@override_settings(PATCHBOARD=ONE_WORKER)
async def test_a_slow_fallback_cannot_keep_a_collect_past_its_deadline() -> None:
    """
    Seen under load: the shop's quotes page answered up to 35 ms past its
    2 s deadline, the time its fallbacks (a cache read each) took once the
    deadline had expired the queued calls. Here the fallback never answers.
    """
    signal = Signal(name="tests.fallback.fallback_after_deadline")
    never = asyncio.Event()

    async def slow_fallback(sender: Any, **kwargs: Any) -> str:
        await never.wait()  # a cache that hangs
        return "cached"

    queued_behind_a_held_worker(signal, slow_fallback)
    with anyio.fail_after(GUARD_S):  # without the defect: back at the deadline, 0.05 s
        collected = await signal.collect_async(sender=None, queue=True, deadline=0.05)
    assert collected.deadline_hit
    assert [o.status for o in collected] == ["timeout", "expired"]


ENDINGS = ("ok", "error", "timeout", "expired", "rejected", "circuit_open", "enqueued", "cancelled")


@pytest.mark.parametrize("queue", [False, True])
async def test_a_call_cancelled_in_its_fallback_is_counted_cancelled(queue: bool) -> None:
    """
    Seen under load: after clients went away mid-request, a shop process had
    counted one call more as submitted than as ended (``outcome_counts()``).
    """
    signal = Signal(name="tests.fallback.cancelled_in_fallback")
    breaker = CircuitBreaker("tests.fallback.cancelled_in_fallback")
    await breaker.aforce_open()
    in_fallback, never = asyncio.Event(), asyncio.Event()

    async def carrier(sender: Any, **kwargs: Any) -> str:
        return "quote"

    async def last_quote(sender: Any, **kwargs: Any) -> str:
        in_fallback.set()
        await never.wait()  # the client goes away meanwhile
        return "cached"

    signal.connect(carrier, weak=False, on_error="log", breaker=breaker, fallback=last_quote)
    request = asyncio.create_task(signal.collect_async(sender=None, queue=queue))
    with anyio.fail_after(GUARD_S):
        await in_fallback.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request

    counts = outcome_counts()
    assert counts["submitted"] == 1
    assert sum(counts[status] for status in ENDINGS) == 1, counts
    assert counts["cancelled"] == 1


async def test_after_the_deadline_a_fallback_still_answers_what_it_has() -> None:
    """A call the deadline expired gets its fallback's answer, if it comes at once."""
    signal = Signal(name="tests.fallback.fallback_in_time")

    async def cached(sender: Any, **kwargs: Any) -> str:
        await asyncio.sleep(0)  # one turn of the loop, like a cache read
        return "cached"

    queued_behind_a_held_worker(signal, cached)
    with override_settings(PATCHBOARD=ONE_WORKER):
        with anyio.fail_after(GUARD_S):
            collected = await signal.collect_async(sender=None, queue=True, deadline=0.05)
    assert [(o.status, o.value) for o in collected] == [("timeout", None), ("expired", "cached")]
