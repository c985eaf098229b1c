"""
How each listener call ends: one outcome with its receiver, status, value,
error and elapsed time, counted once and logged with its numbers, on every
path a call can take.

Elapsed times are read from a virtual clock (``patchboard._clock.now``) that the
listeners move themselves, so each outcome's ``elapsed`` is pinned exactly, never measured.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings

import patchboard._clock
import patchboard._listeners
from patchboard import (
    CircuitBreaker,
    CircuitOpen,
    Collected,
    Listener,
    ListenerOptions,
    Outcome,
    Signal,
    receiver,
)
from patchboard._call import Call, gone_receiver
from patchboard._dispatch import run_plain, run_without_loop
from patchboard._ledger import outcome_counts
from patchboard._queue import queue_stats
from patchboard._run import Dispatch, run_async, run_here
from patchboard._threads import ListenerThreads, thread_stats
from patchboard.testing import VirtualClock, capture_dispatches
from tests.dispatch.test_listener_inputs import Shop


class Boom(Exception):
    pass


SHOP = "tests.dispatch.test_listener_inputs.Shop"


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    """patchboard's clock, installed, moved only by the listeners below (no autojump)."""
    with VirtualClock(100.0, autojump=False) as clock:
        yield clock


def taking(
    clock: VirtualClock, seconds: float, kind: str, result: Any = None
) -> Callable[..., Any]:
    """A ``kind`` listener that takes ``seconds`` (virtual), then returns or raises ``result``."""

    def finish() -> Any:
        clock.advance(seconds)
        if isinstance(result, BaseException):
            raise result
        return result

    if kind == "sync":

        def sync_listener(signal: Any, sender: Any, **kwargs: Any) -> Any:
            return finish()

        return sync_listener

    async def async_listener(signal: Any, sender: Any, **kwargs: Any) -> Any:
        return finish()

    return async_listener


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """
    Lets the test's stuck sync listeners go at its end, and waits until their
    abandoned threads returned: a returning thread logs, and that line belongs
    to this test, not to the next one's capture.
    """
    event = threading.Event()
    yield event
    event.set()
    deadline = time.monotonic() + 10
    while thread_stats().abandoned_running and time.monotonic() < deadline:
        time.sleep(0.001)


def stuck(kind: str, release: threading.Event) -> Callable[..., Any]:
    """A listener that never finishes in time: sync until ``release``, async never."""
    if kind == "sync":

        def sync_stuck(sender: Any, **kwargs: Any) -> None:
            release.wait(10)

        return sync_stuck

    async def async_stuck(sender: Any, **kwargs: Any) -> None:
        await asyncio.sleep(3600)

    return async_stuck


def dispatch(signal: Signal, verb: str) -> Any:
    send = getattr(signal, verb)
    return (async_to_sync(send) if verb.endswith("async") else send)(sender=Shop)


CALL_EVENTS = frozenset(
    {
        "listener_failed",
        "listener_timeout",
        "listener_circuit_open",
        "listener_fallback_failed",
        "listener_gone",
    }
)
"""The events a call logs about itself (not the listener threads' own, which an
abandoned thread of an earlier test may log at any moment)."""


def call_events(logs: Any) -> list[dict[str, Any]]:
    return [e for e in logs.entries if e["event"] in CALL_EVENTS]


def only_count(status: str, n: int = 1, *, submitted: int | None = None) -> None:
    """Only ``n`` calls ended, as ``status``; as many were dispatched (or ``submitted``)."""
    counts = outcome_counts()
    assert counts[status] == n
    assert counts["submitted"] == (n if submitted is None else submitted)
    assert sum(v for key, v in counts.items() if key != "submitted") == n


