"""
Where patchboard's events go, and how much of them: Django's LOGGING applies
unless the project configured structlog; overload is summarised, not flooded;
a failure that reaches the caller is not logged twice.

Internals on purpose: the log limiter (``_log.Limiter``, ``log_limited``),
installed in ``state`` with a virtual clock and timer so its interval passes
without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import structlog
from django.test import override_settings

from patchboard import CircuitBreaker, Signal, queue_stats, thread_stats
from patchboard._log import Limiter, log_limited
from patchboard._state import state
from patchboard.testing import VirtualClock, reset


class Boom(Exception):
    pass


class Timers:
    """A limiter's timer that waits for the test: it records what it is asked to call."""

    def __init__(self) -> None:
        self.waiting: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def __call__(self, delay: float, function: Callable[[], None]) -> Timers:
        self.waiting.append((delay, function))
        return self

    def cancel(self) -> None:
        self.cancelled += 1

    def fire(self) -> None:
        waiting, self.waiting = self.waiting, []
        for _, function in waiting:
            function()


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
    assert "listener=tests.project.test_logs._failing_signal.<locals>.broken" in record.getMessage()
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


def test_floats_are_written_in_positional_notation(unconfigured, caplog) -> None:
    """A fresh user's stumble: ``elapsed_s=3.7e-05`` beside ``elapsed_s=0.073588``."""
    caplog.set_level(logging.INFO, logger="patchboard")
    signal = Signal(name="tests.logs.floats")

    def fails(sender: Any, **kwargs: Any) -> None:
        raise Boom

    signal.connect(fails, weak=False, on_error="log")
    signal.collect(sender=None)  # a sync listener failing at once: microseconds

    [message] = [r.getMessage() for r in caplog.records if r.name == "patchboard"]
    [elapsed] = [field for field in message.split() if field.startswith("elapsed_s=")]
    assert re.fullmatch(r"elapsed_s=0(\.[0-9]{1,6})?", elapsed), elapsed


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


async def test_an_overloaded_queue_logs_a_summary_and_counts_every_rejection(
    logs, full_queue
) -> None:
    clock = VirtualClock()
    state.limiter = Limiter(clock=clock, timer=Timers())
    signal = Signal(name="tests.logs.overload")

    async def extra(sender: Any, **kwargs: Any) -> str:
        return "never"

    signal.connect(extra, weak=False, on_error="log")
    for _ in range(2000):
        await signal.collect_async(sender=None, queue=True)
    clock.advance(1.0)
    await signal.collect_async(sender=None, queue=True)

    assert queue_stats().rejected == 2001  # every item counted
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


def test_drops_with_nothing_after_them_are_told_at_the_end_of_the_interval(logs) -> None:
    """Regression: 40 events in a burst gave one line, and the 39 others were never told."""
    clock, timers = VirtualClock(), Timers()
    state.limiter = Limiter(interval=1.0, clock=clock, timer=timers)
    for running in range(1, 41):
        log_limited("warning", "listener_thread_abandoned", "l", listener="l", running=running)
    assert [e["running"] for e in logs.entries] == [1]
    assert [delay for delay, _ in timers.waiting] == [1.0]  # one timer, at the interval's end

    clock.advance(0.5)
    timers.fire()  # early (a timer may be): nothing told yet, and it waits again
    assert len(logs.entries) == 1
    assert [delay for delay, _ in timers.waiting] == [0.5]

    clock.advance(0.5)
    timers.fire()
    first, last = logs.entries
    assert "suppressed" not in first and "deferred_s" not in first
    # The last one dropped, told at the end, with how many were dropped before it
    # and how late (it happened at 0, with the others).
    assert (last["event"], last["running"], last["suppressed"], last["deferred_s"]) == (
        "listener_thread_abandoned",
        40,
        38,
        1.0,
    )
    assert timers.waiting == []  # nothing left to tell: no timer

    log_limited("warning", "listener_thread_abandoned", "l", listener="l", running=41)
    assert len(logs.entries) == 2, "the line told at the end opened a new interval"
    clock.advance(1.0)
    log_limited("warning", "listener_thread_abandoned", "l", listener="l", running=42)
    assert [e.get("suppressed") for e in logs.entries[2:]] == [1]
    timers.fire()
    assert len(logs.entries) == 3, "the drop was told by the next event: the timer tells none"
    total = len(logs.entries) + sum(e.get("suppressed", 0) for e in logs.entries)
    assert total == 42  # every event: a line or a count


