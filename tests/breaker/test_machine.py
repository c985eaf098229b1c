"""
The breaker's state machine (``patchboard._breaker._machine``) and the in-process
store that runs it: the rules pinned one by one, on virtual time.

The scenarios through ``CircuitBreaker`` are in ``test_breaker.py``; here the
machine is driven directly where a rule is easiest to see there, and through a
breaker where what the user reads (``statistics()``, events,
``circuit_state_changed``) is the point.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio
import pytest

from patchboard import BreakerConfig, CircuitBreaker, CircuitOpen, circuit_state_changed
from patchboard._breaker._machine import (
    ADMIT,
    CLOSED,
    FAILURE,
    HALF_OPEN,
    OPEN,
    PROBE,
    REJECT,
    RELEASE,
    SUCCESS,
    Admission,
    Circuit,
    Machine,
    Transition,
)
from patchboard._breaker._memory import MemoryStore
from patchboard.testing import VirtualClock

START = 1_700_000_000.0


class Boom(Exception):
    pass


def ms(seconds: float) -> int:
    """The machine's time: whole milliseconds (``now``, ``retry_at``, leases, timeouts)."""
    return round(seconds * 1000)


def machine(**options: Any) -> tuple[Machine, Circuit]:
    m = Machine(BreakerConfig(**options))
    return m, m.fresh()


def tripped(**options: Any) -> tuple[Machine, Circuit, list[Transition]]:
    """A count-rule machine opened at t=0 by one failure (``reset_timeout`` 10 by default)."""
    options.setdefault("reset_timeout", 10)
    m, c = machine(failure_threshold=1, **options)
    notes: list[Transition] = []
    m.record(c, None, FAILURE, ms(0.0), notes)
    assert c.state is OPEN
    return m, c, notes


# -- a probe that outlives its lease -------------------------------------------------


def test_a_probe_reporting_after_its_lease_ended_and_a_newer_probe_was_admitted() -> None:
    """The late report is ignored: the newer probe holds the slot and decides."""
    m, c, _ = tripped(probe_timeout=5)
    notes: list[Transition] = []

    assert m.admit(c, ms(10.0), "old", notes) == Admission(PROBE)
    # Within the old probe's lease, the slot is taken: retry when the lease ends.
    assert m.admit(c, ms(14.9), "newer", notes) == Admission(REJECT, ms(15.0))
    assert m.admit(c, ms(15.0), "newer", notes) == Admission(PROBE)
    assert c.probes == {"newer": ms(20.0)}

    notes.clear()
    m.record(c, "old", FAILURE, ms(16.0), notes)  # late: changes nothing
    assert (c.state, c.probes, notes) == (HALF_OPEN, {"newer": ms(20.0)}, [])
    m.record(c, "old", SUCCESS, ms(16.0), notes)  # nor would a late success
    assert (c.state, c.probe_successes, notes) == (HALF_OPEN, 0, [])

    m.record(c, "newer", SUCCESS, ms(17.0), notes)
    assert c.state is CLOSED
    assert notes == [Transition(old=HALF_OPEN, new=CLOSED, failures=0, retry_at=None, forced=False)]


async def test_a_late_probe_through_a_breaker_leaves_the_newer_probe_in_charge() -> None:
    clock = VirtualClock(START)
    b = CircuitBreaker(
        "tests.machine.late", failure_threshold=1, reset_timeout=10, probe_timeout=5, clock=clock
    )
    with pytest.raises(Boom), b:
        raise Boom()
    clock.advance(10)
    old_may_end, newer_may_end = anyio.Event(), anyio.Event()

    async def old_probe() -> None:
        with pytest.raises(Boom):
            async with b:
                await old_may_end.wait()
                raise Boom()

    async def newer_probe() -> None:
        async with b:
            await newer_may_end.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(old_probe)
        await anyio.wait_all_tasks_blocked()
        clock.advance(5)  # the old probe's lease ends
        tg.start_soon(newer_probe)
        await anyio.wait_all_tasks_blocked()
        assert b.statistics().probes == 1
        old_may_end.set()
        await anyio.wait_all_tasks_blocked()
        stats = b.statistics()
        assert (stats.state, stats.probes, stats.failures_total) == ("half_open", 1, 2)
        newer_may_end.set()
    assert b.state == "closed"