# Options that send a call down each path.
PATHS: dict[str, dict[str, Any]] = {
    "plain": {},
    "timeout": {"timeout": 300},
    "worker_thread": {"thread_sensitive": False},
}
VERBS = ["collect_async", "collect"]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
def test_each_outcome_times_its_own_listener(
    clock: VirtualClock, verb: str, kind: str, path: str
) -> None:
    signal = Signal(ordered=True, name="tests.outcomes.elapsed")
    first = taking(clock, 5.0, kind, "first")
    second = taking(clock, 1.5, kind, "second")
    for func in (first, second):
        signal.connect(func, weak=False, **PATHS[path])

    collected = dispatch(signal, verb)

    assert [(o.receiver, o.status, o.value, o.error) for o in collected] == [
        (first, "ok", "first", None),
        (second, "ok", "second", None),
    ]
    assert [o.elapsed for o in collected] == [5.0, 1.5]
    only_count("ok", 2)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
def test_a_failure_with_the_log_policy_is_logged_once_and_its_default_stands_in(
    clock: VirtualClock, logs: Any, verb: str, kind: str, path: str
) -> None:
    signal = Signal(ordered=True, name="tests.outcomes.log")
    error = Boom("down")
    ok = taking(clock, 1.0, kind, "fine")
    broken = taking(clock, 2.0, kind, error)
    signal.connect(ok, weak=False, **PATHS[path])
    signal.connect(broken, weak=False, on_error="log", default="stood in", **PATHS[path])

    collected = dispatch(signal, verb)

    assert list(collected)[1] == (broken, "error", "stood in", error, 2.0, None, False, 1, False)
    assert collected[0].elapsed == 1.0
    assert outcome_counts()["error"] == 1
    [event] = call_events(logs)
    assert event == {
        "event": "listener_failed",
        "log_level": "error",
        "listener": patchboard._listeners.dotted(broken),
        "signal": "tests.outcomes.log",
        "sender": SHOP,
        "elapsed_s": 2.0,
        "exc_info": error,
    }


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
def test_a_failure_with_the_raise_policy_reaches_the_caller_unlogged(
    clock: VirtualClock, logs: Any, verb: str, kind: str, path: str
) -> None:
    signal = Signal(ordered=True, name="tests.outcomes.raise")
    error = Boom("down")
    broken = taking(clock, 2.0, kind, error)
    signal.connect(broken, weak=False, on_error="raise", default="unused", **PATHS[path])

    with capture_dispatches() as dispatches, pytest.raises(Boom) as caught:
        dispatch(signal, verb)

    assert caught.value is error
    [outcome] = dispatches[0].outcomes
    assert outcome == (broken, "error", None, error, 2.0, None, True, 1, False)
    only_count("error")
    assert call_events(logs) == []


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
def test_a_timeout_is_logged_with_its_limit(
    release: threading.Event, logs: Any, verb: str, kind: str
) -> None:
    signal = Signal(name="tests.outcomes.timeout")

    slow = stuck(kind, release)
    signal.connect(slow, weak=False, timeout=0.05, on_error="log", default="late")
    try:
        [outcome] = dispatch(signal, verb)
    finally:
        release.set()

    assert (outcome.status, outcome.value, outcome.propagate) == ("timeout", "late", False)
    assert (outcome.error.listener, outcome.error.limit) == (
        patchboard._listeners.dotted(slow),
        0.05,
    )
    assert outcome.elapsed >= 0.05  # a real time limit: never before it
    assert 0.05 <= outcome.error.elapsed <= outcome.elapsed
    only_count("timeout")
    [event] = [e for e in logs.entries if e["event"] == "listener_timeout"]
    assert (event["event"], event["log_level"], event["limit_s"]) == (
        "listener_timeout",
        "warning",
        0.05,
    )
    assert (event["signal"], event["sender"]) == ("tests.outcomes.timeout", SHOP)
    assert event["elapsed_s"] >= 0.05
    assert "exc_info" not in event


# -- calls that never ran: an open circuit ------------------------------------------------


