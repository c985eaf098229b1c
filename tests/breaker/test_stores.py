"""
The breaker's two stores hold one set of rules.

Every scenario below runs on the in-process store and on the real Redis
(``breaker.lua``), both driven by one virtual clock on whole milliseconds
(the script takes its clock from ``RedisStore(server_clock=...)``, and
``sync_interval=0`` sends every decision to it), and expects the same
decisions, views and transitions from both. A stateful test then drives the
two stores and a small reference model of the rules, written here from the
README rather than taken from ``machine.py``, through random calls, reports,
clock jumps and controls: after every step all three must agree.

Internals on purpose: the two stores (``_breaker._memory``, ``_breaker._redis``)
and the machine's results are driven directly, below ``CircuitBreaker``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, TypeAlias

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from patchboard import BreakerConfig, CircuitOpen
from patchboard._breaker._machine import (
    FAILURE,
    RELEASE,
    SLOW_FAILURE,
    SLOW_SUCCESS,
    SUCCESS,
    Result,
)
from patchboard._breaker._memory import MemoryStore
from patchboard._breaker._redis import RedisStore
from patchboard._breaker._store import StoreView, Ticket
from patchboard.testing import VirtualClock

START_MS = 1_700_000_000_000
"""The virtual clock's start (whole milliseconds since the epoch)."""

Store: TypeAlias = MemoryStore | RedisStore
Seen: TypeAlias = tuple[str, str, int, int | None, bool]
"""A transition as compared: old, new, failures, retry_at (ms), forced."""


def ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def delete_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class Rig:
    """One store under test on a virtual clock, with its view in milliseconds."""

    def __init__(self, store: Store, clock: VirtualClock) -> None:
        self.store = store
        self.name = store.label
        self.clock = clock
        self.now = START_MS

    def at(self, when: int) -> None:
        """Set the clock to ``when`` (ms; never backwards)."""
        self.now = when
        self.clock.set(when / 1000)

    def advance(self, delta: int) -> None:
        self.at(self.now + delta)

    def admit(self) -> Ticket:
        """A call that must be admitted normally (closed)."""
        ticket = self.store.acquire()
        assert ticket.probe is None
        return ticket

    def probe(self) -> Ticket:
        """A call that must be admitted as a half-open probe."""
        ticket = self.store.acquire()
        assert ticket.probe is not None
        return ticket

    def rejected(self) -> int | None:
        """A call that must be rejected; its ``retry_at`` in ms."""
        with pytest.raises(CircuitOpen) as caught:
            self.store.acquire()
        retry_at = caught.value.retry_at
        return None if retry_at is None else ms(retry_at.timestamp())

    def call(self, result: Result) -> None:
        """One call, admitted whichever way, and its result."""
        self.store.record(self.store.acquire(), result)

    def transitions(self) -> list[Seen]:
        """The transitions the store reported since the last look."""
        pending = self.store.pending
        seen = [(t.old, t.new, t.failures, ms(t.retry_at), t.forced) for t in pending]
        pending.clear()
        return seen

    def view(self) -> dict[str, Any]:
        v: StoreView = self.store.view()
        assert not v.fallback
        return {
            "state": v.state,
            "failures": v.failures,
            "slow_calls": v.slow_calls,
            "opened_at": ms(v.opened_at),
            "retry_at": ms(v.retry_at),
            "forced": v.forced,
            "probes": v.probes,
        }


Make: TypeAlias = Callable[..., Rig]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """Builds the store under test from breaker options (times in seconds)."""
    prefix = f"test-stores-{uuid.uuid4().hex[:12]}"
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def build(**options: Any) -> Rig:
        clock = VirtualClock(START_MS / 1000)
        config = BreakerConfig(clock=clock, sync_interval=0, **options)
        if url is None:
            return Rig(MemoryStore("stores", config), clock)
        return Rig(RedisStore("stores", config, url, key_prefix=prefix, server_clock=clock), clock)

    yield build
    if url is not None:
        delete_keys(url, prefix)


def trip(rig: Rig, failures: int) -> None:
    for _ in range(failures):
        rig.call(FAILURE)


# -- closed ---------------------------------------------------------------------------


def test_the_count_rule_opens_at_failure_threshold(make: Make) -> None:
    rig = make(failure_threshold=3, reset_timeout=30)
    trip(rig, 2)
    assert rig.view()["state"] == "closed"
    assert rig.view()["failures"] == 2
    assert rig.transitions() == []
    rig.advance(7)
    rig.call(FAILURE)
    assert rig.transitions() == [("closed", "open", 3, START_MS + 7 + 30_000, False)]
    assert rig.view() == {
        "state": "open",
        "failures": 3,
        "slow_calls": 0,
        "opened_at": START_MS + 7,
        "retry_at": START_MS + 7 + 30_000,
        "forced": None,
        "probes": 0,
    }