async def test_abandoned_listener_threads_are_all_told(logs) -> None:
    """Four threads abandoned at once: one line at once, one summary at the interval's end."""
    clock, timers = VirtualClock(), Timers()
    state.limiter = Limiter(clock=clock, timer=timers)
    release = threading.Event()
    signal = Signal(name="tests.logs.abandoned")

    def stuck(sender: Any, **kwargs: Any) -> None:
        release.wait(30)

    signal.connect(stuck, weak=False, timeout=0.05, on_error="log")
    with override_settings(PATCHBOARD={"MAX_THREADS": 4}):
        try:
            await asyncio.gather(*(signal.collect_async(None) for _ in range(4)))
        finally:
            release.set()
        # Their return is logged too: let them return within this test.
        returned = threading.Event()
        for _ in range(1000):
            if thread_stats().abandoned_running == 0:
                break
            await anyio.to_thread.run_sync(returned.wait, 0.01)
        assert thread_stats().abandoned_running == 0
    abandoned = [e for e in logs.entries if e["event"] == "listener_thread_abandoned"]
    assert [e["abandoned_running"] for e in abandoned] == [1]

    clock.advance(1.0)
    timers.fire()
    abandoned = [e for e in logs.entries if e["event"] == "listener_thread_abandoned"]
    assert [(e["abandoned_running"], e.get("suppressed")) for e in abandoned] == [
        (1, None),
        (4, 2),
    ]


def test_the_default_timer_tells_the_drops_from_a_thread_of_its_own(logs) -> None:
    told = threading.Event()

    def watch(logger: Any, method: str, event: dict[str, Any]) -> Any:
        try:
            return logs(logger, method, event)  # captures it, then drops it
        finally:
            if event.get("n") == 3:
                told.set()

    structlog.configure(processors=[watch])
    clock = VirtualClock()  # what is dropped does not depend on this machine's speed
    state.limiter = Limiter(interval=0.01, clock=clock)
    for n in (1, 2, 3):
        log_limited("warning", "queue_item_expired", "l", n=n)
    clock.advance(0.01)  # a timer that fired before waits again
    assert told.wait(10)
    assert [(e["n"], e.get("suppressed")) for e in logs.entries] == [(1, None), (3, 1)]


def test_reset_cancels_the_limiters_timer() -> None:
    """A test's drops are never told into the next test's logs."""
    timers = Timers()
    state.limiter = Limiter(clock=VirtualClock(), timer=timers)
    log_limited("warning", "queue_item_expired", "l")
    log_limited("warning", "queue_item_expired", "l")
    assert len(timers.waiting) == 1
    reset()
    assert timers.cancelled == 1


def test_drops_are_logged_when_the_process_exits_within_the_interval() -> None:
    """
    A command or script that exits within the limiter's second still tells
    what it dropped: the timer is a daemon thread, so the limiter flushes at
    exit. (A fresh user's ``manage.py shell``: three failing saves, one line.)
    """
    script = textwrap.dedent(
        """
        import django
        from django.conf import settings

        settings.configure(INSTALLED_APPS=["patchboard"], DATABASES={})
        django.setup()
        from patchboard import Signal

        def fails(sender, **kwargs):
            raise RuntimeError("carrier down")

        signal = Signal(name="exits.fast")
        signal.connect(fails, weak=False, on_error="log")
        for _ in range(3):
            signal.collect(sender=None)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("listener_failed")]
    assert len(lines) == 2, done.stderr
    assert "suppressed" not in lines[0]
    assert "suppressed=1" in lines[1]