@pytest.fixture
def open_circuit() -> CircuitBreaker:
    breaker = CircuitBreaker("tests.outcomes", store="memory")
    breaker.force_open()
    return breaker


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
def test_an_open_circuit_without_fallback_gets_the_default(
    open_circuit: CircuitBreaker, logs: Any, verb: str, kind: str
) -> None:
    signal = Signal(name="tests.outcomes.circuit")
    func = taking(VirtualClock(), 0, kind, None)
    signal.connect(func, weak=False, breaker=open_circuit, on_error="log", default="closed")

    [outcome] = dispatch(signal, verb)

    assert (outcome.receiver, outcome.status, outcome.value) == (func, "circuit_open", "closed")
    assert isinstance(outcome.error, CircuitOpen)
    assert not outcome.propagate
    only_count("circuit_open")
    [event] = call_events(logs)
    assert (event["event"], event["log_level"], event["breaker"]) == (
        "listener_circuit_open",
        "debug",
        "tests.outcomes",
    )
    assert (event["signal"], event["sender"]) == ("tests.outcomes.circuit", SHOP)
    assert "fallback" not in event


@pytest.mark.parametrize("fallback_kind", ["sync", "async"])
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
def test_an_open_circuit_is_answered_by_the_fallback(
    clock: VirtualClock,
    open_circuit: CircuitBreaker,
    logs: Any,
    verb: str,
    kind: str,
    fallback_kind: str,
) -> None:
    signal = Signal(name="tests.outcomes.fallback")
    func = taking(clock, 0, kind, None)
    fallback = taking(clock, 3.0, fallback_kind, "cached")
    signal.connect(func, weak=False, breaker=open_circuit, fallback=fallback, on_error="raise")

    for _ in range(2):
        [outcome] = dispatch(signal, verb)

        assert (outcome.receiver, outcome.status, outcome.value) == (func, "circuit_open", "cached")
        assert isinstance(outcome.error, CircuitOpen)
        assert outcome.elapsed == 3.0, "the fallback's time is the call's"
        assert not outcome.propagate, "a fallback's answer never propagates"
    only_count("circuit_open", 2)
    event = call_events(logs)[0]
    assert (event["event"], event["fallback"], event["breaker"]) == (
        "listener_circuit_open",
        True,
        "tests.outcomes",
    )
    assert (event["signal"], event["sender"], event["elapsed_s"]) == (
        "tests.outcomes.fallback",
        SHOP,
        3.0,
    )


@pytest.mark.parametrize("policy", ["log", "raise"])
@pytest.mark.parametrize("fallback_kind", ["sync", "async"])
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
def test_a_failing_fallback_is_logged_and_the_error_policy_applies(
    open_circuit: CircuitBreaker, logs: Any, verb: str, kind: str, fallback_kind: str, policy: str
) -> None:
    signal = Signal(name="tests.outcomes.fallback_fails")
    func = taking(VirtualClock(), 0, kind, None)
    fallback_error = RuntimeError("fallback down")
    fallback = taking(VirtualClock(), 0, fallback_kind, fallback_error)
    signal.connect(
        func, weak=False, breaker=open_circuit, fallback=fallback, on_error=policy, default="d"
    )

    with capture_dispatches() as dispatches:
        if policy == "raise":
            with pytest.raises(CircuitOpen):
                dispatch(signal, verb)
        else:
            dispatch(signal, verb)

    [outcome] = dispatches[0].outcomes
    assert (outcome.receiver, outcome.status) == (func, "circuit_open")
    assert outcome.propagate == (policy == "raise")
    assert outcome.value == (None if policy == "raise" else "d")
    assert isinstance(outcome.error, CircuitOpen)
    assert outcome.error.breaker == "tests.outcomes", "the circuit's error, not the fallback's"
    only_count("circuit_open")
    failed = [e for e in logs.entries if e["event"] == "listener_fallback_failed"]
    assert failed == [
        {
            "event": "listener_fallback_failed",
            "log_level": "error",
            "exc_info": fallback_error,
            "signal": "tests.outcomes.fallback_fails",
            "listener": patchboard._listeners.dotted(func),
            "sender": SHOP,
        }
    ]


# -- a listener collected mid-dispatch ------------------------------------------------------


