"""
Circuit breaker rules with the in-process store, on a virtual clock.

Internals on purpose: the registry (``all_breakers()``) and the breaker
checks (``check_breakers``, ``breaker_error``, ``E010_ID``), compared as the
checks framework reports them.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime
from io import StringIO
from typing import Any

import anyio
import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from patchboard import (
    BreakerConfig,
    BreakerStatistics,
    CircuitBreaker,
    CircuitOpen,
    ListenerTimeout,
    circuit_state_changed,
    get_breaker,
)
from patchboard._breaker import all_breakers
from patchboard._breaker._checks import E010_ID, breaker_error, check_breakers
from patchboard.management.commands.patchboard import PER_PROCESS_NOTE
from patchboard.testing import VirtualClock
from tests.conftest import CLOCK_WALL_START

START = CLOCK_WALL_START
"""The breakers' clock when a test starts (the ``clock`` fixture's wall reading)."""


class Boom(Exception):
    pass


class NotFound(Exception):
    pass


def breaker(clock: VirtualClock, name: str = "ups", **options) -> CircuitBreaker:
    """A memory breaker on patchboard's clock (``clock``, installed)."""
    return CircuitBreaker(name, store="memory", **options)


async def fail(b: CircuitBreaker, exc: BaseException | None = None) -> None:
    with pytest.raises(type(exc) if exc else Boom):
        async with b:
            raise exc or Boom()


async def succeed(b: CircuitBreaker) -> None:
    async with b:
        pass


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- closed -> open ------------------------------------------------------------------


async def test_opens_after_failure_threshold_consecutive_failures(clock) -> None:
    b = breaker(clock, failure_threshold=3, reset_timeout=30)
    await fail(b)
    await fail(b)
    assert b.state == "closed"
    assert b.statistics().failures == 2
    await fail(b)
    assert b.state == "open"
    assert b.retry_at == at(START + 30)


async def test_a_success_resets_the_consecutive_count(clock) -> None:
    b = breaker(clock, failure_threshold=3)
    for _ in range(3):
        await fail(b)
        await fail(b)
        await succeed(b)
    assert b.state == "closed"
    assert b.statistics().failures == 0


async def test_the_callers_exception_is_reraised_unchanged(clock) -> None:
    b = breaker(clock)
    error = Boom("carrier down")
    with pytest.raises(Boom) as caught:
        async with b:
            raise error
    assert caught.value is error


async def test_open_circuit_fails_fast_without_calling_the_code(clock, logs) -> None:
    b = breaker(clock, failure_threshold=2, reset_timeout=30)
    calls = 0

    async def call_ups() -> str:
        nonlocal calls
        calls += 1
        raise Boom()

    for _ in range(2):
        with pytest.raises(Boom):
            await b.call(call_ups)
    for _ in range(25):
        with pytest.raises(CircuitOpen) as caught:
            await b.call(call_ups)
        with pytest.raises(CircuitOpen), b:
            calls += 1
    assert calls == 2
    assert caught.value.breaker == "ups"
    assert caught.value.retry_at == at(START + 30)
    assert b.statistics().rejected == 50
    # One event for the transition, none per rejected call.
    assert [e["event"] for e in logs.entries] == ["circuit_opened"]


# -- half-open ---------------------------------------------------------------------


async def trip(b: CircuitBreaker, clock: VirtualClock) -> None:
    for _ in range(b.config.failure_threshold):
        await fail(b)
    assert b.state == "open"
    clock.advance(b.config.reset_timeout)
    assert b.state == "half_open"


@pytest.mark.parametrize("max_calls", [1, 3])
async def test_half_open_admits_exactly_max_calls_probes_among_200_callers(
    clock, max_calls
) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout=10, half_open_max_calls=max_calls)
    await trip(b, clock)
    release = asyncio.Event()
    admitted = 0
    rejected = 0

    async def caller() -> None:
        nonlocal admitted, rejected
        try:
            async with b:
                admitted += 1
                await release.wait()
        except CircuitOpen:
            rejected += 1

    async with asyncio.TaskGroup() as tg:
        for _ in range(200):
            tg.create_task(caller())
        await anyio.wait_all_tasks_blocked()
        assert (admitted, rejected) == (max_calls, 200 - max_calls)
        assert b.statistics().probes == max_calls
        release.set()
    assert b.state == "closed"