# -- reading an open circuit past retry_at ------------------------------------------------


def test_an_open_circuit_reads_half_open_from_retry_at_on() -> None:
    m, c, _ = tripped()
    assert m.effective_state(c, ms(9.999)) is OPEN
    assert m.effective_state(c, ms(10.0)) is HALF_OPEN
    assert c.state is OPEN, "reading moves nothing"
    m.force(c, "force_open", ms(11.0), [])
    assert m.effective_state(c, ms(1e12)) is OPEN, "forced open has no retry_at"


def test_statistics_past_retry_at_read_half_open_and_keep_the_times() -> None:
    clock = VirtualClock(START)
    b = CircuitBreaker("tests.machine.read", failure_threshold=1, reset_timeout=30, clock=clock)
    with pytest.raises(Boom), b:
        raise Boom()
    clock.advance(29.5)
    before = b.statistics()
    assert (before.state, b.state) == ("open", "open")
    clock.advance(0.5)

    stats = b.statistics()

    assert (stats.state, b.state) == ("half_open", "half_open")
    assert stats.opened_at == before.opened_at is not None
    assert stats.retry_at == before.retry_at == b.retry_at is not None
    assert (stats.failures, stats.probes, stats.forced) == (1, 0, None)
    assert stats.opened_at.timestamp() == START
    assert stats.retry_at.timestamp() == START + 30


# -- what a transition says: old state, forced ------------------------------------------------


def test_each_transition_names_its_old_state_and_whether_it_was_forced() -> None:
    m, c = machine(failure_threshold=2, reset_timeout=10)
    notes: list[Transition] = []

    m.force(c, "force_open", ms(1.0), notes)
    m.force(c, "force_open", ms(2.0), notes)  # already open: no transition
    m.force(c, "force_closed", ms(3.0), notes)
    m.force(c, "reset", ms(4.0), notes)  # closed already: no transition
    m.record(c, None, FAILURE, ms(5.0), notes)
    m.record(c, None, FAILURE, ms(6.0), notes)
    m.admit(c, ms(16.0), "probe", notes)
    m.record(c, "probe", FAILURE, ms(17.0), notes)
    m.force(c, "reset", ms(18.0), notes)

    assert notes == [
        Transition(old=CLOSED, new=OPEN, failures=0, retry_at=None, forced=True),
        Transition(old=OPEN, new=CLOSED, failures=0, retry_at=None, forced=True),
        Transition(old=CLOSED, new=OPEN, failures=2, retry_at=16.0, forced=False),
        Transition(old=OPEN, new=HALF_OPEN, failures=2, retry_at=16.0, forced=False),
        Transition(old=HALF_OPEN, new=OPEN, failures=2, retry_at=27.0, forced=False),
        Transition(old=OPEN, new=CLOSED, failures=0, retry_at=None, forced=False),
    ]


def test_transitions_reach_the_events_and_the_signal_with_old_state_and_forced(logs) -> None:
    clock = VirtualClock(START)
    b = CircuitBreaker("tests.machine.events", failure_threshold=1, reset_timeout=10, clock=clock)
    signalled: list[tuple[str, str]] = []

    def on_change(sender: Any, breaker: Any, old_state: str, new_state: str, **kw: Any) -> None:
        assert breaker is b
        signalled.append((old_state, new_state))

    circuit_state_changed.connect(on_change)
    try:
        b.force_open()
        b.force_closed()
        b.reset()  # closed already: no transition, but counting again
        with pytest.raises(Boom), b:
            raise Boom()
        clock.advance(10)
        with b:
            pass
        b.force_open()
        b.reset()
    finally:
        circuit_state_changed.disconnect(on_change)

    moves = [("closed", "open"), ("open", "closed"), ("closed", "open")]
    moves += [("open", "half_open"), ("half_open", "closed"), ("closed", "open")]
    moves += [("open", "closed")]
    assert signalled == moves
    events = [
        (e["event"], e["old_state"], e["forced"])
        for e in logs.entries
        if e["event"].startswith("circuit_") and "old_state" in e
    ]
    assert events == [
        ("circuit_opened", "closed", True),
        ("circuit_closed", "open", True),
        ("circuit_opened", "closed", False),
        ("circuit_half_opened", "open", False),
        ("circuit_closed", "half_open", False),
        ("circuit_opened", "closed", True),
        ("circuit_closed", "open", False),
    ]


