"""
Where patchboard's events go, and how much of them: Django's LOGGING applies
unless the project configured structlog; overload is summarised, not flooded;
a failure that reaches the caller is not logged twice.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import structlog

from patchboard import CircuitBreaker, ShortTermQueue, Signal
from patchboard._call import Call
from patchboard._config import QueueSettings
from patchboard._log import Limiter
from patchboard._state import state
from patchboard.testing import VirtualClock
from tests.queue_support import Blocker, listener


class Boom(Exception):
    pass


@pytest.fixture
def unconfigured() -> Iterator[None]:
    """structlog as a project that never configured it leaves it."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def _failing_signal(**options: Any) -> Signal:
    signal = Signal(name="tests.logs")

    def broken(sender: Any, **kwargs: Any) -> None:
        raise Boom("bad\nforged_event=1 level=critical")

    signal.connect(broken, weak=False, **options)
    return signal


def test_without_structlog_configured_events_go_through_logging(unconfigured, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="patchboard")
    signal = _failing_signal(on_error="log")

    signal.send_sync(sender=None)

    [record] = [r for r in caplog.records if r.name == "patchboard"]
    assert record.levelno == logging.ERROR
    assert record.getMessage().startswith("listener_failed ")
    assert "listener=tests.test_logs._failing_signal.<locals>.broken" in record.getMessage()
    assert "signal=tests.logs" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is Boom  # the traceback is kept


def test_every_logfmt_key_has_a_value(unconfigured, caplog) -> None:
    """Regression: ``sender=`` for no sender, a bare ``forced`` flag, ``limit_s=0.0999660...``."""
    caplog.set_level(logging.INFO, logger="patchboard")
    signal = Signal(name="tests.logs.values")

    async def slow(sender: Any, **kwargs: Any) -> None:
        await anyio.sleep(30)

    signal.connect(slow, weak=False, timeout=30, on_error="log")
    signal.collect(sender=None, deadline=0.05)  # the limit: what was left of it
    breaker = CircuitBreaker("tests.logs.values", store="memory")
    breaker.force_open()

    messages = {r.getMessage().split()[0]: r.getMessage() for r in caplog.records}
    timeout = messages["listener_timeout"].split()
    assert "sender=None" in timeout
    [limit] = [field for field in timeout if field.startswith("limit_s=")]
    assert re.fullmatch(r"limit_s=0\.0[0-9]{0,5}", limit), limit  # microseconds at most
    assert "forced=true" in messages["circuit_opened"].split()


def test_a_value_cannot_forge_a_log_line(unconfigured, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="patchboard")
    breaker = CircuitBreaker("tests.logs.forge", store="memory", failure_threshold=1)

    def exclude(exc: BaseException) -> bool:
        raise RuntimeError("predicate\nforged_event=1")

    object.__setattr__(breaker, "_excluded_predicates", (exclude,))
    with pytest.raises(Boom), breaker:
        raise Boom

    messages = [r.getMessage() for r in caplog.records if r.name == "patchboard"]
    assert any("circuit_exclude_failed" in m for m in messages)
    assert all("\n" not in m for m in messages)
    assert any("\\nforged_event=1" in m for m in messages)


def test_logging_levels_apply_and_debug_stays_off(unconfigured, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="patchboard")
    breaker = CircuitBreaker("tests.logs.levels", store="memory", failure_threshold=1)
    signal = Signal(name="tests.logs.levels")

    def guarded(sender: Any, **kwargs: Any) -> None:
        raise Boom

    signal.connect(guarded, weak=False, breaker=breaker, on_error="log")
    signal.send_sync(sender=None)  # fails: listener_failed (error), circuit_opened (warning)
    signal.send_sync(sender=None)  # circuit open: listener_circuit_open is debug
    events = [r.getMessage().split()[0] for r in caplog.records if r.name == "patchboard"]
    assert events == ["circuit_opened", "listener_failed"]

    caplog.clear()
    state.limiter = None  # this listener failed a moment ago: start the interval afresh
    logging.getLogger("patchboard").setLevel(logging.ERROR)
    try:
        breaker.reset()
        signal.send_sync(sender=None)
    finally:
        logging.getLogger("patchboard").setLevel(logging.NOTSET)
    events = [r.getMessage().split()[0] for r in caplog.records if r.name == "patchboard"]
    assert events == ["listener_failed"]  # circuit_opened (a warning) is below ERROR


def test_a_configured_structlog_gets_the_events(logs) -> None:
    _failing_signal(on_error="log").send_sync(sender=None)
    assert [e["event"] for e in logs.entries] == ["listener_failed"]


def test_an_error_that_reaches_the_caller_is_not_logged_too(logs) -> None:
    signal = _failing_signal(on_error="raise")
    with pytest.raises(Boom):
        signal.send_sync(sender=None)
    assert [e["event"] for e in logs.entries] == []


async def test_an_overloaded_queue_logs_a_summary_and_counts_every_rejection(logs) -> None:
    clock = VirtualClock()
    state.limiter = Limiter(clock=clock)
    queue = ShortTermQueue(QueueSettings(min_workers=1, max_workers=1, max_pending=0))
    blocker = Blocker()
    signal = Signal(name="tests.logs.overload")

    async def extra(sender: Any, **kwargs: Any) -> str:
        return "never"

    async with anyio.create_task_group() as tg:
        tg.start_soon(queue.run, Call(listener(blocker.run), signal, None, {}))
        await anyio.wait_all_tasks_blocked()
        for _ in range(2000):
            await queue.run(Call(listener(extra, on_error="log"), signal, None, {}))
        clock.advance(1.0)
        await queue.run(Call(listener(extra, on_error="log"), signal, None, {}))
        blocker.release()

    assert queue.statistics().rejected == 2001  # every item counted
    rejected = [e for e in logs.entries if e["event"] == "queue_item_rejected"]
    assert len(rejected) == 2  # the first, then one summary after the interval
    assert "suppressed" not in rejected[0]
    assert rejected[1]["suppressed"] == 1999
    assert [e for e in logs.entries if e["event"].startswith("listener_")] == []


def test_the_limiter_keys_by_event_and_listener() -> None:
    clock = VirtualClock()
    limiter = Limiter(interval=1.0, clock=clock)
    assert limiter.allow("e", "a") == 0
    assert limiter.allow("e", "a") is None
    assert limiter.allow("e", "b") == 0
    assert limiter.allow("f", "a") == 0
    clock.advance(0.5)
    assert limiter.allow("e", "a") is None
    clock.advance(0.5)
    assert limiter.allow("e", "a") == 2
    assert limiter.allow("e", "a") is None
