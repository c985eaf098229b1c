"""Timeouts: a listener past its limit is cancelled (or abandoned) and logged."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from patchboard import ListenerTimeout, Signal, receiver


async def test_async_listener_is_cancelled_at_its_limit(logs) -> None:
    quote = Signal(name="quote")
    cancelled = []

    @receiver(quote, timeout=0.05, on_error="log", default="late")
    async def slow(sender, **kwargs):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    started = time.perf_counter()
    collected = await quote.collect_async(sender=None)
    elapsed = time.perf_counter() - started

    [outcome] = collected
    assert outcome.status == "timeout"
    assert outcome.value == "late"
    assert isinstance(outcome.error, ListenerTimeout)
    assert isinstance(outcome.error, TimeoutError)
    assert outcome.error.limit == 0.05
    # Cancelled, not waited for: its 10 s sleep never finished.
    assert cancelled == [True]
    # Not before its limit. A lower bound is the one honest timing margin here: a
    # loaded machine only makes the call slower (the deadline is a real-time one).
    assert elapsed >= 0.05
    assert outcome.elapsed >= 0.05
    [event] = [e for e in logs.entries if e["event"] == "listener_timeout"]
    assert event["limit_s"] == 0.05
    assert event["listener"].endswith("slow")
    assert event["elapsed_s"] >= 0.05


async def test_raise_policy_hands_the_collector_a_timeout_error() -> None:
    quote = Signal()

    @receiver(quote, timeout=0.02, on_error="raise")
    async def slow(sender, **kwargs):
        await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await quote.collect_async(sender=None)


async def test_a_listener_within_its_limit_is_untouched() -> None:
    quote = Signal()

    @receiver(quote, timeout=5)
    async def quick(sender, **kwargs):
        await asyncio.sleep(0)
        return "in time"

    assert (await quote.collect_async(sender=None)).values() == ["in time"]


async def test_sync_listener_over_its_limit_is_abandoned_not_waited_for() -> None:
    quote = Signal()
    release = threading.Event()
    finished = threading.Event()

    @receiver(quote, timeout=0.05, on_error="log")
    def blocking(sender, **kwargs):
        release.wait(10)
        finished.set()

    try:
        collected = await quote.collect_async(sender=None)
        assert collected[0].status == "timeout"
        assert not finished.is_set(), "the caller did not wait for the thread"
    finally:
        release.set()
    assert await asyncio.to_thread(finished.wait, 5)
