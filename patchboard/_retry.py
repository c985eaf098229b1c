"""
Retries within a budget, and the counts of hedged calls.

A listener connected with ``retry=Retry(...)`` (see
:class:`~patchboard._config.Retry`) has each call's attempts decided by an
:class:`Attempts`: the call asks it, after a failure, how long to wait
before trying again, and it answers None when the call must end with that
failure instead. It answers None for an exception the listener did not name,
after the last attempt, when the listener's circuit is open, when the retry
could not end in time (what is left of the call's time limit, after the
wait, is less than the failed attempt took), and when the signal's
:class:`RetryBudget` is spent.

Picture the budget as a ticket counter per signal: every first attempt of a
call that may retry drops a coin in (``calls``), every retry takes one
ticket (``retries``), and a retry is sold only while the tickets taken over
the last :data:`WINDOW` seconds are fewer than ``budget`` times the coins,
plus :data:`MIN_RETRIES` (a quiet signal may retry too).
When a dependency goes down, every call fails, and the budget lets through
at most ``budget`` retries per call instead of ``attempts - 1``: the SRE
book's per-client retry budget, which keeps a partial outage from
multiplying the load on what is left.

The same counter keeps a signal's hedging counts (``Call``'s hedged path):
hedges started, won and cancelled.

A listener without ``retry`` or ``hedge_after`` never reaches this module.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from patchboard import _clock
from patchboard._config import Retry
from patchboard._exceptions import CircuitOpen, ListenerTimeout
from patchboard._log import log_limited, signal_label
from patchboard._state import state

WINDOW: Final = 10.0
"""Seconds of calls a retry budget looks back on (Finagle's ``RetryBudget`` ttl)."""
MIN_RETRIES: Final = 10
"""Retries a window allows whatever its calls, so that a quiet signal still retries
(Finagle's ``minRetriesPerSec``, 10, plays this part)."""
_BUCKETS: Final = 10
"""The window's slices: it slides a tenth of itself at a time."""
_SLICE: Final = WINDOW / _BUCKETS
_NEVER_RETRIED: Final = (CircuitOpen, ListenerTimeout)
"""Whatever ``retry_on`` says: the circuit refused the call, or its time limit cut it."""


@dataclass(frozen=True, slots=True)
class RetryStatistics:
    """
    One signal's retries and hedges (:func:`patchboard.retry_stats`).

    ``calls`` and ``retries`` are the first attempts and the retries of its
    listeners' calls over the last 10 s (what the budget weighs); the rest
    count since start-up (or :func:`patchboard.testing.reset`): ``retried``
    retries made, ``refused`` retries the budget refused, ``hedged`` second
    attempts started, ``hedges_won`` calls the second attempt answered,
    ``hedges_cancelled`` attempts cancelled because the other answered.
    """

    calls: int
    retries: int
    retried: int
    refused: int
    hedged: int
    hedges_won: int
    hedges_cancelled: int


class RetryBudget:
    """
    One signal's retry budget over a sliding window (see the module docstring).
    Thread-safe: calls end in listener threads and on the event loop.
    """

    __slots__ = (
        "_at",
        "_calls",
        "_lock",
        "_retries",
        "hedged",
        "hedges_cancelled",
        "hedges_won",
        "refused",
        "retried",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._at: int | None = None
        """The slice the last count went into (slices since the clock's zero)."""
        self.retried = self.refused = 0
        self.hedged = self.hedges_won = self.hedges_cancelled = 0

    def __repr__(self) -> str:
        with self._lock:
            self._slide()
            calls, retries = sum(self._calls), sum(self._retries)
        return f"<RetryBudget {retries} retries for {calls} calls in {WINDOW:g}s>"

    def _slide(self) -> int:
        """Move the window to now, emptying the slices it left (under ``_lock``); now's slice."""
        at = int(_clock.now() // _SLICE)
        gone = _BUCKETS if self._at is None else at - self._at
        if gone:
            # Backwards only when a test swaps clocks: then nothing counted is current.
            for step in range(_BUCKETS if gone < 0 else min(gone, _BUCKETS)):
                index = (at - step) % _BUCKETS
                self._calls[index] = self._retries[index] = 0
            self._at = at
        return at % _BUCKETS

    def called(self) -> None:
        """A call that may retry made its first attempt."""
        with self._lock:
            self._calls[self._slide()] += 1

    def spend(self, ratio: float) -> bool:
        """
        Take one retry if the window's retries are fewer than ``ratio`` times
        its calls plus :data:`MIN_RETRIES` (counted as ``retried``); else count
        it ``refused``.
        """
        with self._lock:
            index = self._slide()
            if sum(self._retries) >= ratio * sum(self._calls) + MIN_RETRIES:
                self.refused += 1
                return False
            self._retries[index] += 1
            self.retried += 1
            return True

    def hedge(self, event: str) -> None:
        """Count a hedge ``"started"``, ``"won"`` (by the second attempt), or an attempt
        ``"cancelled"``."""
        with self._lock:
            if event == "started":
                self.hedged += 1
            elif event == "won":
                self.hedges_won += 1
            elif event == "cancelled":
                self.hedges_cancelled += 1
            else:
                raise ValueError(f"unknown hedge event {event!r}")

    def statistics(self) -> RetryStatistics:
        """The budget's window and counts, now."""
        with self._lock:
            self._slide()
            return RetryStatistics(
                calls=sum(self._calls),
                retries=sum(self._retries),
                retried=self.retried,
                refused=self.refused,
                hedged=self.hedged,
                hedges_won=self.hedges_won,
                hedges_cancelled=self.hedges_cancelled,
            )


def budget_of(signal: Any) -> RetryBudget:
    """``signal``'s retry budget, made on first use."""
    budgets = state.retry_budgets
    budget = budgets.get(signal)
    if budget is None:
        with state.lock:
            budget = budgets.setdefault(signal, RetryBudget())
    return budget


def retry_stats(signal: Any) -> RetryStatistics:
    """
    The retries and hedges of ``signal``'s listeners (see :class:`RetryStatistics`):
    exact counts, where the ``listener_retry`` log is rate-limited.
    """
    return budget_of(signal).statistics()


class Attempts:
    """
    The attempts of one listener call that may retry (see the module
    docstring). ``number`` is the attempt under way (1 for the first), which
    the call's outcome reports as ``attempts``.
    """

    __slots__ = ("_budget", "_ends", "_label", "_retry", "_signal", "number")

    def __init__(self, retry: Retry, signal: Any, label: str, limit: float | None) -> None:
        self._retry = retry
        self._signal = signal
        self._label = label
        self._ends = None if limit is None else _clock.now() + limit
        self._budget = budget_of(signal)
        self._budget.called()
        self.number = 1

    def left(self) -> float | None:
        """Seconds left of the call's time limit (None: it has none)."""
        return None if self._ends is None else self._ends - _clock.now()

    def wait(self, exc: Exception, began: float, circuit_open: Callable[[], bool]) -> float | None:
        """
        After attempt :attr:`number`, begun at ``began`` (``_clock.now()``),
        failed with ``exc``: the seconds to wait before the next attempt (it is
        counted, and logged as ``listener_retry``), or None when the call ends
        with ``exc``. ``circuit_open()`` is asked only for a retry that every
        other rule allows.
        """
        retry = self._retry
        if (
            self.number >= retry.attempts
            or not isinstance(exc, retry.retry_on)
            or isinstance(exc, _NEVER_RETRIED)
        ):
            return None
        wait = random.uniform(0.0, retry.longest_wait(self.number)) if state.retry_waits else 0.0
        if self._ends is not None:
            now = _clock.now()
            if self._ends - now - wait < now - began:
                return None  # the retry, as long as the attempt that failed, would end too late
        if circuit_open() or not self._budget.spend(retry.budget):
            return None
        self.number += 1
        log_limited(
            "info",
            "listener_retry",
            self._label,
            signal=signal_label(self._signal),
            listener=self._label,
            attempt=self.number,
            wait_s=round(wait, 6),
            error=type(exc).__qualname__,
        )
        return wait