def test_a_success_resets_the_consecutive_failures(make: Make) -> None:
    rig = make(failure_threshold=3)
    trip(rig, 2)
    rig.call(SUCCESS)
    assert rig.view()["failures"] == 0
    trip(rig, 2)
    assert rig.view()["state"] == "closed"
    rig.call(FAILURE)
    assert rig.view()["state"] == "open"


def test_an_excluded_result_neither_counts_nor_resets(make: Make) -> None:
    rig = make(failure_threshold=3)
    trip(rig, 2)
    rig.call(RELEASE)
    assert rig.view()["failures"] == 2
    rig.call(FAILURE)
    assert rig.view()["state"] == "open"


def test_the_rate_rule_waits_for_minimum_calls(make: Make) -> None:
    rig = make(trip_rule="rate", failure_rate=0.5, window_size=10, minimum_calls=5)
    trip(rig, 4)
    assert rig.view()["state"] == "closed"
    assert rig.view()["failures"] == 4
    rig.call(FAILURE)
    assert rig.transitions() == [("closed", "open", 5, START_MS + 30_000, False)]


@pytest.mark.parametrize(("failures", "state"), [(7, "open"), (6, "closed")])
def test_the_rate_rule_compares_exactly_at_the_boundary(make: Make, failures, state) -> None:
    # 0.7 * 10 is 7.000000000000001 in floating point: 7 of 10 must still trip it.
    rig = make(trip_rule="rate", failure_rate=0.7, window_size=10, minimum_calls=10)
    for _ in range(10 - failures):
        rig.call(SUCCESS)
    trip(rig, failures)
    assert rig.view()["state"] == state
    assert rig.view()["failures"] == failures


@pytest.mark.parametrize(("failures", "state"), [(2, "open"), (1, "closed")])
def test_the_call_that_completes_minimum_calls_trips_even_when_it_succeeds(
    make: Make, failures: int, state: str
) -> None:
    # Regression: both stores compared the rate only after a failure, so 2 of
    # 4 calls failed and the circuit stayed closed until the next failure.
    rig = make(trip_rule="rate", failure_rate=0.5, window_size=10, minimum_calls=4)
    trip(rig, failures)
    for _ in range(3 - failures):
        rig.call(SUCCESS)
    assert rig.view()["state"] == "closed"
    rig.call(SUCCESS)
    assert rig.view()["state"] == state
    expected = [("closed", "open", 2, START_MS + 30_000, False)] if state == "open" else []
    assert rig.transitions() == expected


def test_the_rate_rule_window_slides(make: Make) -> None:
    rig = make(trip_rule="rate", failure_rate=0.5, window_size=4, minimum_calls=4)
    rig.call(FAILURE)
    for _ in range(4):  # the fourth success pushes the failure out of the window
        rig.call(SUCCESS)
    assert rig.view()["failures"] == 0
    rig.call(FAILURE)
    assert rig.view()["state"] == "closed"
    rig.call(FAILURE)  # 2 of the last 4
    assert rig.transitions() == [("closed", "open", 2, START_MS + 30_000, False)]


def test_a_time_window_forgets_the_seconds_that_left_it(make: Make) -> None:
    rig = make(trip_rule="rate", window_type="time", window_size=10, minimum_calls=5)
    trip(rig, 3)  # second 0
    rig.advance(9_999)  # second 9: still in the window
    rig.call(SUCCESS)
    assert rig.view()["failures"] == 3
    rig.advance(1)  # second 10: second 0 has left it
    rig.call(SUCCESS)
    assert rig.view()["failures"] == 0
    trip(rig, 2)
    assert rig.view()["state"] == "closed"  # 4 calls in the window: under minimum_calls
    trip(rig, 1)  # 3 of 5
    assert rig.transitions() == [("closed", "open", 3, START_MS + 10_000 + 30_000, False)]


def test_a_time_window_counts_minimum_calls_in_the_window_only(make: Make) -> None:
    rig = make(trip_rule="rate", failure_rate=1, window_type="time", window_size=2, minimum_calls=3)
    for _ in range(5):  # one failure a second: never 3 calls within 2 seconds
        trip(rig, 1)
        rig.advance(1_000)
    assert rig.view()["state"] == "closed"
    assert rig.view()["failures"] == 2  # seconds 3 and 4, as of the last call
    trip(rig, 2)  # second 5: seconds 4 and 5 hold 3 failures
    assert rig.view()["state"] == "open"