def test_half_open_admits_one_probe_among_threads(clock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout=10)
    b.force_open()
    b.reset()
    with pytest.raises(Boom), b:
        raise Boom()
    clock.advance(10)
    start = threading.Barrier(32)
    release = threading.Event()
    admitted: list[int] = []
    rejected: list[int] = []

    def caller(i: int) -> None:
        start.wait()
        try:
            with b:
                admitted.append(i)
                release.wait(timeout=30)
        except CircuitOpen:
            rejected.append(i)
            if len(rejected) == 31:
                release.set()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(admitted) == 1
    assert len(rejected) == 31
    assert b.state == "closed"


async def test_success_threshold_probes_close_the_circuit(clock, logs) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout=10, success_threshold=2)
    await trip(b, clock)
    await succeed(b)
    assert b.state == "half_open"
    await succeed(b)
    assert b.state == "closed"
    assert b.retry_at is None
    assert [e["event"] for e in logs.entries] == [
        "circuit_opened",
        "circuit_half_opened",
        "circuit_closed",
    ]


async def test_a_failed_probe_reopens_with_backoff_up_to_the_cap(clock) -> None:
    b = breaker(
        clock, failure_threshold=1, reset_timeout=10, backoff_factor=2.0, max_reset_timeout=30
    )
    await trip(b, clock)
    await fail(b)  # the probe
    assert b.state == "open"
    assert b.retry_at == at(clock.wall() + 20)
    clock.advance(19.9)
    with pytest.raises(CircuitOpen):
        await succeed(b)
    clock.advance(0.1)
    await fail(b)
    assert b.retry_at == at(clock.wall() + 30)  # 40, capped
    clock.advance(30)
    await fail(b)
    assert b.retry_at == at(clock.wall() + 30)
    clock.advance(30)
    await succeed(b)
    assert b.state == "closed"
    # Closing forgets the growth: the next trip waits reset_timeout again.
    await fail(b)
    assert b.retry_at == at(clock.wall() + 10)


async def test_a_probe_that_never_reports_loses_its_slot_after_probe_timeout(clock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout=10, probe_timeout=5)
    await trip(b, clock)
    stuck = asyncio.Event()
    entered = asyncio.Event()

    async def hung_probe() -> None:
        async with b:
            entered.set()
            await stuck.wait()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(hung_probe())
        await entered.wait()
        clock.advance(4.9)
        with pytest.raises(CircuitOpen) as caught:
            await succeed(b)
        assert caught.value.retry_at == at(START + 10 + 5)  # when the lease ends
        clock.advance(0.1)
        with pytest.raises(Boom):  # the lease ran out: this caller is the probe now
            async with b:
                raise Boom()
        assert b.state == "open"
        stuck.set()  # the old probe reports late: ignored
    assert b.state == "open"


# -- what counts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "exclude",
    [
        [NotFound],
        ["tests.breaker.test_breaker.NotFound"],
        [lambda exc: isinstance(exc, NotFound)],
        [lambda exc: str(exc) == "404"],
    ],
    ids=["type", "dotted-path", "predicate", "predicate-on-message"],
)
async def test_excluded_exceptions_count_as_neither(clock, exclude) -> None:
    b = breaker(clock, failure_threshold=2, exclude=exclude)
    await fail(b)
    for _ in range(5):
        await fail(b, NotFound("404"))
    stats = b.statistics()
    assert (stats.state, stats.failures) == ("closed", 1)  # no failure, no reset either
    assert (stats.successes, stats.failures_total) == (0, 1)
    await fail(b)
    assert b.state == "open"