def collected_listener(kind: str, **options: Any) -> Listener:
    """A weakly held Listener whose function has just been garbage collected."""
    func = taking(VirtualClock(), 0, kind, None)
    listener = Listener(func, ListenerOptions(**options), weak=True)
    label = listener.label
    del func
    gc.collect()
    assert listener.receiver is None
    assert listener.label == label
    return listener


def gone_call(method: str) -> Callable[[Listener, Signal, VirtualClock], Any]:
    """Build the Call, let 2 s pass, then run it: its ``elapsed`` counts from the build."""

    def run(listener: Listener, signal: Signal, clock: VirtualClock) -> Any:
        call = Call(listener, signal, Shop, {})
        clock.advance(2)
        runner = getattr(call, method)
        return async_to_sync(runner)() if method == "run_async" else runner()

    return run


GONE_PATHS: dict[str, tuple[Callable[[Listener, Signal, VirtualClock], Any], float]] = {
    "fast_path": (
        lambda lsn, sig, _: async_to_sync(run_async)(lsn, Dispatch(sig, Shop, {}, [lsn])),
        0.0,
    ),
    "own_tasks": (
        lambda lsn, sig, _: async_to_sync(run_plain)(Dispatch(sig, Shop, {}, [lsn]))[0],
        0.0,
    ),
    "call_async": (gone_call("run_async"), 2.0),
    "call_sync": (gone_call("run_sync"), 2.0),
    "thread": (gone_call("start_in_thread"), 2.0),
    "run_here": (lambda lsn, sig, _: run_here([lsn], Dispatch(sig, Shop, {}, [lsn]))[0], 0.0),
    "without_loop": (
        lambda lsn, sig, _: run_without_loop(Dispatch(sig, Shop, {}, [lsn]))[0],
        0.0,
    ),
}


@pytest.mark.parametrize("path", list(GONE_PATHS))
def test_a_listener_collected_mid_dispatch_ends_as_an_error_naming_it(
    clock: VirtualClock, logs: Any, path: str
) -> None:
    kind = "async" if path in ("fast_path", "own_tasks", "call_async") else "sync"
    options = {"timeout": 5} if path in ("thread", "without_loop") else {}
    signal = Signal(name="tests.outcomes.gone")
    run, elapsed = GONE_PATHS[path]

    for _ in range(2):
        listener = collected_listener(kind, **options)
        outcome = run(listener, signal, clock)

        assert (outcome.receiver, outcome.status, outcome.value) == (gone_receiver, "error", None)
        assert isinstance(outcome.error, ReferenceError)
        assert str(outcome.error) == f"listener {listener.label} was garbage collected"
        assert (outcome.elapsed, outcome.propagate) == (elapsed, False)
    only_count("error", 2, submitted=0)  # the paths were run directly, not dispatched
    assert [(e["event"], e["log_level"], e["listener"]) for e in call_events(logs)] == [
        ("listener_gone", "warning", listener.label)
    ] * 2


# -- what escapes, what is counted ---------------------------------------------------------


@pytest.mark.parametrize("verb", VERBS)
def test_keyboard_interrupt_escapes_after_the_successes_before_it_are_counted(
    verb: str,
) -> None:
    signal = Signal(ordered=True, name="tests.outcomes.interrupt")
    clock = VirtualClock()
    signal.connect(taking(clock, 0, "sync", 1), weak=False)
    signal.connect(taking(clock, 0, "sync", KeyboardInterrupt()), weak=False)
    signal.connect(taking(clock, 0, "sync", 3), weak=False)

    with pytest.raises(KeyboardInterrupt):
        dispatch(signal, verb)

    # The interrupted call and the one it kept from starting end as cancelled.
    counts = outcome_counts()
    assert (counts["submitted"], counts["ok"], counts["cancelled"]) == (3, 1, 2)
    assert sum(counts.values()) == 6