def test_a_long_silence_empties_a_time_window(make: Make) -> None:
    rig = make(trip_rule="rate", window_type="time", window_size=5, minimum_calls=2)
    trip(rig, 1)
    rig.advance(3_600_000)
    rig.call(SUCCESS)
    view = rig.view()
    assert (view["state"], view["failures"]) == ("closed", 0)
    trip(rig, 1)  # 1 of 2
    assert rig.view()["state"] == "open"


@pytest.mark.parametrize("window_type", ["count", "time"])
def test_slow_calls_open_the_circuit_even_when_they_succeed(make: Make, window_type) -> None:
    rig = make(
        trip_rule="rate",
        window_type=window_type,
        window_size=10,
        minimum_calls=4,
        slow_call_duration=2,
        slow_call_rate=0.75,
    )
    rig.call(SUCCESS)
    rig.call(SLOW_SUCCESS)
    rig.call(SLOW_FAILURE)
    assert rig.view()["slow_calls"] == 2
    assert rig.view()["failures"] == 1
    rig.call(SLOW_SUCCESS)  # 3 slow of 4 calls: 75 %; 1 failure of 4 is under 50 %
    assert rig.transitions() == [("closed", "open", 1, START_MS + 30_000, False)]
    assert rig.view()["slow_calls"] == 3


def test_slow_calls_slide_out_of_a_count_window(make: Make) -> None:
    rig = make(
        trip_rule="rate", window_size=3, minimum_calls=3, slow_call_duration=1, slow_call_rate=1
    )
    rig.call(SLOW_SUCCESS)
    rig.call(SLOW_SUCCESS)
    rig.call(SUCCESS)
    rig.call(SLOW_SUCCESS)
    assert rig.view()["slow_calls"] == 2
    rig.call(SLOW_SUCCESS)  # the fast one is still in the window
    assert rig.view()["state"] == "closed"
    rig.call(SLOW_SUCCESS)
    assert rig.view()["state"] == "open"


def test_a_slow_probe_reopens_the_circuit(make: Make) -> None:
    rig = make(trip_rule="rate", window_size=1, minimum_calls=1, slow_call_duration=1)
    trip(rig, 1)
    rig.at(START_MS + 30_000)
    rig.transitions()
    rig.store.record(rig.probe(), SLOW_SUCCESS)
    assert rig.transitions() == [
        ("open", "half_open", 1, START_MS + 30_000, False),
        ("half_open", "open", 1, START_MS + 60_000, False),
    ]


# -- open -----------------------------------------------------------------------------


def test_an_open_circuit_rejects_until_retry_at(make: Make) -> None:
    # Regression: the Redis store's view added 1 ms and the real time since the
    # reply to the script's clock, so it read half-open 1 ms early.
    rig = make(failure_threshold=1, reset_timeout=10)
    trip(rig, 1)
    rig.transitions()
    assert rig.rejected() == START_MS + 10_000
    rig.at(START_MS + 9_999)
    assert rig.rejected() == START_MS + 10_000
    assert rig.view()["state"] == "open"
    assert rig.transitions() == []


def test_normal_results_are_ignored_while_open(make: Make) -> None:
    rig = make(failure_threshold=2, reset_timeout=10)
    early, late = rig.admit(), rig.admit()
    trip(rig, 2)
    rig.transitions()
    rig.store.record(early, FAILURE)
    rig.store.record(late, SUCCESS)
    assert rig.view()["state"] == "open"
    assert rig.view()["failures"] == 2
    assert rig.view()["retry_at"] == START_MS + 10_000
    assert rig.transitions() == []


def test_an_open_circuit_past_retry_at_reads_half_open(make: Make) -> None:
    rig = make(failure_threshold=1, reset_timeout=10)
    trip(rig, 1)
    rig.at(START_MS + 9_999)
    assert rig.view()["state"] == "open"
    rig.at(START_MS + 10_000)
    # Nothing was asked of the store since: the view reads the clock (the
    # Redis store's view ignored the injected clock, and read open here).
    assert rig.view()["state"] == "half_open"
    assert rig.view()["retry_at"] == START_MS + 10_000
    assert rig.transitions() == [("closed", "open", 1, START_MS + 10_000, False)]


def test_an_open_circuit_is_due_at_the_exact_millisecond(make: Make) -> None:
    # Regression (found by the model test): in float seconds, 1700000000.002
    # + 0.002 is past 1700000000.004, so the memory store stayed open one
    # reading longer than the Lua script, which counts integer milliseconds.
    rig = make(failure_threshold=1, reset_timeout=0.002)
    rig.advance(2)
    trip(rig, 1)
    rig.at(START_MS + 3)
    assert rig.rejected() == START_MS + 4
    rig.at(START_MS + 4)
    assert rig.view()["state"] == "half_open"
    rig.probe()


