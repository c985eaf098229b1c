"""
The circuit breaker's rules, as a pure state machine: no clock, no lock, no I/O.

A :class:`Circuit` is a breaker's whole state; :class:`Machine` changes it,
given the time ``now`` and the breaker's configuration:

* :meth:`Machine.admit` decides whether a call may go through: as a normal
  call (closed), as a half-open *probe* holding a slot until it reports, or
  until its lease has ended and a newer caller is admitted (who takes the
  slot over; the late report is then ignored), or not at all (open;
  half-open with every slot taken);
* :meth:`Machine.record` applies a call's outcome (``SUCCESS``, ``FAILURE``,
  or ``RELEASE``: neither, only a probe slot is freed);
* :meth:`Machine.force` forces the circuit open or closed, or resets it.

Every change of state is appended, as a :class:`Transition`, to the ``notes``
list the caller passes in. The in-process store (:mod:`.memory`) runs this
machine under a lock with a clock; the Redis store runs the same rules in
``breaker.lua``, atomically on the server. Both are held to one scenario
suite and a model-based test, so they cannot drift apart.

Times are whole milliseconds (``int``), as in the Lua script: the same
arithmetic on both stores, so an open circuit becomes due at the same
millisecond and a reset timeout grown by ``backoff_factor`` is cut to the
same millisecond (``floor``). :func:`milliseconds` converts durations,
:func:`clock_ms` a clock's reading.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, NamedTuple, TypeAlias

from patchboard._config import MAX_SECONDS, BreakerConfig

CircuitState: TypeAlias = Literal["closed", "open", "half_open"]
Forced: TypeAlias = Literal["open", "closed"] | None
ForceAction: TypeAlias = Literal["force_open", "force_closed", "reset"]
Control: TypeAlias = ForceAction | Literal["read"]
"""A control operation of a store: a :data:`ForceAction`, or ``"read"`` (refresh the view)."""

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

Result: TypeAlias = int
SUCCESS: Final = 0
"""The guarded code returned."""
FAILURE: Final = 1
"""The guarded code raised an ``Exception`` that is not excluded."""
RELEASE: Final = 2
"""Counts as nothing (excluded exception, cancellation): only frees a probe slot."""
SLOW: Final = 4
"""Added to ``SUCCESS`` or ``FAILURE``: the call took ``slow_call_duration`` or longer."""
SLOW_SUCCESS: Final = SUCCESS | SLOW
SLOW_FAILURE: Final = FAILURE | SLOW

Decision: TypeAlias = int
ADMIT: Final = 0
"""A normal call: the circuit is closed."""
PROBE: Final = 1
"""A half-open probe, holding a slot until it reports or its lease ends."""
REJECT: Final = 2
"""Refused: open, or half-open with every probe slot taken."""


def to_datetime(timestamp: float | None) -> datetime | None:
    """A POSIX timestamp as an aware UTC datetime (``None`` stays ``None``)."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


def milliseconds(seconds: float) -> int:
    """A configured duration in whole milliseconds, at least 1 (as ``RedisStore`` sends it)."""
    return max(1, round(seconds * 1000))


def clock_ms(clock: Callable[[], float]) -> int:
    """A clock's reading (POSIX seconds) in whole milliseconds."""
    return round(clock() * 1000)


def to_seconds(ms: int | None) -> float | None:
    """Milliseconds as POSIX seconds (``None`` stays ``None``)."""
    return None if ms is None else ms / 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """One change of state, for the breaker to log and signal."""

    old: CircuitState
    new: CircuitState
    failures: int
    retry_at: float | None
    """POSIX timestamp (seconds) of the next probe, when ``new`` is ``"open"``."""
    forced: bool


class Admission(NamedTuple):
    """What :meth:`Machine.admit` decided, and for a rejection, when to retry (ms)."""

    decision: Decision
    retry_at: int | None = None