@pytest.mark.parametrize("failure", ["log", "raise", "interrupt", "gone"])
def test_a_plain_sync_collect_settles_its_failing_listener_and_goes_on_as_its_policy_says(
    clock: VirtualClock, failure: str
) -> None:
    # Plain sync listeners are called straight from collect()'s thread (the hot path);
    # the one that fails or is gone is settled through its Call, the rest as it says.
    signal = Signal(name="tests.outcomes.plain")
    doomed: list[Callable[..., Any]] = []

    def first(signal: Any, sender: Any, **kwargs: Any) -> int:
        clock.advance(1)
        doomed.clear()  # "gone": the second listener's function dies before its call
        gc.collect()
        return 1

    error = KeyboardInterrupt() if failure == "interrupt" else ValueError("down")
    second = taking(clock, 2, "sync", error)
    third = taking(clock, 4, "sync", 3)
    signal.connect(first, weak=False)
    if failure == "gone":
        doomed.append(second)
        signal.connect(second)  # weakly: only ``doomed`` keeps it
        del second
    else:
        signal.connect(second, weak=False, on_error="raise" if failure == "raise" else "log")
    signal.connect(third, weak=False)

    if failure in ("raise", "interrupt"):
        with pytest.raises(type(error)):
            signal.collect(sender=Shop)
        counts = outcome_counts()
        ended = "error" if failure == "raise" else "cancelled"
        assert (counts["submitted"], counts["ok"], counts[ended], counts["cancelled"]) == (
            3,
            1,
            1 if failure == "raise" else 2,
            1 if failure == "raise" else 2,
        )
        assert sum(counts.values()) == 6
        return
    outcomes = list(signal.collect(sender=Shop))

    assert [o.status for o in outcomes] == ["ok", "error", "ok"]
    assert [o.value for o in outcomes] == [1, None, 3]
    # Each outcome times its own listener (a gone one took no time).
    assert [o.elapsed for o in outcomes] == [1.0, 0.0 if failure == "gone" else 2.0, 4.0]
    assert isinstance(outcomes[1].error, ReferenceError if failure == "gone" else ValueError)
    counts = outcome_counts()
    assert (counts["submitted"], counts["ok"], counts["error"]) == (3, 2, 1)
    assert sum(counts.values()) == 6


PLAIN_VERBS = [("collect", "sync"), ("send_sync", "sync"), ("collect_async", "async")]
PLAIN_VERBS += [("send_async", "async")]
"""The verbs with a hot path for plain listeners of a kind, and that kind."""


def dispatched(signal: Signal, verb: str, **named: Any) -> Collected:
    result = getattr(signal, verb)(**named)
    collected: Collected = asyncio.run(result) if verb.endswith("_async") else result
    return collected


@pytest.mark.parametrize(("verb", "kind"), PLAIN_VERBS)
def test_a_plain_dispatch_whose_listeners_all_returned_reads_as_its_outcomes(
    clock: VirtualClock, verb: str, kind: str
) -> None:
    # The hot paths build the outcomes only when they are first read (_outcomes.Returned):
    # every way of reading them agrees with a Collected of the outcomes themselves.
    signal = Signal(name=f"tests.outcomes.returned.{verb}")
    answer = [2]
    first, second = taking(clock, 1, kind, 1), taking(clock, 2, kind, answer)
    signal.connect(first, weak=False)
    signal.connect(second, weak=False)

    collected = dispatched(signal, verb, sender=Shop, n=1)

    values = collected.values()
    assert values == [1, [2]] and values[1] is answer
    values.append(3)  # the caller's own list
    assert (len(collected), bool(collected), collected.values()) == (2, True, [1, [2]])
    assert collected.errors() == {} and not collected.deadline_hit
    outcomes = list(collected)
    assert outcomes == [
        Outcome(receiver=first, status="ok", value=1, elapsed=1.0),
        Outcome(receiver=second, status="ok", value=[2], elapsed=2.0),
    ]
    assert all(type(outcome) is Outcome for outcome in outcomes)
    assert collected[0] is outcomes[0] and list(collected)[1] is outcomes[1]  # built once
    eager = Collected(outcomes)
    assert collected.as_pairs() == eager.as_pairs() == [(first, 1), (second, [2])]
    assert collected.by_status("ok") == outcomes and collected.by_status("error") == []
    assert repr(collected) == repr(eager) == "<Collected 2 outcomes: ok=2>"
    counts = outcome_counts()
    assert (counts["submitted"], counts["ok"], sum(counts.values())) == (2, 2, 4)