# -- half-open ------------------------------------------------------------------------


def test_a_probe_goes_through_after_reset_timeout(make: Make) -> None:
    rig = make(failure_threshold=2, reset_timeout=10)
    trip(rig, 2)
    rig.transitions()
    rig.at(START_MS + 10_000)
    rig.probe()
    assert rig.transitions() == [("open", "half_open", 2, START_MS + 10_000, False)]
    view = rig.view()
    assert (view["state"], view["probes"], view["failures"]) == ("half_open", 1, 2)


def test_exactly_half_open_max_calls_probes(make: Make) -> None:
    rig = make(failure_threshold=1, reset_timeout=10, half_open_max_calls=3, probe_timeout=5)
    trip(rig, 1)
    rig.at(START_MS + 10_000)
    for _ in range(3):
        rig.probe()
        rig.advance(10)
    # The earliest lease ends 5 s after the first probe.
    assert rig.rejected() == START_MS + 15_000
    view = rig.view()
    assert (view["state"], view["probes"]) == ("half_open", 3)
    # The view keeps the time the circuit became due, whatever a rejection said
    # (regression: the Redis store's view took the rejection's lease end).
    assert view["retry_at"] == START_MS + 10_000


def test_success_threshold_probes_close_the_circuit(make: Make) -> None:
    rig = make(failure_threshold=1, reset_timeout=10, half_open_max_calls=2, success_threshold=2)
    trip(rig, 1)
    rig.at(START_MS + 10_000)
    first, second = rig.probe(), rig.probe()
    rig.transitions()
    rig.store.record(first, SUCCESS)
    assert rig.view()["state"] == "half_open"
    assert rig.view()["probes"] == 1
    assert rig.transitions() == []
    rig.store.record(second, SUCCESS)
    assert rig.transitions() == [("half_open", "closed", 0, None, False)]
    assert rig.view() == {
        "state": "closed",
        "failures": 0,
        "slow_calls": 0,
        "opened_at": None,
        "retry_at": None,
        "forced": None,
        "probes": 0,
    }


def test_a_failed_probe_reopens_with_backoff_up_to_the_cap(make: Make) -> None:
    # 1.001 s * 1.5 is 1501.5 ms: a grown timeout is cut to the millisecond
    # (regression: the memory store kept 1.5015 s, the Lua script 1501 ms).
    rig = make(failure_threshold=1, reset_timeout=1.001, backoff_factor=1.5, max_reset_timeout=3)
    trip(rig, 1)
    expected = [1_501, 2_251, 3_000, 3_000]
    retry_at = START_MS + 1_001
    rig.transitions()
    for timeout in expected:
        rig.at(retry_at)
        rig.store.record(rig.probe(), FAILURE)
        due, retry_at = retry_at, retry_at + timeout
        assert rig.transitions() == [
            ("open", "half_open", 1, due, False),
            ("half_open", "open", 1, retry_at, False),
        ]
        assert rig.view()["retry_at"] == retry_at
        assert rig.rejected() == retry_at
    rig.at(retry_at)
    rig.store.record(rig.probe(), SUCCESS)
    assert rig.view()["state"] == "closed"
    rig.advance(1)
    trip(rig, 1)  # the grown timeout was forgotten on closing
    assert rig.view()["retry_at"] == retry_at + 1 + 1_001


@pytest.mark.parametrize(
    ("max_calls", "stale"),
    [(1, 1), (2, 2), (2, 1)],
    ids=["the-only-slot", "every-slot", "one-of-two-slots"],
)
def test_a_probe_past_its_lease_gives_way_and_its_late_report_is_ignored(
    make: Make, max_calls: int, stale: int
) -> None:
    # Regression (one-of-two-slots): the memory store dropped ended leases only
    # when every slot was taken, so it counted the late report; Redis did not.
    rig = make(
        failure_threshold=1, reset_timeout=10, probe_timeout=5, half_open_max_calls=max_calls
    )
    trip(rig, 1)
    rig.at(START_MS + 10_000)
    late = [rig.probe() for _ in range(stale)]
    if stale == max_calls:
        rig.at(START_MS + 14_999)
        assert rig.rejected() == START_MS + 15_000
    rig.at(START_MS + 15_000)  # their leases end: a newer caller probes
    newer = rig.probe()
    assert rig.view()["probes"] == 1
    rig.transitions()
    for ticket in late:
        rig.store.record(ticket, SUCCESS)  # late: ignored
    assert rig.view()["state"] == "half_open"
    assert rig.transitions() == []
    rig.store.record(newer, SUCCESS)
    assert rig.transitions() == [("half_open", "closed", 0, None, False)]


