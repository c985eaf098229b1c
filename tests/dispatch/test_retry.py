"""
Retries: a listener's ``retry=Retry(...)`` tries a call again after the
failures it names, with full-jitter back-off, within the call's time limit,
the signal's retry budget and the listener's circuit breaker; the outcome
reports its attempts.

Async tests run on the ``clock`` fixture's virtual time: a wait or a slow
attempt takes no real time, and times come out exact.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from patchboard import CircuitBreaker, Retry, Signal, outcome_counts, receiver, retry_stats
from patchboard._retry import MIN_RETRIES, WINDOW
from patchboard.testing import VirtualClock, set_retry_waits


@pytest.fixture
def no_waits() -> Iterator[None]:
    """Retries follow their failures at once (sync listeners wait on real time)."""
    set_retry_waits(False)
    yield
    set_retry_waits(True)


def flaky(kind: str, failures: int, error: type[Exception] = ConnectionError) -> Any:
    """A listener that raises ``error`` on its first ``failures`` calls, then returns
    "answer"; ``calls`` counts the calls it got."""
    calls = itertools.count(1)

    def attempt() -> str:
        if next(calls) <= failures:
            raise error("down")
        return "answer"

    if kind == "async":

        async def listener(sender: Any, **kwargs: Any) -> str:
            return attempt()

    else:

        def listener(sender: Any, **kwargs: Any) -> str:
            return attempt()

    listener.calls = calls  # type: ignore[attr-defined]
    return listener


def called(listener: Any) -> int:
    """How many calls ``listener`` got (``flaky``'s counter, read without moving it)."""
    return int(repr(listener.calls)[len("count(") : -1]) - 1


# Options that send a call down each path: the caller's thread (sync), a listener
# thread without an event loop (timeout, from collect), a task, the short-term queue.
PATHS: dict[str, dict[str, Any]] = {
    "plain": {},
    "timeout": {"timeout": 300},
    "worker_thread": {"thread_sensitive": False},
}


def collect(signal: Signal, verb: str, **kwargs: Any) -> Any:
    send = getattr(signal, verb)
    return (async_to_sync(send) if verb.endswith("async") else send)(sender=None, **kwargs)


# -- the option -------------------------------------------------------------------------


def test_retry_must_name_what_it_retries() -> None:
    with pytest.raises(TypeError, match=r"retry_on must be an Exception subclass"):
        Retry(retry_on=())
    with pytest.raises(TypeError, match=r"retry_on must be"):
        Retry(retry_on=(KeyboardInterrupt,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"attempts must be between 1 and 10, got 0"):
        Retry(retry_on=ConnectionError, attempts=0)
    with pytest.raises(ValueError, match=r"budget must be a fraction > 0 and <= 1, got 2"):
        Retry(retry_on=ConnectionError, budget=2)
    assert Retry(retry_on=ConnectionError).retry_on == (ConnectionError,)


def test_bad_retry_options_name_the_listener() -> None:
    signal = Signal()

    def quote(sender: Any, **kwargs: Any) -> None: ...

    with pytest.raises(TypeError, match=r"receiver .*quote: retry must be a patchboard.Retry"):
        receiver(signal, retry=3)(quote)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"receiver .*quote: retry and hedge_after cannot"):
        receiver(signal, retry=Retry(retry_on=OSError), hedge_after=0.2)(quote)


def test_the_longest_wait_grows_exponentially_up_to_its_cap() -> None:
    retry = Retry(retry_on=OSError, wait_initial=0.1, exp_base=2, wait_max=0.5)
    assert [retry.longest_wait(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]


# -- retrying on every path ------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", ["collect_async", "collect"])
def test_a_named_failure_is_retried_and_the_outcome_reports_its_attempts(
    no_waits: None, verb: str, kind: str, path: str
) -> None:
    signal = Signal()
    listener = flaky(kind, failures=2)
    signal.connect(listener, weak=False, retry=Retry(retry_on=ConnectionError), **PATHS[path])

    [outcome] = collect(signal, verb)

    assert (outcome.status, outcome.value, outcome.attempts) == ("ok", "answer", 3)
    assert called(listener) == 3
    counts = outcome_counts()
    assert (counts["submitted"], counts["ok"]) == (1, 1)  # one call, however many attempts
    assert retry_stats(signal).retried == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_queued_calls_retry_too(no_waits: None, kind: str) -> None:
    signal = Signal()
    listener = flaky(kind, failures=1)
    signal.connect(listener, weak=False, retry=Retry(retry_on=ConnectionError))

    [outcome] = collect(signal, "collect_async", queue=True)

    assert (outcome.status, outcome.attempts) == ("ok", 2)
    assert called(listener) == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_failure_it_does_not_name_ends_the_call_at_once(no_waits: None, kind: str) -> None:
    signal = Signal()
    listener = flaky(kind, failures=1, error=ValueError)
    signal.connect(listener, weak=False, on_error="log", retry=Retry(retry_on=ConnectionError))

    [outcome] = collect(signal, "collect")

    assert (outcome.status, outcome.attempts, type(outcome.error)) == ("error", 1, ValueError)
    assert called(listener) == 1


def test_the_last_failure_ends_the_call_with_every_attempt_counted(no_waits: None) -> None:
    signal = Signal()
    listener = flaky("sync", failures=10)
    signal.connect(listener, weak=False, on_error="log", retry=Retry(retry_on=OSError, attempts=4))

    [outcome] = collect(signal, "collect")

    assert (outcome.status, outcome.attempts) == ("error", 4)
    assert called(listener) == 4
    assert outcome_counts()["error"] == 1


async def test_waits_are_full_jitter_below_the_exponential_cap(clock: VirtualClock) -> None:
    signal = Signal()
    waits: list[float] = []
    ended: list[float] = []

    @receiver(signal, on_error="log", retry=Retry(retry_on=OSError, wait_initial=1.0, budget=1))
    async def down(sender: Any, **kwargs: Any) -> None:
        if ended:
            waits.append(clock() - ended[-1])
        ended.append(clock())
        raise ConnectionError("down")

    for _ in range(20):
        [outcome] = await signal.collect_async(sender=None)
        assert outcome.attempts == 3
        clock.advance(WINDOW)  # each call with a budget of its own

    # The first wait is drawn from [0, 1), the second from [0, 2): never past the cap,
    # and spread over it (all 20 in the lower half would be a 1-in-a-million draw).
    firsts, seconds = waits[0::3], waits[1::3]
    assert all(0 <= w <= 1.0 for w in firsts) and all(0 <= w <= 2.0 for w in seconds)
    assert max(firsts) > 0.5 and max(seconds) > 1.0


# -- never past the time limit -------------------------------------------------------------


@pytest.mark.parametrize("limit", ["timeout", "deadline"])
async def test_a_retry_that_could_not_end_in_time_is_not_started(
    clock: VirtualClock, no_waits: None, limit: str
) -> None:
    signal = Signal()
    started: list[float] = []
    options = {"timeout": 1.0} if limit == "timeout" else {}

    @receiver(signal, on_error="log", retry=Retry(retry_on=OSError, attempts=5), **options)
    async def slow_failure(sender: Any, **kwargs: Any) -> None:
        started.append(clock())
        await asyncio.sleep(0.4)
        raise ConnectionError("down")

    begun = clock()
    deadline = {"deadline": 1.0} if limit == "deadline" else {}
    [outcome] = await signal.collect_async(sender=None, **deadline)

    # 0.6 s were left after the first attempt (0.4 s): a second fits; 0.2 s after it.
    assert [t - begun for t in started] == pytest.approx([0.0, 0.4])
    assert (outcome.status, outcome.attempts) == ("error", 2)
    assert clock() - begun == pytest.approx(0.8)


async def test_the_time_limit_covers_every_attempt_and_its_waits(clock: VirtualClock) -> None:
    signal = Signal()

    failed: list[bool] = []

    @receiver(signal, on_error="log", timeout=1.0, retry=Retry(retry_on=OSError, attempts=3))
    async def hangs_after_a_failure(sender: Any, **kwargs: Any) -> None:
        if not failed:
            failed.append(True)
            raise ConnectionError("down")
        await asyncio.sleep(60)

    begun = clock()
    [outcome] = await signal.collect_async(sender=None)

    assert (outcome.status, outcome.attempts) == ("timeout", 2)
    assert outcome.error.limit == 1.0  # type: ignore[union-attr]
    assert clock() - begun == pytest.approx(1.0)


# -- the budget ------------------------------------------------------------------------------


async def test_with_30_percent_failing_calls_the_extra_load_stays_within_the_budget(
    clock: VirtualClock, no_waits: None
) -> None:
    signal = Signal()
    attempts = itertools.count()
    calls = 1000

    @receiver(signal, on_error="log", retry=Retry(retry_on=ConnectionError, attempts=3))
    async def carrier(sender: Any, **kwargs: Any) -> str:
        # 3 attempts in 10 fail, whatever their order: retries included.
        if next(attempts) % 10 in (0, 3, 6):
            raise ConnectionError("down")
        return "quote"

    for _ in range(calls):
        await signal.collect_async(sender=None)

    made = next(attempts)  # counted at the listener
    stats = retry_stats(signal)
    # Without a budget, about 30 % of the calls would have retried (some twice).
    assert made - calls == stats.retried <= 0.1 * calls + MIN_RETRIES
    assert stats.refused > 0
    assert (stats.calls, stats.retries) == (calls, stats.retried)


async def test_the_budget_window_slides(clock: VirtualClock, no_waits: None) -> None:
    signal = Signal()

    @receiver(signal, on_error="log", retry=Retry(retry_on=ConnectionError, attempts=2))
    async def down(sender: Any, **kwargs: Any) -> None:
        raise ConnectionError("down")

    outcomes = [(await signal.collect_async(sender=None))[0] for _ in range(40)]
    retried = retry_stats(signal).retried
    assert sum(o.attempts - 1 for o in outcomes) == retried == 0.1 * 40 + MIN_RETRIES
    assert outcomes[-1].attempts == 1  # the budget is spent

    clock.advance(WINDOW)
    [outcome] = await signal.collect_async(sender=None)
    assert outcome.attempts == 2  # the old calls and retries left the window
    assert (retry_stats(signal).calls, retry_stats(signal).retries) == (1, 1)


# -- the breaker -------------------------------------------------------------------------------


async def test_each_attempt_counts_with_the_breaker_and_an_open_circuit_stops_retrying(
    clock: VirtualClock, no_waits: None
) -> None:
    signal = Signal()
    breaker = CircuitBreaker("tests.retry.carrier", failure_threshold=2, store="memory")
    listener = flaky("async", failures=10)
    signal.connect(
        listener,
        weak=False,
        on_error="log",
        breaker=breaker,
        retry=Retry(retry_on=ConnectionError, attempts=5),
    )

    [outcome] = await signal.collect_async(sender=None)

    assert (outcome.status, outcome.attempts, called(listener)) == ("error", 2, 2)
    assert breaker.state == "open"
    [refused] = await signal.collect_async(sender=None)
    assert (refused.status, refused.attempts, called(listener)) == ("circuit_open", 1, 2)


# -- logs --------------------------------------------------------------------------------------


def test_retries_are_logged_rate_limited_and_counted_exactly(no_waits: None, logs: Any) -> None:
    signal = Signal(name="tests.retry.logged")
    listener = flaky("sync", failures=5)
    retry = Retry(retry_on=ConnectionError, budget=1.0)
    signal.connect(listener, weak=False, on_error="log", retry=retry)

    for _ in range(5):  # the first call fails 3 times, the second twice
        collect(signal, "collect")

    events = [e for e in logs.entries if e["event"] == "listener_retry"]
    assert events[0]["attempt"] == 2
    assert events[0]["error"] == "ConnectionError"
    assert events[0]["signal"] == "tests.retry.logged"
    assert events[0]["wait_s"] == 0.0
    assert len(events) < 4  # one line per listener and second, the rest counted below
    assert retry_stats(signal).retried == called(listener) - 5 == 4