def test_plain_async_listeners_that_returned_beside_one_that_suspended_are_outcomes(
    clock: VirtualClock,
) -> None:
    # run_plain keeps a call that returned at once as its fields' tuple: one that
    # suspended after it makes the dispatch build them all.
    signal = Signal(name="tests.outcomes.mixed")
    first = taking(clock, 1, "async", "at once")

    async def suspends(signal: Any, sender: Any, **kwargs: Any) -> str:
        await asyncio.sleep(0)
        return "later"

    signal.connect(first, weak=False)
    signal.connect(suspends, weak=False)
    collected = asyncio.run(signal.collect_async(sender=Shop))
    assert [type(o) for o in collected] == [Outcome, Outcome]
    assert collected[0] == Outcome(receiver=first, status="ok", value="at once", elapsed=1.0)
    # Every field, grouped and propagate included (the virtual clock did not move
    # while it was suspended).
    assert collected[1] == Outcome(receiver=suspends, status="ok", value="later", elapsed=0.0)


def answers(signal: Any, sender: Any, **kwargs: Any) -> int:
    return 42


def pickled(collected: Collected) -> Collected:
    copied: Collected = pickle.loads(pickle.dumps(collected))
    return copied


@pytest.mark.parametrize("duplicate", [copy.copy, copy.deepcopy, pickled])
def test_a_plain_sync_collects_result_copies_and_pickles_as_a_collected(
    duplicate: Callable[[Collected], Collected],
) -> None:
    """Regression: copying the hot path's Collected restored its outcomes into a read-only
    property (AttributeError)."""
    signal = Signal(name="tests.outcomes.copied")
    signal.connect(answers, weak=False)
    collected = signal.collect(sender=Shop)

    copied = duplicate(collected)

    assert isinstance(copied, Collected)
    assert list(copied) == list(collected) and copied.values() == [42]
    assert (len(copied), copied.deadline_hit) == (1, False)


@pytest.mark.parametrize(("verb", "kind"), PLAIN_VERBS)
def test_a_dispatch_observer_sees_a_plain_dispatch_whose_listeners_all_returned(
    clock: VirtualClock, verb: str, kind: str
) -> None:
    signal = Signal(name=f"tests.outcomes.observed.{verb}")
    listener = taking(clock, 1, kind, "v")
    signal.connect(listener, weak=False)

    with capture_dispatches() as dispatches:
        collected = dispatched(signal, verb, sender=Shop)

    [seen] = dispatches
    assert (seen.signal, seen.sender, seen.statuses()) == (signal, Shop, ["ok"])
    assert list(seen.outcomes) == list(collected)
    assert collected[0] == Outcome(receiver=listener, status="ok", value="v", elapsed=1.0)


def test_a_sync_listeners_own_cancelled_error_without_a_loop_is_its_error() -> None:
    signal = Signal(name="tests.outcomes.cancelled")
    error = asyncio.CancelledError()
    func = taking(VirtualClock(), 0, "sync", error)
    signal.connect(func, weak=False, on_error="log", default="n/a")

    [outcome] = signal.collect(sender=Shop)

    assert (outcome.status, outcome.value, outcome.error) == ("error", "n/a", error)


# -- how listeners and calls present themselves ------------------------------------------


