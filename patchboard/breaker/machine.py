"""
The circuit breaker's rules, as a pure state machine: no clock, no lock, no I/O.

A :class:`Circuit` is a breaker's whole state; :class:`Machine` changes it,
given the time ``now`` (seconds) and the breaker's configuration:

* :meth:`Machine.admit` decides whether a call may go through: as a normal
  call (closed), as a half-open *probe* holding a slot until it reports or its
  lease ends, or not at all (open; half-open with every slot taken);
* :meth:`Machine.record` applies a call's outcome (``SUCCESS``, ``FAILURE``,
  or ``RELEASE``: neither, only a probe slot is freed);
* :meth:`Machine.force` forces the circuit open or closed, or resets it.

Every change of state is appended, as a :class:`Transition`, to the ``notes``
list the caller passes in. The in-process store (:mod:`.memory`) runs this
machine under a lock with a clock; the Redis store runs the same rules in
``breaker.lua``, atomically on the server. Both are held to one scenario
suite and a model-based test, so they cannot drift apart.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, NamedTuple, TypeAlias

from patchboard._config import BreakerConfig

State: TypeAlias = Literal["closed", "open", "half_open"]
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """One change of state, for the breaker to log and signal."""

    old: State
    new: State
    failures: int
    retry_at: float | None
    """POSIX timestamp of the next probe, when ``new`` is ``"open"``."""
    forced: bool


class Admission(NamedTuple):
    """What :meth:`Machine.admit` decided, and for a rejection, when to retry."""

    decision: Decision
    retry_at: float | None = None


@dataclass(slots=True, kw_only=True)
class Circuit:
    """One breaker's state (times are seconds, on the machine's clock)."""

    state: State = CLOSED
    failures: int = 0
    """Consecutive failures (count rule), or failures in the window (rate rule)."""
    window: deque[bool] = field(default_factory=deque)
    """Rate rule: the outcomes of the last calls, True for a failure."""
    opened_at: float | None = None
    retry_at: float | None = None
    """When an open circuit lets a probe through; None when closed or forced open."""
    reset_timeout: float = 0.0
    """The current reset timeout, grown by ``backoff_factor`` after failed probes."""
    probes: dict[str, float] = field(default_factory=dict)
    """Probes in flight: token -> the end of its lease."""
    probe_successes: int = 0
    forced: Forced = None


class Machine:
    """The rules of one breaker's configuration (see the module docstring)."""

    __slots__ = ("config", "count_rule")

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.count_rule = config.trip_rule == "count"

    def fresh(self, *, forced: Forced = None) -> Circuit:
        """A closed circuit with nothing recorded."""
        return Circuit(reset_timeout=self.config.reset_timeout, forced=forced)

    def fast(self, circuit: Circuit) -> bool:
        """Whether a normal call's success changes nothing (closed, count rule, no failures)."""
        return circuit.state is CLOSED and self.count_rule and circuit.failures == 0

    def effective_state(self, circuit: Circuit, now: float) -> State:
        """The state a caller sees: an open circuit past its ``retry_at`` reads half-open."""
        state = circuit.state
        if state is OPEN and circuit.retry_at is not None and now >= circuit.retry_at:
            return HALF_OPEN
        return state

    # -- decisions -------------------------------------------------------------

    def admit(self, c: Circuit, now: float, token: str, notes: list[Transition]) -> Admission:
        """Admit a call (as ``token`` if it becomes a probe) or reject it."""
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
        limit = self.config.half_open_max_calls
        if len(probes) >= limit:
            for held, lease in list(probes.items()):
                if lease <= now:
                    del probes[held]
        if len(probes) < limit:
            probes[token] = now + self.config.lease
            return Admission(PROBE)
        return Admission(REJECT, min(probes.values()))

    def record(
        self, c: Circuit, probe: str | None, result: Result, now: float, notes: list[Transition]
    ) -> None:
        """Apply the result of a call admitted normally (``probe`` None) or as a probe."""
        if probe is None:
            if c.state is not CLOSED or c.forced is not None or result == RELEASE:
                return  # a normal call's result counts only while closed and not forced
            if result == FAILURE:
                self._failure(c, now, notes)
            elif self.count_rule:
                c.failures = 0
            else:
                self._push(c, False)
            return
        if c.probes.pop(probe, None) is None or c.state is not HALF_OPEN:
            return  # the lease ended, or the circuit moved on: a late report
        if result == SUCCESS:
            c.probe_successes += 1
            if c.probe_successes >= self.config.success_threshold:
                self._close(c, HALF_OPEN, notes)
        elif result == FAILURE:
            grown = c.reset_timeout * self.config.backoff_factor
            cap = self.config.max_reset_timeout
            self._open(c, min(grown, cap) if cap is not None else grown, now, HALF_OPEN, notes)

    def force(self, c: Circuit, action: ForceAction, now: float, notes: list[Transition]) -> None:
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

    def _failure(self, c: Circuit, now: float, notes: list[Transition]) -> None:
        config = self.config
        if self.count_rule:
            c.failures += 1
            if c.failures >= config.failure_threshold:
                self._open(c, config.reset_timeout, now, CLOSED, notes)
            return
        self._push(c, True)
        calls = len(c.window)
        # Integer arithmetic, the same as the Lua script's: 0.3 of 10 calls is 3.
        if calls >= config.minimum_calls and c.failures * 1_000_000 >= config.rate_ppm * calls:
            self._open(c, config.reset_timeout, now, CLOSED, notes)

    def _push(self, c: Circuit, failed: bool) -> None:
        window = c.window
        window.append(failed)
        c.failures += failed
        if len(window) > self.config.window_size:
            c.failures -= window.popleft()

    def _open(
        self, c: Circuit, timeout: float, now: float, old: State, notes: list[Transition]
    ) -> None:
        c.state = OPEN
        c.opened_at = now
        c.reset_timeout = timeout
        c.retry_at = now + timeout
        c.probes.clear()
        self._note(c, old, notes)

    def _close(
        self, c: Circuit, old: State, notes: list[Transition], *, forced: Forced = None
    ) -> None:
        fresh = self.fresh(forced=forced)
        for name in Circuit.__slots__:
            setattr(c, name, getattr(fresh, name))
        if old is not CLOSED:
            self._note(c, old, notes)

    def _note(self, c: Circuit, old: State, notes: list[Transition]) -> None:
        notes.append(
            Transition(
                old=old,
                new=c.state,
                failures=c.failures,
                retry_at=c.retry_at,
                forced=c.forced is not None,
            )
        )
