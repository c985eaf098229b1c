"""
Helpers for testing code that uses patchboard: in your suite as in ours.

``capture_dispatches()``
    Records every dispatch of patchboard's verbs (``send_async``,
    ``collect_async`` and their sync twins) with its outcomes.
``reset()``
    Starts patchboard's process state afresh (breakers, the short-term
    queue, counters, settings): call it between tests.
``VirtualClock``
    A clock that moves only when told to; pass it as ``clock=`` to a
    :class:`~patchboard.CircuitBreaker` or a ``ShortTermQueue`` to test
    time-based behaviour without waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.dispatch import Signal as DjangoSignal

from patchboard._outcomes import Outcome
from patchboard._state import state


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One dispatch seen by :func:`capture_dispatches`."""

    signal: DjangoSignal
    sender: Any
    outcomes: tuple[Outcome, ...]

    def statuses(self) -> list[str]:
        return [outcome.status for outcome in self.outcomes]


@contextmanager
def capture_dispatches() -> Iterator[list[Dispatch]]:
    """
    Collect the dispatches made inside the ``with`` block, in order, from any
    thread; a dispatch that raised is recorded too.

    ::

        with capture_dispatches() as dispatches:
            order_paid.send_sync(sender=Order, order=order)
        assert dispatches[0].statuses() == ["ok", "enqueued"]
    """
    seen: list[Dispatch] = []
    lock = threading.Lock()

    def observe(signal: DjangoSignal, sender: Any, outcomes: list[Outcome]) -> None:
        with lock:
            seen.append(Dispatch(signal, sender, tuple(outcomes)))

    state.observers.append(observe)
    try:
        yield seen
    finally:
        if observe in state.observers:  # reset() inside the block removed it already
            state.observers.remove(observe)


def reset() -> None:
    """
    Start patchboard's process-wide state afresh, for a test: every circuit
    breaker is forgotten (names can be reused; shared Redis state is left
    alone, call ``breaker.reset()`` for that) and its Redis clients closed,
    the short-term queue and the parsed settings are rebuilt on next use,
    the outcome counters are zeroed and observers removed. Listeners stay
    connected.
    """
    state.reset()


class VirtualClock:
    """
    A clock for tests: ``clock()`` returns the current virtual time in
    seconds, which changes only through :meth:`advance` (or :meth:`set`).
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def __repr__(self) -> str:
        return f"<VirtualClock {self._now:.3f}>"

    def advance(self, seconds: float) -> None:
        """Move time forward.

        Raises:
            ValueError: ``seconds`` is negative (time does not go back).
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._now += seconds

    def set(self, now: float) -> None:
        """Jump to ``now``.

        Raises:
            ValueError: ``now`` is before the current time.
        """
        if now < self._now:
            raise ValueError(f"now must be >= the current time {self._now!r}, got {now!r}")
        self._now = float(now)