def test_a_listener_is_named_after_its_function() -> None:
    def quote(sender: Any, **kwargs: Any) -> None: ...

    plain = Listener(quote, ListenerOptions(), weak=False)
    timed = Listener(quote, ListenerOptions(timeout=2.5, on_error="log"), weak=False)

    assert plain.label == f"{__name__}.{quote.__qualname__}"
    assert repr(plain) == f"<Listener {plain.label}>"
    assert repr(timed) == f"<Listener {plain.label} timeout=2.5, on_error='log'>"
    assert (timed.__qualname__, timed.__name__) == (quote.__qualname__, "quote")
    with pytest.raises(AttributeError, match="__wrapped__"):
        timed.__wrapped__  # noqa: B018
    signal = Signal(name="tests.outcomes.repr")
    assert repr(Call(timed, signal, Shop, {})) == f"<Call {plain.label} of tests.outcomes.repr>"


def test_a_collected_listener_is_still_named() -> None:
    listener = collected_listener("sync")
    assert listener.__qualname__ == listener.label
    assert listener.__name__ == listener.label


@pytest.fixture
def connected() -> Iterator[Signal]:
    signal = Signal(name="tests.outcomes.receiver")
    yield signal


def test_receiver_connects_the_options_it_was_given(connected: Signal) -> None:
    def fallback(sender: Any, **kwargs: Any) -> None: ...

    options: dict[str, Any] = {
        "priority": 3,
        "timeout": 4.0,
        "on_error": "log",
        "default": "d",
        "breaker": CircuitBreaker("tests.outcomes.options", store="memory"),
        "fallback": fallback,
        "thread_sensitive": False,
        "queue_name": "emails",
        "on_commit": False,
        "missing_instance": "none",
    }

    @receiver(connected, weak=False, **options)
    def func(sender: Any, **kwargs: Any) -> None: ...

    [listener] = connected.listeners()
    assert listener.receiver is func
    assert listener.options == ListenerOptions(**options)


# -- how long a threaded call is waited for ----------------------------------------------


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float | None]]:
    """The time limits the listener threads are asked to keep (start, then wait)."""
    seen: list[tuple[str, float | None]] = []
    start, wait = ListenerThreads.start, ListenerThreads.wait

    def recording_start(self: Any, fn: Any, job: Any, timeout: float | None) -> bool:
        seen.append(("start", timeout))
        return start(self, fn, job, timeout)

    def recording_wait(self: Any, job: Any, timeout: float | None) -> Any:
        seen.append(("wait", timeout))
        return wait(self, job, timeout)

    monkeypatch.setattr(ListenerThreads, "start", recording_start)
    monkeypatch.setattr(ListenerThreads, "wait", recording_wait)
    return seen


@pytest.mark.parametrize(("before", "left"), [(4.0, 6.0), (15.0, 0.0)])
def test_a_threaded_call_is_waited_for_only_the_rest_of_its_limit(
    release: threading.Event,
    clock: VirtualClock,
    waits: list[tuple[str, float | None]],
    before: float,
    left: float,
) -> None:
    """Without a loop, the time the listeners before it took counts against its limit."""
    signal = Signal(name="tests.outcomes.time_left")

    def threaded(sender: Any, **kwargs: Any) -> str:
        if not left:
            release.wait(10)  # still running when its time is up
        return "threaded"

    signal.connect(taking(clock, before, "sync", "here"), weak=False)
    signal.connect(threaded, weak=False, timeout=10, on_error="log")
    try:
        collected = signal.collect(sender=Shop)
    finally:
        release.set()

    assert waits == [("start", 10.0), ("wait", left)]
    assert collected[0].value == "here"
    [_, threaded_outcome] = collected
    if left:
        assert (threaded_outcome.status, threaded_outcome.value) == ("ok", "threaded")
    else:
        assert (threaded_outcome.status, threaded_outcome.elapsed) == ("timeout", before)
        assert (threaded_outcome.error.limit, threaded_outcome.error.elapsed) == (10, before)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
