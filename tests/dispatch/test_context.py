"""
One context rule for every verb: each listener call runs in its own copy of
the caller's context. A listener sees the caller's context variables; what
it sets is seen neither by its siblings nor by the caller afterwards. So a
circuit breaker (which keeps each entry on a contextvar stack) counts two
concurrent calls as two, whatever verb dispatched them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any

import pytest

from patchboard import CircuitBreaker, Signal
from patchboard.testing import VirtualClock

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("tests.context", default="unset")

ASYNC_VERBS = ["collect_async", "send_async", "stream_async"]
SYNC_VERBS = ["collect", "send_sync"]
VERBS = ASYNC_VERBS + SYNC_VERBS
WAIT = 5.0
"""Seconds a thread waits at a barrier before the test fails (never reached when it passes)."""


async def dispatch(signal: Signal, verb: str, *, sender: Any = None) -> list[Any]:
    """
    Dispatch ``signal`` with ``verb`` as a caller would (a sync verb from a
    thread without an event loop, Django's verbs too); what each listener
    answered, in the order the outcomes came.
    """
    if verb in SYNC_VERBS or verb == "send":
        return await asyncio.to_thread(_dispatch_sync, signal, verb, sender)
    if verb == "stream_async":
        async with signal.stream_async(sender) as stream:
            return [outcome.value async for outcome in stream]
    if verb == "asend":
        return [response for _receiver, response in await signal.asend(sender)]
    return (await getattr(signal, verb)(sender)).values()  # type: ignore[no-any-return]


def _dispatch_sync(signal: Signal, verb: str, sender: Any) -> list[Any]:
    if verb == "send":
        return [response for _receiver, response in signal.send(sender)]
    return getattr(signal, verb)(sender).values()  # type: ignore[no-any-return]


async def as_caller(signal: Signal, verb: str) -> str:
    """Dispatch from a caller whose ``VAR`` is ``"caller"``; what ``VAR`` holds there afterwards."""
    if verb in SYNC_VERBS or verb == "send":

        def caller() -> str:
            VAR.set("caller")
            _dispatch_sync(signal, verb, None)
            return VAR.get()

        return await asyncio.to_thread(caller)

    async def async_caller() -> str:
        VAR.set("caller")
        await dispatch(signal, verb)
        return VAR.get()

    return await asyncio.create_task(async_caller())  # a request's task: a context of its own


# -- what a listener sees, and what it leaves behind ------------------------------------


def _setter_and_reader(kind: str, seen: dict[str, str]) -> tuple[Callable[..., Any], ...]:
    """
    Two listeners: ``first`` records what it sees of ``VAR`` and sets it;
    ``second`` records what it sees once ``first`` has set it (an async one
    waits for that; sync ones run in priority order).
    """
    done = asyncio.Event() if kind == "async" else None

    if kind == "async":

        async def first(sender: Any, **kwargs: Any) -> str:
            seen["first"] = VAR.get()
            VAR.set("first")
            assert done is not None
            done.set()
            return "first"

        async def second(sender: Any, **kwargs: Any) -> str:
            assert done is not None
            await done.wait()
            seen["second"] = VAR.get()
            VAR.set("second")
            return "second"

    else:

        def first(sender: Any, **kwargs: Any) -> str:
            seen["first"] = VAR.get()
            VAR.set("first")
            return "first"

        def second(sender: Any, **kwargs: Any) -> str:
            seen["second"] = VAR.get()
            VAR.set("second")
            return "second"

    return first, second


@pytest.mark.parametrize("options", [{}, {"on_error": "log"}], ids=["plain", "with-options"])
@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("verb", VERBS)
async def test_a_listener_sees_the_callers_values_and_leaks_nothing(
    verb: str, kind: str, ordered: bool, options: dict[str, Any]
) -> None:
    signal = Signal(ordered=ordered)
    seen: dict[str, str] = {}
    first, second = _setter_and_reader(kind, seen)
    signal.connect(first, priority=1, **options)
    signal.connect(second, **options)

    after = await as_caller(signal, verb)

    assert seen == {"first": "caller", "second": "caller"}, "a sibling's value leaked"
    assert after == "caller", "a listener's value leaked back into the caller"


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("verb", ["send", "asend"])
async def test_djangos_verbs_on_an_ordered_signal_follow_the_rule(verb: str, kind: str) -> None:
    signal = Signal(ordered=True)
    seen: dict[str, str] = {}
    first, second = _setter_and_reader(kind, seen)
    signal.connect(first, priority=1)
    signal.connect(second, on_error="log")

    after = await as_caller(signal, verb)

    assert seen == {"first": "caller", "second": "caller"}
    assert after == "caller"


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("verb", ["send", "asend"])
async def test_djangos_verbs_run_listeners_with_options_by_the_rule(verb: str, kind: str) -> None:
    """On a plain signal Django's verbs are Django's; a listener with options is ours."""
    signal = Signal()
    seen: dict[str, str] = {}
    first, second = _setter_and_reader(kind, seen)
    signal.connect(first, priority=1, on_error="log")
    signal.connect(second, on_error="log")

    after = await as_caller(signal, verb)

    assert seen == {"first": "caller", "second": "caller"}
    assert after == "caller"


async def test_djangos_send_shares_the_callers_context_with_plain_receivers() -> None:
    """Django's own rule, kept for receivers connected without options (the README says so)."""
    signal = Signal()
    seen: dict[str, str] = {}
    first, second = _setter_and_reader("sync", seen)
    signal.connect(first)
    signal.connect(second)

    after = await as_caller(signal, "send")

    assert seen == {"first": "caller", "second": "first"}
    assert after == "second"


async def test_a_stream_listener_sees_the_callers_values_and_its_own_deadline() -> None:
    signal = Signal()
    seen: list[str] = []

    async def listener(sender: Any, **kwargs: Any) -> None:
        seen.append(VAR.get())

    signal.connect(listener)
    VAR.set("caller")
    async with signal.stream_async(None, deadline=5.0) as stream:
        outcomes = [outcome async for outcome in stream]

    assert seen == ["caller"]
    assert [outcome.status for outcome in outcomes] == ["ok"]


# -- circuit breakers count concurrent calls from any verb --------------------------------


class Meeting:
    """
    Where two listener calls wait for each other, so that both are inside
    the breaker at once: an ``asyncio`` event for async listeners, a
    barrier for sync ones (each in a listener thread of its own).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.arrived = 0
        self.both = asyncio.Event()
        self.barrier = threading.Barrier(2, timeout=WAIT)
        self.lock = threading.Lock()
        self.decided = threading.Event()

    async def arrive(self) -> None:
        """Wait until the other call has arrived too (or was refused)."""
        self.arrived += 1
        if self.arrived == 2:
            self.both.set()
        await self.both.wait()

    def listener(self, *, fail: bool) -> Callable[..., Any]:
        """A listener that returns (or raises) once the other call is inside too."""
        if self.kind == "async":

            async def meet(sender: Any, **kwargs: Any) -> str:
                await self.arrive()
                if fail:
                    raise ConnectionError("carrier down")
                return "quote"

            return meet

        def meet_in_thread(sender: Any, **kwargs: Any) -> str:
            self.barrier.wait()
            if fail:
                raise ConnectionError("carrier down")
            return "quote"

        return meet_in_thread

    def probe(self) -> Callable[..., Any]:
        """
        A listener that answers once the other call is decided: it came in
        too (a second probe), or it was refused (its fallback ran).
        """
        if self.kind == "async":

            async def probe(sender: Any, **kwargs: Any) -> str:
                await self.arrive()
                return "quote"

            return probe

        def probe_in_thread(sender: Any, **kwargs: Any) -> str:
            with self.lock:
                self.arrived += 1
                if self.arrived == 2:
                    self.decided.set()
            assert self.decided.wait(WAIT), "the other call was never decided"
            return "quote"

        return probe_in_thread

    def fallback(self, sender: Any, **kwargs: Any) -> str:
        if self.kind == "async":
            self.both.set()
        else:
            self.decided.set()
        return "refused"


def _guarded(
    signal: Signal,
    meeting: Meeting,
    listener: Callable[..., Any],
    breaker: CircuitBreaker,
    **more: Any,
) -> None:
    # Sync listeners each in a listener thread (thread_sensitive=False), so both run at once.
    threads = {"thread_sensitive": False} if meeting.kind == "sync" else {}
    signal.connect(listener, weak=False, breaker=breaker, on_error="log", **threads, **more)


def _half_open(name: str) -> tuple[CircuitBreaker, VirtualClock]:
    clock = VirtualClock()
    breaker = CircuitBreaker(
        name, failure_threshold=1, reset_timeout=10, half_open_max_calls=1, clock=clock
    )
    with contextlib.suppress(ConnectionError):
        breaker.call_sync(_fail)
    assert breaker.state == "open"
    clock.advance(10)
    return breaker, clock


def _fail() -> None:
    raise ConnectionError("carrier down")


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("verb", VERBS)
async def test_two_concurrent_failures_count_twice(verb: str, kind: str) -> None:
    signal = Signal()
    breaker = CircuitBreaker("context-failures", failure_threshold=2, reset_timeout=30)
    meeting = Meeting(kind)
    _guarded(signal, meeting, meeting.listener(fail=True), breaker)
    _guarded(signal, meeting, meeting.listener(fail=True), breaker)

    await dispatch(signal, verb)

    assert breaker.statistics().failures_total == 2
    assert breaker.state == "open", "two concurrent failures counted as one"


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("verb", VERBS)
async def test_half_open_admits_one_probe_of_two_concurrent_calls(verb: str, kind: str) -> None:
    signal = Signal()
    breaker, _clock = _half_open("context-probe")
    meeting = Meeting(kind)
    _guarded(signal, meeting, meeting.probe(), breaker, fallback=meeting.fallback)
    _guarded(signal, meeting, meeting.probe(), breaker, fallback=meeting.fallback)

    answers = await dispatch(signal, verb)

    assert sorted(answers) == ["quote", "refused"], "both calls went through as probes"
    assert breaker.state == "closed"


async def _two_dispatches_at_once(signal: Signal, verb: str) -> None:
    """
    Two dispatches at once: of an async verb, from tasks that share one
    context, as Django's ``asend`` runs its async receivers (the calls must
    still be apart); of a sync one, from two threads.
    """
    if verb in SYNC_VERBS or verb == "send":
        await asyncio.gather(dispatch(signal, verb), dispatch(signal, verb))
        return
    shared = contextvars.copy_context()
    async with asyncio.TaskGroup() as group:
        for _ in range(2):
            group.create_task(dispatch(signal, verb), context=shared)


ORDERED_VERBS = [*VERBS, "send", "asend"]


def _kind(verb: str) -> str:
    # Sync verbs dispatch from threads: their (sync) listeners meet at a barrier.
    return "sync" if verb in SYNC_VERBS or verb == "send" else "async"


@pytest.mark.parametrize("verb", ORDERED_VERBS)
async def test_ordered_dispatches_at_once_count_both_failures(verb: str) -> None:
    signal = Signal(ordered=True)
    breaker = CircuitBreaker("context-ordered", failure_threshold=2, reset_timeout=30)
    meeting = Meeting(_kind(verb))
    signal.connect(meeting.listener(fail=True), weak=False, breaker=breaker, on_error="log")

    await _two_dispatches_at_once(signal, verb)

    assert breaker.statistics().failures_total == 2
    assert breaker.state == "open", "two concurrent failures counted as one"


@pytest.mark.parametrize("verb", ORDERED_VERBS)
async def test_ordered_dispatches_at_once_make_one_probe(verb: str) -> None:
    signal = Signal(ordered=True)
    breaker, _clock = _half_open("context-ordered-probe")
    meeting = Meeting(_kind(verb))
    refused: list[str] = []

    def fallback(sender: Any, **kwargs: Any) -> str:
        refused.append("refused")
        return meeting.fallback(sender)

    signal.connect(meeting.probe(), weak=False, breaker=breaker, on_error="log", fallback=fallback)

    await _two_dispatches_at_once(signal, verb)

    assert refused == ["refused"], "both calls went through as probes"
    assert breaker.state == "closed"


async def test_djangos_asend_counts_concurrent_failures_of_listeners_with_options() -> None:
    """Django's ``asend`` shares one context among async receivers; ours still count apart."""
    signal = Signal()
    breaker = CircuitBreaker("context-asend", failure_threshold=2, reset_timeout=30)
    meeting = Meeting("async")
    first, second = meeting.listener(fail=True), meeting.listener(fail=True)
    signal.connect(first, breaker=breaker, on_error="log")
    signal.connect(second, breaker=breaker, on_error="log")

    await signal.asend(None)

    assert breaker.state == "open", "two concurrent failures counted as one"