@dataclass(slots=True, kw_only=True)
class Circuit:
    """One breaker's state (times are milliseconds, on the store's clock)."""

    state: CircuitState = CLOSED
    failures: int = 0
    """Consecutive failures (count rule), or failures in the window (rate rule)."""
    slow: int = 0
    """Rate rule: slow calls in the window."""
    calls: int = 0
    """Rate rule: calls in the window."""
    window: deque[int] = field(default_factory=deque)
    """Count window: the last calls, each 1 if it failed, plus 2 if it was slow."""
    buckets: deque[list[int]] = field(default_factory=deque)
    """Time window: ``[second, calls, failures, slow]`` per second with calls, oldest first."""
    opened_at: int | None = None
    retry_at: int | None = None
    """When an open circuit lets a probe through; None when closed or forced open."""
    reset_timeout: int = 0
    """The current reset timeout, grown by ``backoff_factor`` after failed probes."""
    probes: dict[str, int] = field(default_factory=dict)
    """Probes in flight: token -> the end of its lease."""
    probe_successes: int = 0
    forced: Forced = None


class Machine:
    """The rules of one breaker's configuration (see the module docstring)."""

    __slots__ = (
        "config",
        "count_rule",
        "lease",
        "max_reset_timeout",
        "reset_timeout",
        "slow_ppm",
        "time_window",
    )

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.count_rule = config.trip_rule == "count"
        self.time_window = config.window_type == "time"
        self.slow_ppm = config.slow_ppm
        self.reset_timeout = milliseconds(config.reset_timeout)
        self.lease = milliseconds(config.lease)
        cap = config.max_reset_timeout
        self.max_reset_timeout = milliseconds(cap) if cap is not None else None

    def fresh(self, *, forced: Forced = None) -> Circuit:
        """A closed circuit with nothing recorded."""
        return Circuit(reset_timeout=self.reset_timeout, forced=forced)

    def fast(self, circuit: Circuit) -> bool:
        """Whether a normal call's success changes nothing (closed, count rule, no failures)."""
        return circuit.state is CLOSED and self.count_rule and circuit.failures == 0

    def effective_state(self, circuit: Circuit, now: int) -> CircuitState:
        """The state a caller sees: an open circuit past its ``retry_at`` reads half-open."""
        state = circuit.state
        if state is OPEN and circuit.retry_at is not None and now >= circuit.retry_at:
            return HALF_OPEN
        return state

    # -- decisions -------------------------------------------------------------

    def admit(self, c: Circuit, now: int, token: str, notes: list[Transition]) -> Admission:
        """
        Admit a call (as ``token`` if it becomes a probe) or reject it.

        A probe whose lease has ended gives its slot up to the next caller
        admitted: it is dropped then, and its late report is ignored.
        """
        if c.state is CLOSED:
            return Admission(ADMIT)
        if c.state is OPEN:
            if c.retry_at is None or now < c.retry_at:
                return Admission(REJECT, c.retry_at)
            c.state = HALF_OPEN
            c.probe_successes = 0
            c.probes.clear()
            self._note(c, OPEN, notes)
        probes = c.probes
        for held, lease in list(probes.items()):
            if lease <= now:
                del probes[held]
        if len(probes) < self.config.half_open_max_calls:
            probes[token] = now + self.lease
            return Admission(PROBE)
        return Admission(REJECT, min(probes.values()))

    def record(
        self, c: Circuit, probe: str | None, result: Result, now: int, notes: list[Transition]
    ) -> None:
        """Apply the result of a call admitted normally (``probe`` None) or as a probe."""
        if probe is None:
            if c.state is not CLOSED or c.forced is not None or result == RELEASE:
                return  # a normal call's result counts only while closed and not forced
            if self.count_rule:
                self._count(c, result & FAILURE == FAILURE, now, notes)
            else:
                self._rate(c, result & FAILURE, (result & SLOW) >> 1, now, notes)
            return
        if c.probes.pop(probe, None) is None or c.state is not HALF_OPEN:
            return  # a newer probe took the slot over, or the circuit moved on: too late
        # A slow probe is a failed one: the dependency answers, but not yet as it should.
        if result == SUCCESS:
            c.probe_successes += 1
            if c.probe_successes >= self.config.success_threshold:
                self._close(c, HALF_OPEN, notes)
        elif result != RELEASE:
            # Without a cap of the project's, the longest wait there is: never inf (the
            # product is compared before math.floor, which cannot take inf).
            cap = self.max_reset_timeout or milliseconds(MAX_SECONDS)
            grown = c.reset_timeout * self.config.backoff_factor
            self._open(c, math.floor(min(grown, cap)), now, HALF_OPEN, notes)

    def force(self, c: Circuit, action: ForceAction, now: int, notes: list[Transition]) -> None:
        """``force_open``: open until reset; ``force_closed``: closed, counting nothing."""
        old = c.state
        if action == "force_open":
            c.forced = "open"
            c.state = OPEN
            c.opened_at = now
            c.retry_at = None
            c.probes.clear()
            if old is not OPEN:
                self._note(c, old, notes)
            return
        self._close(c, old, notes, forced="closed" if action == "force_closed" else None)

    # -- moves -----------------------------------------------------------------

    def _count(self, c: Circuit, failed: bool, now: int, notes: list[Transition]) -> None:
        if not failed:
            c.failures = 0
            return
        c.failures += 1
        if c.failures >= self.config.failure_threshold:
            self._open(c, self.reset_timeout, now, CLOSED, notes)

    def _rate(self, c: Circuit, failed: int, slow: int, now: int, notes: list[Transition]) -> None:
        """Slide one call into the window (``failed``: 0 or 1, ``slow``: 0 or 2), then compare."""
        config = self.config
        if self.time_window:
            second = now // 1000
            buckets = c.buckets
            cutoff = second - config.window_size
            while buckets and buckets[0][0] <= cutoff:
                _, calls, failures, slows = buckets.popleft()
                c.calls -= calls
                c.failures -= failures
                c.slow -= slows
            # A clock that stepped back adds to the newest bucket: never out of order.
            if buckets and buckets[-1][0] >= second:
                bucket = buckets[-1]
            else:
                bucket = [second, 0, 0, 0]
                buckets.append(bucket)
            bucket[1] += 1
            bucket[2] += failed
            bucket[3] += slow >> 1
        else:
            window = c.window
            window.append(failed | slow)
            if len(window) > config.window_size:
                oldest = window.popleft()
                c.calls -= 1
                c.failures -= oldest & 1
                c.slow -= oldest >> 1
        c.calls += 1
        c.failures += failed
        c.slow += slow >> 1
        calls = c.calls
        # Checked after every call, a success included: the call that completes
        # minimum_calls may find the rate already crossed. Integer arithmetic,
        # the same as the Lua script's: 0.7 of 10 calls is 7.
        if calls >= config.minimum_calls and (
            c.failures * 1_000_000 >= config.rate_ppm * calls
            or (self.slow_ppm and c.slow * 1_000_000 >= self.slow_ppm * calls)
        ):
            self._open(c, self.reset_timeout, now, CLOSED, notes)

    def _open(
        self, c: Circuit, timeout: int, now: int, old: CircuitState, notes: list[Transition]
    ) -> None:
        c.state = OPEN
        c.opened_at = now
        c.reset_timeout = timeout
        c.retry_at = now + timeout
        c.probes.clear()
        self._note(c, old, notes)

    def _close(
        self, c: Circuit, old: CircuitState, notes: list[Transition], *, forced: Forced = None
    ) -> None:
        fresh = self.fresh(forced=forced)
        for name in Circuit.__slots__:
            setattr(c, name, getattr(fresh, name))
        if old is not CLOSED:
            self._note(c, old, notes)

    def _note(self, c: Circuit, old: CircuitState, notes: list[Transition]) -> None:
        notes.append(
            Transition(
                old=old,
                new=c.state,
                failures=c.failures,
                retry_at=to_seconds(c.retry_at),
                forced=c.forced is not None,
            )
        )