async def test_an_excluded_exception_frees_the_probe_slot(clock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout=10, exclude=[NotFound])
    await trip(b, clock)
    await fail(b, NotFound())
    assert b.state == "half_open"
    await succeed(b)
    assert b.state == "closed"


async def test_a_predicate_that_raises_counts_the_failure(clock, logs) -> None:
    def broken(exc: BaseException) -> bool:
        raise RuntimeError("bug in predicate")

    b = breaker(clock, failure_threshold=1, exclude=[broken])
    await fail(b)
    assert b.state == "open"
    assert "circuit_exclude_failed" in [e["event"] for e in logs.entries]


@pytest.mark.parametrize(
    "error",
    [TimeoutError("slow"), ListenerTimeout("tests.listener", 1.0, 1.2)],
    ids=["TimeoutError", "ListenerTimeout"],
)
async def test_timeouts_count_as_failures(clock, error) -> None:
    b = breaker(clock, failure_threshold=2, exclude=[NotFound])
    await fail(b, error)
    await fail(b, error)
    assert b.state == "open"


async def test_a_timeout_inside_the_guard_counts(clock) -> None:
    b = breaker(clock, failure_threshold=1)
    with pytest.raises(TimeoutError):
        async with b:
            async with asyncio.timeout(0):
                await asyncio.Event().wait()
    assert b.state == "open"


async def test_outer_cancellation_counts_as_nothing(clock) -> None:
    b = breaker(clock, failure_threshold=1)
    entered = asyncio.Event()

    async def guarded() -> None:
        async with b:
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(guarded())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # anyio's cancellation from an enclosing scope, too.
    with anyio.move_on_after(0):
        async with b:
            await anyio.sleep_forever()
    stats = b.statistics()
    assert (stats.state, stats.failures, stats.failures_total, stats.successes) == (
        "closed",
        0,
        0,
        0,
    )


async def test_a_cancelled_probe_frees_its_slot(clock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout=10, probe_timeout=1000)
    await trip(b, clock)
    entered = asyncio.Event()

    async def probe() -> None:
        async with b:
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(probe())
    await entered.wait()
    with pytest.raises(CircuitOpen):
        await succeed(b)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "half_open"
    await succeed(b)  # admitted as the probe at once, no lease to wait out
    assert b.state == "closed"


def test_keyboard_interrupt_counts_as_nothing_and_frees_the_probe(clock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout=10)
    with pytest.raises(Boom), b:
        raise Boom()
    clock.advance(10)
    with pytest.raises(KeyboardInterrupt), b:
        raise KeyboardInterrupt
    assert b.state == "half_open"
    assert b.statistics().probes == 0
    b.call_sync(lambda: None)
    assert b.state == "closed"


# -- the failure-rate rule ---------------------------------------------------------


async def test_rate_rule_waits_for_minimum_calls(clock) -> None:
    b = breaker(clock, trip_rule="rate", failure_rate=0.5, window_size=10, minimum_calls=5)
    for _ in range(4):
        await fail(b)
    assert b.state == "closed"
    assert b.statistics().failures == 4
    await fail(b)
    assert b.state == "open"


@pytest.mark.parametrize(
    ("failures", "successes", "state"),
    [(3, 7, "open"), (2, 8, "closed"), (5, 5, "open"), (10, 0, "open")],
)
async def test_rate_rule_opens_at_or_above_failure_rate(clock, failures, successes, state) -> None:
    b = breaker(clock, trip_rule="rate", failure_rate=0.3, window_size=10, minimum_calls=10)
    for _ in range(successes):
        await succeed(b)
    for _ in range(failures):
        await fail(b)
    assert b.state == state


async def test_rate_rule_window_slides(clock) -> None:
    b = breaker(clock, trip_rule="rate", failure_rate=0.5, window_size=4, minimum_calls=4)
    await fail(b)
    for _ in range(4):  # the fourth success pushes the failure out of the window
        await succeed(b)
    assert b.statistics().failures == 0
    await fail(b)
    assert b.state == "closed"
    await fail(b)  # 2 of the last 4
    assert b.state == "open"


