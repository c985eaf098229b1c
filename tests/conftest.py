from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import structlog
from django.test import override_settings
from hypothesis import settings
from structlog.testing import LogCapture

from patchboard import Signal
from patchboard.testing import VirtualClock, reset
from tests.services import RedisServer, require_postgres, require_redis, require_redis_server

# CI draws the same examples on every run (derandomized, no example database):
# a property test can only turn CI red through a change, never by chance. The
# random search stays on developers' machines, where a failure it finds is
# kept in .hypothesis/ and, once understood, pinned with @example. No deadline in
# CI: its two cores also run the suite's workers and servers, and an example slowed by
# them is not a failure of the property.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _fresh_patchboard() -> Iterator[None]:
    """Every test starts with patchboard's process state afresh, and leaves none behind."""
    reset()
    yield
    reset()


CLOCK_WALL_START = 1_700_000_000.0
"""Where the ``clock`` fixture's wall reading starts: 2023-11-14T22:13:20+00:00."""


@pytest.fixture
async def clock() -> AsyncIterator[VirtualClock]:
    """
    A ``VirtualClock`` installed for the test (autojump): patchboard's clock
    and the test's event loop read it. Its wall reading (the in-process
    breakers') starts at ``CLOCK_WALL_START``.
    """
    with VirtualClock(wall_start=CLOCK_WALL_START) as clock:
        yield clock


@pytest.fixture
def redis_url() -> str:
    """The real Redis server's URL (database 15, flushed by the tests that write)."""
    return require_redis()


@pytest.fixture
def breaker_name(redis_url: str) -> Iterator[str]:
    """A breaker name unique to this test; its Redis keys are deleted afterwards."""
    unique = f"test-{uuid.uuid4().hex[:12]}"
    yield unique
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"patchboard:breaker:{{{unique}*"))
        keys += list(client.scan_iter(match=f"patchboard:breaker:%{{{unique}*"))  # escaped names
        keys += list(client.scan_iter(match=f"{unique}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A private, running Redis server the test may stop and start again; stopped afterwards."""
    with require_redis_server() as server:
        yield server


@pytest.fixture
def postgres() -> dict[str, object]:
    """Connection parameters of the real PostgreSQL server."""
    return require_postgres()


@pytest.fixture
def dummy(settings: Any) -> Iterator[Any]:
    """Background listeners enqueue to the DummyBackend (tasks wait there until run)."""
    from patchboard._background._framework import api

    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy"}}
    backend = api().task_backends["dummy"]
    backend.clear()
    yield backend
    backend.clear()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Every structlog event emitted during the test, as dicts."""
    capture = LogCapture()
    structlog.configure(processors=[capture])
    try:
        yield capture
    finally:
        structlog.reset_defaults()


# -- logging as a project that never configured structlog leaves it ---------------------------


@pytest.fixture
def unconfigured() -> Iterator[None]:
    """structlog unconfigured, as a project that never configured it leaves it:
    patchboard's events go through logging, rendered as logfmt."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


# -- a short-term queue with no room -----------------------------------------------------------


@pytest.fixture
async def full_queue() -> AsyncIterator[None]:
    """
    The process's short-term queue with one worker, held by a listener until
    the test ends, and no place in line (``MAX_PENDING`` 0): a call that
    needs a place is "rejected" at once; one answered before it takes a
    place (its circuit open) is not.
    """
    held, release = asyncio.Event(), asyncio.Event()

    async def holds_the_worker(sender: Any, **kwargs: Any) -> None:
        held.set()
        await release.wait()

    signal = Signal(name="tests.full_queue")
    signal.connect(holds_the_worker, weak=False)
    one_worker = {"MIN_WORKERS": 1, "MAX_WORKERS": 1, "MAX_PENDING": 0}
    with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": one_worker}):
        holding = asyncio.create_task(signal.collect_async(sender=None, queue=True))
        try:
            await asyncio.wait_for(held.wait(), timeout=10)
            yield
        finally:
            release.set()
            await holding