# -- the rules, one by one ---------------------------------------------------------------


def test_a_closed_circuit_admits_without_a_probe_slot() -> None:
    m, c = machine()
    assert m.admit(c, ms(0.0), "t", []) == Admission(ADMIT)
    assert c.probes == {}


def test_the_count_rule_opens_at_the_threshold_and_a_success_starts_again() -> None:
    m, c = machine(failure_threshold=3, reset_timeout=10)
    notes: list[Transition] = []
    for now in (1.0, 2.0):
        m.record(c, None, FAILURE, ms(now), notes)
    assert (c.state, c.failures, m.fast(c)) == (CLOSED, 2, False)
    m.record(c, None, SUCCESS, ms(3.0), notes)
    assert (c.failures, m.fast(c)) == (0, True)
    m.record(c, None, RELEASE, ms(3.5), notes)
    assert c.failures == 0
    for now in (4.0, 5.0, 6.0):
        m.record(c, None, FAILURE, ms(now), notes)
    assert (c.state, c.opened_at, c.retry_at, c.failures) == (OPEN, ms(6.0), ms(16.0), 3)
    assert notes == [Transition(old=CLOSED, new=OPEN, failures=3, retry_at=16.0, forced=False)]
    assert m.admit(c, ms(15.9), "t", notes) == Admission(REJECT, ms(16.0))


def test_a_normal_calls_result_counts_only_while_closed_and_not_forced() -> None:
    m, c, notes = tripped()
    m.record(c, None, SUCCESS, ms(1.0), notes)
    m.record(c, None, FAILURE, ms(2.0), notes)
    assert (c.state, c.failures, c.retry_at, len(notes)) == (OPEN, 1, ms(10.0), 1)

    m, c = machine(failure_threshold=1)
    m.force(c, "force_closed", ms(0.0), [])
    m.record(c, None, FAILURE, ms(1.0), [])
    assert (c.state, c.failures, c.forced) == (CLOSED, 0, "closed")


def test_the_rate_rule_waits_for_minimum_calls_and_checks_after_every_call() -> None:
    m, c = machine(trip_rule="rate", failure_rate=0.5, window_size=4, minimum_calls=4)
    notes: list[Transition] = []
    for result in (FAILURE, FAILURE, SUCCESS):
        m.record(c, None, result, ms(1.0), notes)
    assert (c.state, c.failures, list(c.window)) == (CLOSED, 2, [True, True, False])
    assert not m.fast(c), "the rate rule always records"
    # The success that completes minimum_calls finds the rate crossed: 2 of 4.
    m.record(c, None, SUCCESS, ms(2.0), notes)
    assert (c.state, c.failures) == (OPEN, 2)
    assert notes == [Transition(old=CLOSED, new=OPEN, failures=2, retry_at=32.0, forced=False)]


def test_the_rate_rule_slides_its_window() -> None:
    m, c = machine(trip_rule="rate", failure_rate=0.75, window_size=4, minimum_calls=4)
    for result in (FAILURE, FAILURE, SUCCESS, SUCCESS):  # 2 of 4: below 0.75
        m.record(c, None, result, ms(1.0), [])
    m.record(c, None, SUCCESS, ms(2.0), [])  # slides the first failure out
    assert (c.state, c.failures, list(c.window)) == (CLOSED, 1, [True, False, False, False])
    for _ in range(2):
        m.record(c, None, FAILURE, ms(3.0), [])
    assert (c.state, c.failures, list(c.window)) == (CLOSED, 2, [False, False, True, True])
    m.record(c, None, FAILURE, ms(4.0), [])  # 3 of the last 4
    assert (c.state, c.failures) == (OPEN, 3)


def test_the_rate_rule_opens_exactly_at_the_rate() -> None:
    m, c = machine(trip_rule="rate", failure_rate=0.3, window_size=10, minimum_calls=10)
    for result in [SUCCESS] * 7 + [FAILURE] * 2:
        m.record(c, None, result, ms(1.0), [])
    assert c.state is CLOSED
    m.record(c, None, FAILURE, ms(1.0), [])  # 3 of 10: exactly 0.3
    assert c.state is OPEN