def test_a_silent_probe_still_reports_while_nobody_took_its_slot(make: Make) -> None:
    rig = make(failure_threshold=1, reset_timeout=10, probe_timeout=5)
    trip(rig, 1)
    rig.at(START_MS + 10_000)
    slow = rig.probe()
    rig.at(START_MS + 20_000)
    rig.transitions()
    rig.store.record(slow, SUCCESS)
    assert rig.transitions() == [("half_open", "closed", 0, None, False)]


def test_a_released_probe_frees_its_slot_without_counting(make: Make) -> None:
    rig = make(failure_threshold=1, reset_timeout=10)
    trip(rig, 1)
    rig.at(START_MS + 10_000)
    rig.store.record(rig.probe(), RELEASE)
    assert rig.view()["state"] == "half_open"
    assert rig.view()["probes"] == 0
    rig.transitions()
    rig.store.record(rig.probe(), FAILURE)
    assert rig.transitions() == [("half_open", "open", 1, START_MS + 20_000, False)]


# -- controls -------------------------------------------------------------------------


def test_force_open_rejects_without_retry_at_and_never_probes(make: Make) -> None:
    rig = make(failure_threshold=3, reset_timeout=10)
    trip(rig, 1)
    rig.store.force("force_open")
    assert rig.transitions() == [("closed", "open", 1, None, True)]
    rig.advance(1_000_000)
    assert rig.rejected() is None
    view = rig.view()
    assert (view["state"], view["forced"], view["retry_at"]) == ("open", "open", None)
    rig.store.force("reset")
    assert rig.transitions() == [("open", "closed", 0, None, False)]
    assert rig.view()["forced"] is None


def test_force_open_drops_the_probes_in_flight(make: Make) -> None:
    rig = make(failure_threshold=1, reset_timeout=10)
    trip(rig, 1)
    rig.at(START_MS + 10_000)
    probe = rig.probe()
    rig.transitions()
    rig.store.force("force_open")
    assert rig.transitions() == [("half_open", "open", 1, None, True)]
    rig.store.record(probe, SUCCESS)
    assert rig.view()["state"] == "open"
    assert rig.view()["probes"] == 0


def test_force_closed_counts_no_failures_until_reset(make: Make) -> None:
    rig = make(failure_threshold=2, reset_timeout=10)
    trip(rig, 2)
    rig.transitions()
    rig.store.force("force_closed")
    assert rig.transitions() == [("open", "closed", 0, None, True)]
    trip(rig, 5)
    assert rig.view()["state"] == "closed"
    assert rig.view()["failures"] == 0
    assert rig.view()["forced"] == "closed"
    rig.store.force("reset")
    assert rig.transitions() == []  # closed to closed is no transition
    trip(rig, 2)
    assert rig.view()["state"] == "open"


def test_reset_forgets_failures_and_backoff(make: Make) -> None:
    rig = make(failure_threshold=2, reset_timeout=1, backoff_factor=2)
    trip(rig, 2)
    rig.at(START_MS + 1_000)
    rig.store.record(rig.probe(), FAILURE)
    rig.store.force("reset")
    assert rig.view()["failures"] == 0
    rig.transitions()
    trip(rig, 2)
    assert rig.transitions() == [("closed", "open", 2, START_MS + 2_000, False)]


def test_a_read_changes_nothing(make: Make) -> None:
    rig = make(failure_threshold=1, reset_timeout=10)
    trip(rig, 1)
    rig.at(START_MS + 10_000)
    rig.transitions()
    rig.store.force("read")
    assert rig.transitions() == []
    assert rig.view()["state"] == "half_open"
    assert rig.view()["probes"] == 0


# -- the stateful test against a reference model ----------------------------------------


Decision: TypeAlias = tuple[Literal["admit", "probe", "reject"], int | None]


@dataclass(frozen=True)
class Rules:
    """A breaker's configuration, in milliseconds."""

    trip_rule: Literal["count", "rate"]
    failure_threshold: int
    failure_rate: Fraction
    window_type: Literal["count", "time"]
    slow_rate: Fraction | None
    """``slow_call_rate`` with a ``slow_call_duration``; None: no slow calls."""
    window_size: int
    minimum_calls: int
    reset_ms: int
    backoff_factor: float
    max_reset_ms: int | None
    half_open_max_calls: int
    success_threshold: int
    probe_ms: int | None

    @property
    def lease_ms(self) -> int:
        """A probe's lease: ``probe_timeout``, else the configured ``reset_timeout``."""
        return self.reset_ms if self.probe_ms is None else self.probe_ms

    def config(self, clock: VirtualClock) -> BreakerConfig:
        return BreakerConfig(
            trip_rule=self.trip_rule,
            failure_threshold=self.failure_threshold,
            failure_rate=float(self.failure_rate),
            window_type=self.window_type,
            slow_call_duration=None if self.slow_rate is None else 1.0,
            slow_call_rate=1.0 if self.slow_rate is None else float(self.slow_rate),
            window_size=self.window_size,
            minimum_calls=self.minimum_calls,
            reset_timeout=self.reset_ms / 1000,
            backoff_factor=self.backoff_factor,
            max_reset_timeout=None if self.max_reset_ms is None else self.max_reset_ms / 1000,
            half_open_max_calls=self.half_open_max_calls,
            success_threshold=self.success_threshold,
            probe_timeout=None if self.probe_ms is None else self.probe_ms / 1000,
            clock=clock,
            sync_interval=0,
        )


