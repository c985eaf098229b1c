"""
The in-process store: a breaker's :class:`~.machine.Circuit` in this
process, changed by the :class:`~.machine.Machine` under a lock, on the
breaker's ``clock`` (by default patchboard's wall clock, ``_clock.wall()``,
which a ``patchboard.testing.VirtualClock`` drives).

Thread-safe: every change happens under a ``threading.Lock`` held only for
the decision itself, never around the guarded call. Admission while closed,
and a success while no failure is recorded (``fast``), read plain attributes
and take no lock: a call admitted an instant before another thread opens the
circuit is the same race as one admitted an instant earlier.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import Final

from patchboard import _clock
from patchboard._breaker._machine import (
    ADMIT,
    CLOSED,
    OPEN,
    PROBE,
    SUCCESS,
    CircuitState,
    Control,
    Forced,
    Machine,
    Result,
    Transition,
    clock_ms,
    to_datetime,
    to_seconds,
)
from patchboard._breaker._store import StoreView, Ticket
from patchboard._config import BreakerConfig
from patchboard._exceptions import CircuitOpen


class MemoryStore:
    """A breaker's state in this process, shared by its threads and tasks."""

    remote: Final = False
    label: Final = "memory"
    kind: Final = "memory"

    def __init__(
        self, name: str, config: BreakerConfig, *, pending: deque[Transition] | None = None
    ) -> None:
        self.name = name
        self.clock = _clock.posix if config.clock is None else config.clock
        self.machine = Machine(config)
        self.pending: deque[Transition] = deque() if pending is None else pending
        self.admitted = Ticket(self, None)
        self._lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._circuit = self.machine.fresh()
        self.fast = self.machine.fast(self._circuit)

    # -- decisions ---------------------------------------------------------

    def acquire(self) -> Ticket:
        """
        Admit a call: the shared ticket of normal calls, or a probe's own.

        Raises:
            CircuitOpen: the circuit is open, or every probe slot is taken.
        """
        circuit = self._circuit
        if circuit.state is CLOSED:
            return self.admitted
        token = str(next(self._tokens))
        with self._lock:
            notes: list[Transition] = []
            admission = self.machine.admit(circuit, clock_ms(self.clock), token, notes)
            self._settle(notes)
        if admission.decision == ADMIT:
            return self.admitted
        if admission.decision == PROBE:
            return Ticket(self, token)
        raise CircuitOpen(self.name, to_datetime(to_seconds(admission.retry_at)))

    def refusal(self) -> CircuitOpen | None:
        """The ``CircuitOpen`` :meth:`acquire` would raise now for an open circuit, or None."""
        if self.state is not OPEN:
            return None  # closed, or half-open: a probe may go through
        return CircuitOpen(self.name, to_datetime(to_seconds(self._circuit.retry_at)))

    def record(self, ticket: Ticket, result: Result) -> None:
        """Apply the result of the call ``ticket`` admitted."""
        if ticket.probe is None and result == SUCCESS and self.fast:
            return
        with self._lock:
            notes: list[Transition] = []
            self.machine.record(self._circuit, ticket.probe, result, clock_ms(self.clock), notes)
            self._settle(notes)

    def force(self, action: Control) -> None:
        """Force the circuit open or closed, or reset it (``"read"``: nothing to refresh)."""
        if action == "read":
            return
        with self._lock:
            notes: list[Transition] = []
            self.machine.force(self._circuit, action, clock_ms(self.clock), notes)
            self._settle(notes)

    # The async forms the breaker awaits: this store does no I/O, so they are the sync ones.

    async def aacquire(self) -> Ticket:
        return self.acquire()

    async def arecord(self, ticket: Ticket, result: Result) -> None:
        self.record(ticket, result)

    async def aforce(self, action: Control) -> None:
        self.force(action)

    def _settle(self, notes: list[Transition]) -> None:
        # Under the lock, after a change: publish the transitions, refresh the fast flag.
        self.pending.extend(notes)
        self.fast = self.machine.fast(self._circuit)

    def seed(
        self, *, state: CircuitState, failures: int, retry_in: float | None, forced: Forced
    ) -> None:
        """Start over from another store's state (no transition is reported)."""
        with self._lock:
            circuit = self._circuit = self.machine.fresh(forced=forced)
            if state is not CLOSED:
                now = clock_ms(self.clock)
                circuit.state = OPEN
                circuit.opened_at = now
                circuit.retry_at = (
                    None if retry_in is None else now + max(0, round(retry_in * 1000))
                )
                circuit.failures = failures
            elif self.machine.count_rule and forced is None:
                circuit.failures = failures
            self.fast = self.machine.fast(circuit)

    def opened(self) -> tuple[int, int, int] | None:
        """
        What the circuit has left to stay open (ms, 0 once due for a probe),
        its reset timeout and its failures, when it is open or half-open on
        its own (not forced); None otherwise. What the Redis store writes
        back after an outage.
        """
        with self._lock:
            circuit = self._circuit
            if circuit.state is CLOSED or circuit.forced is not None:
                return None
            due = circuit.retry_at
            left = 0 if due is None else max(0, due - clock_ms(self.clock))
            return left, circuit.reset_timeout, circuit.failures

    def forget(self) -> None:
        """Back to a fresh closed state, reporting no transition (for tests)."""
        with self._lock:
            self._circuit = self.machine.fresh()
            self.fast = self.machine.fast(self._circuit)

    # -- views -------------------------------------------------------------

    def view(self) -> StoreView:
        with self._lock:
            circuit = self._circuit
            return StoreView(
                state=self.machine.effective_state(circuit, clock_ms(self.clock)),
                failures=circuit.failures,
                slow_calls=circuit.slow,
                opened_at=to_seconds(circuit.opened_at),
                retry_at=to_seconds(circuit.retry_at),
                forced=circuit.forced,
                probes=len(circuit.probes),
                fallback=False,
            )

    @property
    def state(self) -> CircuitState:
        circuit = self._circuit
        if circuit.state is not OPEN:
            return circuit.state
        return self.machine.effective_state(circuit, clock_ms(self.clock))