def test_log_kwargs_puts_the_calls_own_kwargs_in_its_failure_event(
    logs: Any, verb: str, kind: str, path: str
) -> None:
    signal = Signal(name="tests.outcomes.log_kwargs")
    broken = taking(VirtualClock(), 0, kind, Boom())
    signal.connect(broken, weak=False, on_error="log", **PATHS[path])

    with override_settings(PATCHBOARD={"LOG_KWARGS": True}):
        send = getattr(signal, verb)
        (async_to_sync(send) if verb.endswith("async") else send)(sender=Shop, cart="c-1", n=2)

    [event] = [e for e in logs.entries if e["event"] == "listener_failed"]
    assert event["kwargs"] == {"cart": "c-1", "n": 2}


def test_each_failing_listener_is_logged_under_its_own_name(logs: Any) -> None:
    """The log limiter keeps one line per listener and second: two listeners, two lines."""
    signal = Signal(name="tests.outcomes.two_failures")

    def first(sender: Any, **kwargs: Any) -> None:
        raise Boom("first")

    def second(sender: Any, **kwargs: Any) -> None:
        raise Boom("second")

    for func in (first, second):
        signal.connect(func, weak=False, on_error="log")
    signal.collect(sender=Shop)

    failed = [e["listener"] for e in logs.entries if e["event"] == "listener_failed"]
    assert failed == [f"{__name__}.{f.__qualname__}" for f in (first, second)]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
def test_a_fallback_answers_only_for_calls_that_never_ran(verb: str, kind: str) -> None:
    """A listener that ran and failed gets its error policy, never its fallback."""
    signal = Signal(name="tests.outcomes.no_fallback")
    answered = []
    broken = taking(VirtualClock(), 0, kind, Boom())
    signal.connect(
        broken, weak=False, fallback=lambda **kw: answered.append(kw), on_error="log", default="d"
    )

    [outcome] = dispatch(signal, verb)

    assert (outcome.status, outcome.value, answered) == ("error", "d", [])


# -- the short-term queue's limits reach the call --------------------------------------------


@pytest.mark.parametrize("guarded", [False, True], ids=["plain", "breaker"])
async def test_a_queued_sync_call_past_its_limit_keeps_its_queue_worker(
    release: threading.Event, guarded: bool
) -> None:
    """The queue runs a sync listener in its own thread runner: it counts the abandoned thread."""
    signal = Signal(name="tests.outcomes.queue_thread")
    breaker = CircuitBreaker("tests.outcomes.queued", store="memory") if guarded else None
    slow = stuck("sync", release)
    signal.connect(slow, weak=False, timeout=0.05, breaker=breaker, on_error="log")
    try:
        [outcome] = await signal.collect_async(sender=Shop, queue=True)
        assert outcome.status == "timeout"
        assert queue_stats().abandoned == 1
    finally:
        release.set()


async def test_the_queues_time_limit_applies_to_a_listener_without_its_own() -> None:
    signal = Signal(name="tests.outcomes.queue_limit")

    async def slow(sender: Any, **kwargs: Any) -> None:
        await asyncio.sleep(3600)

    signal.connect(slow, weak=False, on_error="log")
    with (
        override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": {"TASK_TIME_LIMIT": 0.05}}),
        anyio.fail_after(5),  # only if the limit were ignored
    ):
        [outcome] = await signal.collect_async(sender=Shop, queue=True)

    assert (outcome.status, outcome.error.limit) == ("timeout", 0.05)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_guarded_call_keeps_its_time_limit(release: threading.Event, kind: str) -> None:
    """Under a breaker, the timeout still applies (and the breaker counts it as a failure)."""
    signal = Signal(name="tests.outcomes.guarded_timeout")
    breaker = CircuitBreaker("tests.outcomes.guarded", store="memory")

    slow = stuck(kind, release)
    signal.connect(slow, weak=False, timeout=0.05, breaker=breaker, on_error="log")
    try:
        with anyio.fail_after(5):  # only if the limit were ignored
            [outcome] = await signal.collect_async(sender=Shop)
    finally:
        release.set()

    assert (outcome.status, outcome.error.limit) == ("timeout", 0.05)
    assert breaker.statistics().failures == 1