def test_probe_successes_close_only_at_the_success_threshold() -> None:
    m, c, _ = tripped(success_threshold=2, half_open_max_calls=2)
    notes: list[Transition] = []
    assert m.admit(c, ms(10.0), "a", notes) == Admission(PROBE)
    assert m.admit(c, ms(10.0), "b", notes) == Admission(PROBE)
    assert m.admit(c, ms(10.0), "c", notes) == Admission(REJECT, ms(20.0))
    m.record(c, "a", SUCCESS, ms(11.0), notes)
    assert (c.state, c.probe_successes) == (HALF_OPEN, 1)
    m.record(c, "b", SUCCESS, ms(12.0), notes)
    assert c == m.fresh()
    assert [(n.old, n.new) for n in notes] == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_released_probe_frees_its_slot_and_counts_nothing() -> None:
    m, c, _ = tripped()
    notes: list[Transition] = []
    m.admit(c, ms(10.0), "a", notes)
    m.record(c, "a", RELEASE, ms(11.0), notes)
    assert (c.state, c.probes, c.probe_successes) == (HALF_OPEN, {}, 0)
    assert m.admit(c, ms(11.0), "b", notes) == Admission(PROBE)


def test_a_failed_probe_grows_the_reset_timeout_up_to_the_cap() -> None:
    m, c, _ = tripped(backoff_factor=3.0, max_reset_timeout=50)
    m.admit(c, ms(10.0), "a", [])
    m.record(c, "a", FAILURE, ms(11.0), [])
    assert (c.state, c.reset_timeout, c.opened_at, c.retry_at) == (
        OPEN,
        ms(30.0),
        ms(11.0),
        ms(41.0),
    )
    m.admit(c, ms(41.0), "b", [])
    m.record(c, "b", FAILURE, ms(42.0), [])
    assert (c.reset_timeout, c.retry_at) == (ms(50.0), ms(92.0))

    m, c, _ = tripped(backoff_factor=3.0)  # no cap
    for token, now in (("a", 10.0), ("b", 41.0)):
        m.admit(c, ms(now), token, [])
        m.record(c, token, FAILURE, ms(now), [])
    assert c.reset_timeout == ms(90.0)


def test_reopening_from_half_open_forgets_the_probes_in_flight() -> None:
    m, c, _ = tripped(half_open_max_calls=2)
    m.admit(c, ms(10.0), "a", [])
    m.admit(c, ms(10.0), "b", [])
    m.record(c, "a", FAILURE, ms(11.0), [])
    assert (c.state, c.probes) == (OPEN, {})
    m.record(c, "b", SUCCESS, ms(12.0), [])  # reports into an open circuit: ignored
    assert c.state is OPEN
    m.admit(c, ms(21.0), "c", [])
    assert (c.state, c.probes, c.probe_successes) == (HALF_OPEN, {"c": ms(31.0)}, 0)


def test_forcing_open_drops_the_probes_and_the_retry() -> None:
    m, c, _ = tripped()
    m.admit(c, ms(10.0), "a", [])
    notes: list[Transition] = []
    m.force(c, "force_open", ms(12.0), notes)
    assert (c.state, c.forced, c.opened_at, c.retry_at, c.probes) == (
        OPEN,
        "open",
        ms(12.0),
        None,
        {},
    )
    assert notes == [Transition(old=HALF_OPEN, new=OPEN, failures=1, retry_at=None, forced=True)]
    assert m.admit(c, ms(1e9), "b", notes) == Admission(REJECT, None)


# -- the in-process store ---------------------------------------------------------------


def store_of(b: CircuitBreaker) -> Any:
    return b._store