# -- guards: sync, threads, decorators, nesting ------------------------------------------


def test_sync_guard_from_threads(clock) -> None:
    b = breaker(clock, failure_threshold=10_000)
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        start.wait()
        for n in range(500):
            try:
                with b:
                    if n % 5 == 0:
                        raise Boom()
            except Boom:
                pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stats = b.statistics()
    assert (stats.successes, stats.failures_total) == (8 * 400, 8 * 100)
    assert stats.state == "closed"


async def test_decorator_guards_async_and_sync_functions(clock) -> None:
    b = breaker(clock, failure_threshold=2)
    calls: list[str] = []

    @b
    async def quote(weight: float) -> float:
        """Ask UPS."""
        calls.append("async")
        if weight < 0:
            raise Boom()
        return weight * 2

    @b
    def quote_sync(weight: float) -> float:
        calls.append("sync")
        if weight < 0:
            raise Boom()
        return weight * 3

    assert quote.__name__ == "quote"
    assert quote.__doc__ == "Ask UPS."
    assert asyncio.iscoroutinefunction(quote)
    assert not asyncio.iscoroutinefunction(quote_sync)
    assert await quote(1.5) == 3.0
    assert quote_sync(weight=2) == 6
    with pytest.raises(Boom):
        await quote(-1)
    with pytest.raises(Boom):
        quote_sync(-1)
    with pytest.raises(CircuitOpen):
        await quote(1)
    with pytest.raises(CircuitOpen):
        quote_sync(1)
    assert calls == ["async", "sync", "async", "sync"]


def test_decorating_a_generator_function_is_refused(clock) -> None:
    b = breaker(clock)

    def gen():
        yield 1

    async def agen():
        yield 1

    for fn in (gen, agen):
        with pytest.raises(TypeError, match="generator function"):
            b(fn)


async def test_call_and_call_sync_pass_arguments_and_results(clock) -> None:
    b = breaker(clock)

    async def add(a: int, *, b: int) -> int:
        return a + b

    assert await b.call(add, 1, b=2) == 3
    assert b.call_sync(lambda a, b: a * b, 3, b=4) == 12
    assert b.statistics().successes == 2


async def test_entries_keep_their_own_tickets_when_nested_and_in_child_tasks(clock) -> None:
    """Each exit settles its own entry's probe slot, whatever entered meanwhile."""
    b = breaker(
        clock,
        failure_threshold=1,
        reset_timeout=10,
        half_open_max_calls=3,
        success_threshold=2,
        exclude=[NotFound],
    )
    await trip(b, clock)
    async with b:  # probe 1
        with pytest.raises(NotFound):
            async with b:  # probe 2, nested: freed without counting
                raise NotFound()
        assert b.statistics().probes == 1

        async def child() -> None:
            # Inherits this task's context, with probe 1 on its entry stack.
            with pytest.raises(NotFound):
                async with b:  # probe 3
                    raise NotFound()

        await asyncio.create_task(child())
        assert b.statistics().probes == 1
    # Probe 1's success counted: one more closes the circuit.
    assert (b.state, b.statistics().probes) == ("half_open", 0)
    await succeed(b)
    assert b.state == "closed"