@st.composite
def all_rules(draw: st.DrawFn) -> Rules:
    window = draw(st.integers(1, 6))
    reset_ms = draw(st.integers(1, 3_000))
    rule = draw(st.sampled_from(["count", "rate"]))
    rates = st.sampled_from(["0.2", "0.25", "0.3", "0.5", "0.7", "1"]).map(Fraction)
    window_type = "count" if rule == "count" else draw(st.sampled_from(["count", "time"]))
    return Rules(
        trip_rule=rule,
        failure_threshold=draw(st.integers(1, 4)),
        failure_rate=draw(rates),
        window_type=window_type,
        slow_rate=None if rule == "count" else draw(st.none() | rates),
        window_size=window,
        # A time window may need more calls than it has seconds.
        minimum_calls=draw(st.integers(1, window if window_type == "count" else 8)),
        reset_ms=reset_ms,
        backoff_factor=draw(st.sampled_from([1.0, 1.5, 1.7, 2.0, 2.5])),
        max_reset_ms=draw(st.none() | st.integers(reset_ms, 8_000)),
        half_open_max_calls=draw(st.integers(1, 3)),
        success_threshold=draw(st.integers(1, 3)),
        probe_ms=draw(st.none() | st.integers(1, 3_000)),
    )


@dataclass
class Model:
    """
    The rules as the README states them, written without ``machine.py``.

    Closed: normal results count (consecutive failures, or the failures among
    the calls of the window once ``minimum_calls`` are in it: the last
    ``window_size`` calls, or those of the last ``window_size`` seconds as of
    the latest call; slow calls likewise against the slow-call rate); open:
    everything is rejected until ``retry_at``; half-open: up to
    ``half_open_max_calls`` probes hold a slot each until they report, or
    until their lease has ended and a newer caller is admitted (so a probe
    counts as in flight, and its report counts, until then). A failed probe
    reopens for ``backoff_factor`` times the last timeout, cut to the
    millisecond, up to ``max_reset_timeout``. Times are milliseconds.
    """

    rules: Rules
    state: str = "closed"
    forced: str | None = None
    consecutive: int = 0
    outcomes: list[tuple[int, bool, bool]] = field(default_factory=list)
    """Rate rule: the window's calls, as (second, failed, slow)."""
    opened_at: int | None = None
    retry_at: int | None = None
    timeout: int = 0
    probes: dict[int, int] = field(default_factory=dict)
    probe_successes: int = 0
    transitions: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.timeout = self.rules.reset_ms

    @property
    def failures(self) -> int:
        if self.rules.trip_rule == "count":
            return self.consecutive
        return sum(failed for _, failed, _ in self.outcomes)

    @property
    def slow_calls(self) -> int:
        return sum(slow for _, _, slow in self.outcomes)

    def effective_state(self, now: int) -> str:
        if self.state == "open" and self.retry_at is not None and now >= self.retry_at:
            return "half_open"
        return self.state

    def acquire(self, now: int, token: int) -> Decision:
        if self.state == "closed":
            return ("admit", None)
        if self.state == "open":
            if self.retry_at is None or now < self.retry_at:
                return ("reject", self.retry_at)
            self._move("half_open")
            self.probes = {}
            self.probe_successes = 0
        # A probe whose lease has ended gives its slot up to this newer caller.
        self.probes = {held: end for held, end in self.probes.items() if end > now}
        if len(self.probes) < self.rules.half_open_max_calls:
            self.probes[token] = now + self.rules.lease_ms
            return ("probe", None)
        return ("reject", min(self.probes.values()))

    def record(self, token: int | None, result: str, now: int) -> None:
        if token is None:
            if self.state == "closed" and self.forced is None and result != "neither":
                self._count(result.endswith("failure"), result.startswith("slow"), now)
            return
        if self.probes.pop(token, None) is None:
            return  # it gave its slot up, or the circuit moved on since
        if result == "success":  # a slow probe fails
            self.probe_successes += 1
            if self.probe_successes >= self.rules.success_threshold:
                self._close(None)
        elif result != "neither":
            grown = math.floor(self.timeout * self.rules.backoff_factor)
            cap = self.rules.max_reset_ms
            self._open(grown if cap is None else min(grown, cap), now)

    def _count(self, failed: bool, slow: bool, now: int) -> None:
        rules = self.rules
        if rules.trip_rule == "count":
            self.consecutive = self.consecutive + 1 if failed else 0
            if self.consecutive >= rules.failure_threshold:
                self._open(rules.reset_ms, now)
            return
        if rules.window_type == "count":
            self.outcomes = [*self.outcomes, (0, failed, slow)][-rules.window_size :]
        else:
            second = now // 1000
            kept = [o for o in self.outcomes if o[0] > second - rules.window_size]
            # The clock never steps back here, but the stores' rule says: the newest second.
            second = max([second, *(o[0] for o in kept)])
            self.outcomes = [*kept, (second, failed, slow)]
        calls = len(self.outcomes)
        if calls < rules.minimum_calls:
            return
        slow_rate = rules.slow_rate
        if Fraction(self.failures, calls) >= rules.failure_rate or (
            slow_rate is not None and Fraction(self.slow_calls, calls) >= slow_rate
        ):
            self._open(rules.reset_ms, now)

    def control(self, action: str, now: int) -> None:
        if action == "force_open":
            old = self.state
            self.state, self.forced = "open", "open"
            self.opened_at, self.retry_at = now, None
            self.probes = {}
            if old != "open":
                self._note(old)
        elif action in ("force_closed", "reset"):
            self._close("closed" if action == "force_closed" else None)

    def _open(self, timeout: int, now: int) -> None:
        self.timeout = timeout
        self.opened_at, self.retry_at = now, now + timeout
        self.probes = {}
        self._move("open")

    def _close(self, forced: str | None) -> None:
        self.consecutive, self.outcomes = 0, []
        self.opened_at = self.retry_at = None
        self.timeout = self.rules.reset_ms
        self.probes = {}
        self.forced = forced
        if self.state != "closed":
            self._move("closed")

    def _move(self, new: str) -> None:
        old, self.state = self.state, new
        self._note(old)

    def _note(self, old: str) -> None:
        self.transitions.append(
            (old, self.state, self.failures, self.retry_at, self.forced is not None)
        )

    def view(self, now: int) -> dict[str, Any]:
        return {
            "state": self.effective_state(now),
            "failures": self.failures,
            "slow_calls": self.slow_calls,
            "opened_at": self.opened_at,
            "retry_at": self.retry_at,
            "forced": self.forced,
            "probes": len(self.probes),
        }