def test_the_memory_store_rejects_with_the_retry_time_and_publishes_transitions() -> None:
    clock = VirtualClock(START)
    b = CircuitBreaker("tests.machine.store", failure_threshold=1, reset_timeout=10, clock=clock)
    store = store_of(b)
    assert store.acquire() is store.admitted
    store.record(store.admitted, FAILURE)
    assert [(t.old, t.new) for t in store.pending] == [(CLOSED, OPEN)]
    store.pending.clear()
    with pytest.raises(CircuitOpen) as caught:
        store.acquire()
    assert caught.value.retry_at is not None
    assert caught.value.retry_at.timestamp() == START + 10
    assert caught.value.breaker == "tests.machine.store"
    clock.advance(10)
    probe = store.acquire()
    assert probe is not store.admitted and probe.probe is not None
    assert store.state == "half_open" and not store.fast
    store.record(probe, SUCCESS)
    assert store.state == "closed" and store.fast
    assert [(t.old, t.new) for t in store.pending] == [(OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_the_memory_store_is_seeded_from_another_stores_state_without_transitions() -> None:
    clock = VirtualClock(START)
    b = CircuitBreaker("tests.machine.seed", failure_threshold=3, reset_timeout=10, clock=clock)
    store = store_of(b)

    store.seed(state="open", failures=3, retry_in=4.0, forced=None)
    view = store.view()
    assert (view.state, view.failures, view.opened_at, view.retry_at) == (
        "open",
        3,
        START,
        START + 4,
    )
    assert (view.forced, view.probes, view.fallback, store.fast) == (None, 0, False, False)
    store.seed(state="half_open", failures=2, retry_in=-5.0, forced=None)
    assert store.view().retry_at == START, "a retry in the past is now"
    assert store.state == "half_open"
    store.seed(state="open", failures=1, retry_in=None, forced="open")
    assert (store.view().forced, store.view().retry_at, store.state) == ("open", None, "open")

    store.seed(state="closed", failures=2, retry_in=None, forced=None)
    assert (store.state, store.view().failures, store.fast) == ("closed", 2, False)
    store.seed(state="closed", failures=2, retry_in=None, forced="closed")
    assert (store.view().failures, store.view().forced) == (0, "closed")
    store.seed(state="closed", failures=0, retry_in=None, forced=None)
    assert store.fast
    assert list(store.pending) == []


def test_the_memory_store_forgets_without_reporting() -> None:
    clock = VirtualClock(START)
    b = CircuitBreaker("tests.machine.forget", failure_threshold=1, clock=clock)
    store = store_of(b)
    store.record(store.admitted, FAILURE)
    store.pending.clear()
    store.forget()
    assert (store.state, store.fast, list(store.pending)) == ("closed", True, [])
    store.force("read")
    assert list(store.pending) == []
    store.force("force_open")
    assert [(t.old, t.new, t.forced) for t in store.pending] == [(CLOSED, OPEN, True)]


def test_the_rate_rule_compares_in_exact_integers() -> None:
    """2 failures in 3 calls is 0.666666...: below a rate of 0.666667, by one part in 2e6."""
    m, c = machine(trip_rule="rate", failure_rate=0.666667, window_size=3, minimum_calls=3)
    for result in (SUCCESS, FAILURE, FAILURE):
        m.record(c, None, result, ms(1.0), [])
    assert (c.state, c.failures) == (CLOSED, 2)
    m.record(c, None, FAILURE, ms(2.0), [])  # 3 of the last 3
    assert c.state is OPEN


def test_a_seeded_open_circuit_backs_off_from_the_configured_reset_timeout() -> None:
    """Seeding opens without a trip: a failed probe grows the configured reset timeout."""
    clock = VirtualClock(START)
    b = CircuitBreaker(
        "tests.machine.seed_backoff", reset_timeout=10, backoff_factor=2.0, clock=clock
    )
    store = store_of(b)
    store.seed(state="open", failures=5, retry_in=0.0, forced=None)
    probe = store.acquire()
    store.record(probe, FAILURE)
    view = store.view()
    assert (view.state, view.opened_at, view.retry_at) == ("open", START, START + 20)


def test_a_memory_store_publishes_into_the_deque_it_is_given() -> None:
    """The Redis store's fallback shares its ``pending`` deque with the memory store."""
    shared: deque[Transition] = deque()
    store = MemoryStore("tests.machine.shared", BreakerConfig(failure_threshold=1), pending=shared)
    store.record(store.admitted, FAILURE)
    assert store.pending is shared
    assert [(t.old, t.new) for t in shared] == [(CLOSED, OPEN)]


def test_forcing_open_through_the_store_stamps_the_time() -> None:
    clock = VirtualClock(START)
    b = CircuitBreaker("tests.machine.force_time", clock=clock)
    clock.advance(7)
    b.force_open()
    view = store_of(b).view()
    assert (view.state, view.opened_at, view.retry_at, view.forced) == (
        "open",
        START + 7,
        None,
        "open",
    )
    assert b.statistics().opened_at.timestamp() == START + 7