async def elsewhere(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` as another caller would: a task with a context of its own."""
    await asyncio.create_task(coro, context=contextvars.Context())


async def test_a_fast_entry_during_a_probe_keeps_to_its_own_outcome(clock) -> None:
    b = breaker(clock, failure_threshold=2, reset_timeout=10, half_open_max_calls=2)
    await trip(b, clock)
    async with b:  # probe 1
        await elsewhere(succeed(b))  # probe 2, another caller, closes the circuit meanwhile
        assert b.state == "closed"
        await elsewhere(fail(b))  # another caller's ordinary closed-state call: counted
        assert b.statistics().failures == 1
    # Probe 1 reports late (ignored); the other caller's failure still stands.
    assert (b.state, b.statistics().failures) == ("closed", 1)


async def test_a_probe_during_a_fast_entry_keeps_to_its_own_outcome(clock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout=10)
    with pytest.raises(Boom):
        async with b:  # admitted while closed, with no failures recorded
            await elsewhere(fail(b))  # opens
            clock.advance(10)
            await elsewhere(succeed(b))  # another caller's probe closes it again
            raise Boom()  # this ordinary call fails: counted
    assert b.state == "open"


# -- control, statistics, repr, events ---------------------------------------------------


async def test_force_open_force_closed_and_reset(clock) -> None:
    b = breaker(clock, failure_threshold=1, reset_timeout=10)
    b.force_open()
    clock.advance(10_000)
    with pytest.raises(CircuitOpen) as caught:
        await succeed(b)
    assert caught.value.retry_at is None
    assert b.statistics().forced == "open"
    b.force_closed()
    for _ in range(5):
        await fail(b)
    assert (b.state, b.statistics().forced, b.statistics().failures) == ("closed", "closed", 0)
    b.reset()
    await fail(b)
    assert b.state == "open"
    await b.areset()
    assert b.state == "closed"
    await b.aforce_open()
    assert b.state == "open"
    await b.aforce_closed()
    assert b.state == "closed"


async def test_statistics_and_repr_show_live_state(clock) -> None:
    b = breaker(clock, "carrier-ups", failure_threshold=5, reset_timeout=30)
    await succeed(b)
    assert repr(b) == "<CircuitBreaker 'carrier-ups' closed failures=0>"
    for _ in range(5):
        await fail(b)
    with pytest.raises(CircuitOpen):
        await succeed(b)
    assert repr(b) == (
        "<CircuitBreaker 'carrier-ups' open failures=5 retry_at=2023-11-14T22:13:50+00:00>"
    )
    assert b.statistics() == BreakerStatistics(
        name="carrier-ups",
        state="open",
        failures=5,
        slow_calls=0,
        opened_at=at(START),
        retry_at=at(START + 30),
        rejected=1,
        successes=1,
        failures_total=5,
        store="memory",
        store_kind="memory",
        forced=None,
        probes=0,
        fallback=False,
    )
    with pytest.raises(AttributeError):
        b.statistics().state = "closed"  # type: ignore[misc]


async def test_transitions_are_logged_and_signalled(clock, logs) -> None:
    b = breaker(clock, failure_threshold=2, reset_timeout=10)
    seen: list[tuple[object, str, str]] = []

    def on_change(sender, breaker, old_state, new_state, **kwargs):
        seen.append((breaker, old_state, new_state))

    def broken(sender, **kwargs):
        raise RuntimeError("bad receiver")

    circuit_state_changed.connect(on_change)
    circuit_state_changed.connect(broken)
    try:
        await fail(b)
        await fail(b)
        clock.advance(10)
        await succeed(b)
        b.force_open()
        b.reset()
    finally:
        circuit_state_changed.disconnect(on_change)
        circuit_state_changed.disconnect(broken)
    assert seen == [
        (b, "closed", "open"),
        (b, "open", "half_open"),
        (b, "half_open", "closed"),
        (b, "closed", "open"),
        (b, "open", "closed"),
    ]
    events = [e for e in logs.entries if e["event"].startswith("circuit_")]
    opened = events[0]
    assert opened["event"] == "circuit_opened"
    assert opened["breaker"] == "ups"
    assert opened["failures"] == 2
    assert opened["retry_at"] == at(START + 10).isoformat()
    assert [e["event"] for e in events].count("circuit_signal_receiver_failed") == 5
    assert b.state == "closed"


def test_sync_transitions_are_signalled_too(clock) -> None:
    b = breaker(clock, failure_threshold=1)
    seen: list[str] = []

    def on_change(sender, new_state, **kwargs):
        seen.append(new_state)

    circuit_state_changed.connect(on_change)
    try:
        with pytest.raises(Boom):
            b.call_sync(lambda: (_ for _ in ()).throw(Boom()))
    finally:
        circuit_state_changed.disconnect(on_change)
    assert seen == ["open"]


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"failure_threshold": 0}, ValueError, "failure_threshold must be >= 1, got 0"),
        ({"failure_threshold": 2.5}, TypeError, "failure_threshold must be an int, got 2.5"),
        (
            {"reset_timeout": 0},
            ValueError,
            "reset_timeout must be a finite number of seconds > 0, got 0",
        ),
        ({"reset_timeout": "30"}, TypeError, "reset_timeout must be a number of seconds, got '30'"),
        ({"trip_rule": "ratio"}, ValueError, "trip_rule must be 'count' or 'rate', got 'ratio'"),
        (
            {"failure_rate": 1.5},
            ValueError,
            "failure_rate must be a fraction > 0 and <= 1, got 1.5",
        ),
        (
            {"window_size": 10, "minimum_calls": 20},
            ValueError,
            "minimum_calls must be <= window_size (10), got 20",
        ),
        ({"backoff_factor": 0.5}, ValueError, "backoff_factor must be a finite number >= 1"),
        (
            {"reset_timeout": 60, "max_reset_timeout": 30},
            ValueError,
            "max_reset_timeout must be >= reset_timeout (60), got 30",
        ),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls must be >= 1, got 0"),
        (
            {"probe_timeout": -1},
            ValueError,
            "probe_timeout must be a finite number of seconds > 0, got -1",
        ),
        ({"exclude": NotFound}, TypeError, "exclude must be a list or tuple"),
        ({"exclude": [42]}, TypeError, "exclude entries must be exception classes or predicates"),
        ({"exclude": ["nowhere.Error"]}, ValueError, "exclude: cannot import 'nowhere.Error'"),
        (
            {"store": "postgres://db"},
            ValueError,
            "store must be 'memory' or a Redis URL (redis://, rediss:// or unix://; ",
        ),
        ({"clock": 3}, TypeError, "clock must be a callable returning seconds, got 3"),
        ({"treshold": 3}, TypeError, "unknown circuit breaker argument 'treshold'; known:"),
    ],
)
def test_invalid_arguments_are_named(options, error, message) -> None:
    with pytest.raises(error) as caught:
        CircuitBreaker("bad", **options)
    assert message in str(caught.value)
    assert "bad" not in {b.name for b in all_breakers()}


def test_config_is_frozen_slotted_and_keyword_only() -> None:
    config = BreakerConfig(failure_threshold=3, exclude=[NotFound])
    assert config.exclude == (NotFound,)
    assert config.lease == config.reset_timeout
    with pytest.raises(AttributeError):
        config.failure_threshold = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        BreakerConfig(3)  # type: ignore[misc]
    assert not hasattr(config, "__dict__")


def test_names_are_unique_and_registered(clock) -> None:
    b = breaker(clock, "ups")
    assert get_breaker("ups") is b
    assert get_breaker(b) is b
    with pytest.raises(ValueError, match=r"already exists; share it with get_breaker\('ups'\)"):
        breaker(clock, "ups")
    other = breaker(clock, "fedex")
    assert all_breakers() == [other, b]


@override_settings(
    PATCHBOARD={"BREAKERS": {"carrier-ups": {"failure_threshold": 2, "reset_timeout": 5.0}}}
)
def test_breakers_declared_in_settings_are_built_once() -> None:
    b = get_breaker("carrier-ups")
    assert get_breaker("carrier-ups") is b
    assert (b.config.failure_threshold, b.config.reset_timeout) == (2, 5.0)
    with pytest.raises(ImproperlyConfigured) as caught:
        get_breaker("carrier-dhl")
    assert str(caught.value).startswith("no circuit breaker named 'carrier-dhl'")
    assert str(caught.value).endswith("known: 'carrier-ups'")
    with override_settings(PATCHBOARD={"BREAKERS": {"carrier-ups": {"failure_threshold": 7}}}):
        rebuilt = get_breaker("carrier-ups")
        assert rebuilt is not b
        assert rebuilt.config.failure_threshold == 7


@override_settings(PATCHBOARD={"STORE": "memory", "BREAKERS": {"x": {"failure_threshold": 0}}})
def test_an_invalid_declaration_is_improperly_configured() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"""\["BREAKERS"\]\['x'\]: failure_threshold"""):
        get_breaker("x")


@override_settings(
    PATCHBOARD={
        "BREAKERS": {
            "good": {"failure_threshold": 3},
            "zero": {"failure_threshold": 0},
            "typo": {"reset_timout": 5},
        }
    }
)
def test_check_e010_names_each_bad_breaker_and_argument() -> None:
    errors = check_breakers()
    assert errors == [
        breaker_error("zero", "failure_threshold must be >= 1, got 0"),
        breaker_error(
            "typo",
            "unknown circuit breaker argument 'reset_timout'; known: backoff_factor, clock, "
            "exclude, failure_rate, failure_threshold, half_open_max_calls, key, max_keys, "
            "max_reset_timeout, minimum_calls, probe_timeout, reset_timeout, "
            "slow_call_duration, slow_call_rate, store, success_threshold, sync_interval, "
            "trip_rule, window_size, window_type",
        ),
    ]
    assert {e.id for e in errors} == {E010_ID}
    assert [e for e in run_checks() if e.id == E010_ID] == errors


@override_settings(PATCHBOARD={"BREAKERS": {"good": {"failure_threshold": 3}}})
def test_check_e010_passes_valid_declarations() -> None:
    assert check_breakers() == []


# -- management command --------------------------------------------------------------


def run_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("patchboard", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@override_settings(PATCHBOARD={"BREAKERS": {"carrier-ups": {"failure_threshold": 1}}})
def test_command_lists_declared_and_registered_breakers(clock) -> None:
    b = breaker(clock, "carrier-fedex", failure_threshold=1, reset_timeout=30)
    with pytest.raises(Boom), b:
        raise Boom()
    with pytest.raises(CircuitOpen), b:
        pass
    out, _ = run_command("breakers")
    header, fedex, ups, note = out.splitlines()
    assert header.split() == [
        "name",
        "state",
        "failures",
        "retry_at",
        "rejected*",
        "successes*",
        "failures_total*",
        "store",
    ]
    assert note == PER_PROCESS_NOTE
    assert fedex.split() == [
        "carrier-fedex",
        "open",
        "1",
        "2023-11-14T22:13:50+00:00",
        "1",
        "0",
        "1",
        "memory",
    ]
    assert ups.split() == ["carrier-ups", "closed", "0", "-", "0", "0", "0", "memory"]


@override_settings(PATCHBOARD={"BREAKERS": {"carrier-ups": {"failure_threshold": 1}}})
def test_command_opens_closes_and_resets() -> None:
    out, err = run_command("breakers", "--open", "carrier-ups")
    assert out.splitlines()[0] == "Forced circuit 'carrier-ups' open."
    assert "in-process memory store" in err
    assert get_breaker("carrier-ups").statistics().forced == "open"
    assert "open (forced)" in out
    run_command("breakers", "--close", "carrier-ups")
    assert get_breaker("carrier-ups").statistics().forced == "closed"
    out, _ = run_command("breakers", "--reset", "carrier-ups")
    assert out.splitlines()[0] == "Reset circuit 'carrier-ups'."
    stats = get_breaker("carrier-ups").statistics()
    assert (stats.state, stats.forced) == ("closed", None)


def test_command_rejects_unknown_names_and_missing_subcommands() -> None:
    with pytest.raises(CommandError, match="no circuit breaker named 'nope'"):
        run_command("breakers", "--open", "nope")
    with pytest.raises(CommandError):
        run_command()
    out, _ = run_command("breakers")
    assert out.startswith("No circuit breakers")