OUTCOMES = st.sampled_from(
    ["success", "failure", "timeout", "excluded", "cancelled", "slow_success", "slow_failure"]
)
RESULTS: dict[str, tuple[str, Result]] = {
    # The breaker's classification (tests/breaker/test_breaker.py pins it): what the store sees.
    "success": ("success", SUCCESS),
    "failure": ("failure", FAILURE),
    "slow_success": ("slow_success", SLOW_SUCCESS),
    "slow_failure": ("slow_failure", SLOW_FAILURE),
    "timeout": ("failure", FAILURE),
    "excluded": ("neither", RELEASE),
    "cancelled": ("neither", RELEASE),
}


@dataclass
class Call:
    """One admitted call, as the model and each store know it."""

    token: int | None
    tickets: list[Ticket]


class StoresFollowTheModel(RuleBasedStateMachine):
    """The model, the memory store and (given a URL) the Redis store, in lockstep."""

    def __init__(self, redis_url: str | None) -> None:
        super().__init__()
        self.redis_url = redis_url
        self.prefix = f"test-model-{uuid.uuid4().hex[:12]}"
        self.clock = VirtualClock(START_MS / 1000)
        self.now = START_MS
        self.model: Model
        self.rigs: list[Rig] = []
        self.calls: list[Call] = []
        self.tokens = 0

    @initialize(rules=all_rules())
    def build(self, rules: Rules) -> None:
        self.model = Model(rules)
        config = rules.config(self.clock)
        self.rigs = [Rig(MemoryStore("model", config), self.clock)]
        if self.redis_url is not None:
            store = RedisStore(
                "model", config, self.redis_url, key_prefix=self.prefix, server_clock=self.clock
            )
            self.rigs.append(Rig(store, self.clock))

    def teardown(self) -> None:
        if self.redis_url is not None:
            delete_keys(self.redis_url, self.prefix)

    # -- steps --------------------------------------------------------------------

    @rule(outcome=OUTCOMES)
    def call(self, outcome: str) -> None:
        """A call that reports before the next step."""
        call = self.acquire()
        if call is not None:
            self.report(call, outcome)

    @precondition(lambda self: len(self.calls) < 6)
    @rule()
    def hold(self) -> None:
        """A call still running when the next steps happen (concurrent probes)."""
        call = self.acquire()
        if call is not None:
            self.calls.append(call)

    @precondition(lambda self: self.calls)
    @rule(pick=st.integers(0, 5), outcome=OUTCOMES)
    def finish(self, pick: int, outcome: str) -> None:
        """One of the running calls reports, in any order."""
        self.report(self.calls.pop(pick % len(self.calls)), outcome)

    def acquire(self) -> Call | None:
        self.tokens += 1
        expected = self.model.acquire(self.now, self.tokens)
        tickets = []
        for rig in self.rigs:
            try:
                ticket = rig.store.acquire()
            except CircuitOpen as exc:
                at = exc.retry_at
                seen: Decision = ("reject", None if at is None else ms(at.timestamp()))
            else:
                seen = ("admit" if ticket.probe is None else "probe", None)
                tickets.append(ticket)
            assert (rig.name, seen) == (rig.name, expected)
        self.check_transitions()
        if expected[0] == "reject":
            return None
        return Call(self.tokens if expected[0] == "probe" else None, tickets)

    def report(self, call: Call, outcome: str) -> None:
        if self.model.rules.slow_rate is None:
            # Without slow_call_duration the breaker times nothing: no call is slow.
            outcome = outcome.removeprefix("slow_")
        counted, result = RESULTS[outcome]
        self.model.record(call.token, counted, self.now)
        for rig, ticket in zip(self.rigs, call.tickets, strict=True):
            rig.store.record(ticket, result)
        self.check_transitions()

    @rule(delta=st.integers(1, 5) | st.integers(1, 4_000))
    def wait(self, delta: int) -> None:
        self.move_to(self.now + delta)

    @rule(offset=st.sampled_from([-1, 0, 1]))
    def wait_for_a_deadline(self, offset: int) -> None:
        """Jump to just before, at or just after the next retry_at or lease end."""
        model = self.model
        deadlines = [*model.probes.values()]
        if model.retry_at is not None:
            deadlines.append(model.retry_at)
        later = [d + offset for d in deadlines if d + offset > self.now]
        if later:
            self.move_to(min(later))

    @rule(action=st.sampled_from(["force_open", "force_closed", "reset", "read"]))
    def control(self, action: Literal["force_open", "force_closed", "reset", "read"]) -> None:
        self.model.control(action, self.now)
        for rig in self.rigs:
            rig.store.force(action)
        self.check_transitions()

    def move_to(self, when: int) -> None:
        self.now = when
        for rig in self.rigs:
            rig.at(when)

    # -- agreement ----------------------------------------------------------------

    def check_transitions(self) -> None:
        expected, self.model.transitions = self.model.transitions, []
        for rig in self.rigs:
            assert (rig.name, rig.transitions()) == (rig.name, expected)

    @invariant()
    def views_agree(self) -> None:
        if not self.rigs:
            return
        expected = self.model.view(self.now)
        for rig in self.rigs:
            assert (rig.name, rig.view()) == (rig.name, expected)


@pytest.mark.parametrize(
    "stores", ["memory", pytest.param("memory+redis", marks=pytest.mark.redis)]
)
def test_the_stores_follow_the_model(request: pytest.FixtureRequest, stores: str) -> None:
    url = request.getfixturevalue("redis_url") if stores == "memory+redis" else None
    run_state_machine_as_test(
        lambda: StoresFollowTheModel(url),
        settings=settings(
            max_examples=300,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_what_the_memory_store_writes_back_to_redis_after_an_outage(clock: VirtualClock) -> None:
    """
    ``MemoryStore.opened()``: what an open circuit has left (ms, 0 once due for a probe),
    its reset timeout and its failures; None while closed, or forced (the Redis store
    writes it back when Redis returns: tests/breaker/test_redis_link.py, end to end).
    """
    clock.set(START_MS / 1000)
    config = BreakerConfig(clock=clock, failure_threshold=2, reset_timeout=30)
    store = MemoryStore("opened", config)
    assert store.opened() is None
    store.record(store.acquire(), FAILURE)
    assert store.opened() is None  # one failure: still closed
    store.record(store.acquire(), FAILURE)
    assert store.opened() == (30_000, 30_000, 2)
    clock.advance(12.5)
    assert store.opened() == (17_500, 30_000, 2)
    clock.advance(40)
    assert store.opened() == (0, 30_000, 2)  # due for a probe: nothing left, not negative
    store.force("force_open")
    assert store.opened() is None  # forced: the operator's, not written back
    store.force("reset")
    assert store.opened() is None
