"""
The outcome ledger: where every listener call is counted, and where a call
that produced no value is logged.

Picture a cashier's book with one line per call: a call is written in once
when its dispatch submits it, and once when it ends, with how it ended
(``"ok"``, ``"error"``, ..., ``"cancelled"``). Nothing else in patchboard
changes the counts: :data:`ledger` is the one door, so with no call in
flight ``submitted`` is the sum of the others (``outcome_counts()``). The
counters are atomic (a call that ends in a listener thread and one that
ends on the event loop can never lose each other's count).

Every call that ends reaches the ledger once, as an :class:`Ended` handed
to :meth:`Ledger.book` (the hot path's calls that returned, in bulk,
through :meth:`Ledger.returned`, ``ok_batch`` and ``ok_one``), whoever ended it (the
listener call, the short-term queue, the background path). A call that ended
without a value of its own (``"error"``, ``"timeout"``, ``"circuit_open"``,
``"expired"``, ``"rejected"``) is logged there too, with the same names and
keys whoever ended it.

Observing. ``ledger.observers`` are called with an :class:`Ended` for every
call that ends, whatever the verb (the hook metrics and traces use). With
none (the default), an ended call costs one atomic count and no record is
built::

    def count(ended: Ended) -> None:
        CALLS.labels(ended.listener, ended.status).inc()

    ledger.observe(count)  # until ledger.unobserve(count), or state.reset()

An observer runs in the thread where the call ended (a listener thread, a
sync caller's, the event loop's), must not raise, and should be quick.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

from patchboard._config import get_settings
from patchboard._log import dotted, log_limited, logger, sender_label, signal_label
from patchboard._outcomes import STATUSES, Status
from patchboard._state import state


class Ended(NamedTuple):
    """
    One listener call that ended, as the ledger logs it and its observers see it.

    ``listener`` is the listener's dotted path; ``signal``, ``sender`` and
    ``kwargs`` are its dispatch's (``kwargs`` None where the hot path does
    not pass them); ``elapsed`` the seconds from the dispatch reaching it to
    its end (None for a call cancelled before it started); ``error`` the
    exception when the status is not ``"ok"`` (None for ``"cancelled"``).
    The rest says what its log shows: ``fell_back``, the listener's
    ``fallback`` answered; ``fallback_error``, what the fallback raised;
    ``propagate``, the error goes on to the caller (whose own handling
    reports it); ``fields``, the short-term queue's numbers of a call that
    never left its line; ``gone``, the listener's function was collected
    before its call.
    """

    status: Status
    listener: str
    signal: Any
    sender: Any
    elapsed: float | None
    error: BaseException | None = None
    kwargs: dict[str, Any] | None = None
    fell_back: bool = False
    fallback_error: Exception | None = None
    propagate: bool = False
    fields: dict[str, Any] | None = None
    gone: bool = False


Observer = Callable[[Ended], None]
"""Called with every ended call (see the module docstring)."""


_EVENTS: Final[dict[Status, tuple[str, str]]] = {
    "error": ("error", "listener_failed"),
    "timeout": ("warning", "listener_timeout"),
    # Rejections are counted by the breaker; at debug level, an open circuit is no news.
    "circuit_open": ("debug", "listener_circuit_open"),
    # Logged only with the short-term queue's numbers (``fields``).
    "expired": ("warning", "queue_item_expired"),
    "rejected": ("warning", "queue_item_rejected"),
}
"""(level, event) of each status a settled call logs."""

_QUEUE_STATUSES: Final = frozenset({"expired", "rejected"})

_FOLD_AT: Final = 1024
"""How many batches the counts hold unfolded before the one adding the next folds them."""


class Ledger:
    """The process's outcome counts and settled-call logs (see the module docstring)."""

    __slots__ = (
        "_added",
        "_batches",
        "_counts",
        "_lock",
        "_one",
        "_reads",
        "observers",
        "ok_batch",
        "ok_one",
    )

    # The counts, atomic and without a lock on the way in: one call at a time
    # through ``itertools.count.__next__``, many at once as a (name, n) batch
    # appended to ``_batches`` (each one C call, which no other thread comes
    # between; in the free-threaded build a deque guards itself with its own
    # lock). A read folds the batches into ``_added`` under ``_lock`` (so
    # does an add that finds 1024 waiting: the deque stays small): a lock
    # costs more than a dispatch's whole counting (about 0.3 us taken with
    # ``with``, against 0.04 us for an append).
    _counts: dict[str, itertools.count[int]]
    _one: dict[str, Callable[[], int]]
    _batches: deque[tuple[str, int]]
    _added: dict[str, int]
    _reads: int
    ok_one: Callable[[], int]
    """Count one call that returned, while nobody observes (the async hot path)."""
    ok_batch: Callable[[tuple[str, int]], None]
    """``ok_batch(("ok", n))``: count ``n`` calls that returned, at once, while nobody
    observes (the sync hot path's end: a C call, no frame). Only after the dispatch's
    :meth:`submitted`, whose check keeps the batches folded."""
    observers: tuple[Observer, ...]
    """Called with an :class:`Ended` for every call that ends (empty: nothing is built)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def __repr__(self) -> str:
        counts = self.counts()
        return f"<Ledger {counts['submitted']} submitted, {counts['ok']} ok>"

    def reset(self) -> None:
        """Zero the counts and drop the observers (``state.reset()``)."""
        names = ("submitted", *STATUSES)
        with self._lock:
            self._counts = {name: itertools.count() for name in names}
            self._one = {name: count.__next__ for name, count in self._counts.items()}
            self._batches = deque()
            self._added = dict.fromkeys(names, 0)
            self._reads = 0
            self.ok_one = self._one["ok"]
            self.ok_batch = self._batches.append
        self.observers = ()

    def observe(self, observer: Observer) -> None:
        """Call ``observer`` with every call that ends from now on."""
        self.observers = (*self.observers, observer)

    def unobserve(self, observer: Observer) -> None:
        """Stop calling ``observer`` (nothing happens if it was not observing)."""
        # Equality, not identity: a bound method is a new object at every access.
        self.observers = tuple(each for each in self.observers if each != observer)

    def counts(self) -> dict[str, int]:
        """``"submitted"`` and each status: the calls counted so far."""
        with self._lock:
            added = self._fold()
            # Reading a count takes one number too: subtract the reads made so far.
            reads = self._reads
            self._reads += 1
            return {name: next(count) - reads + added[name] for name, count in self._counts.items()}

    def _fold(self) -> dict[str, int]:
        """Add the batches appended so far into ``_added`` (under ``_lock``); ``_added``."""
        added, batches = self._added, self._batches
        while batches:  # a batch appended meanwhile is folded too, or by the next fold
            name, n = batches.popleft()
            added[name] += n
        return added

    def _add(self, name: str, n: int) -> None:
        batches = self._batches
        batches.append((name, n))
        if len(batches) >= _FOLD_AT:
            self._fold_now()

    def _fold_now(self) -> None:
        with self._lock:
            self._fold()

    # -- counting ----------------------------------------------------------------------

    def submitted(self, n: int = 1) -> None:
        """``n`` listener calls were submitted."""
        # _add, inlined: a frame less on every dispatch.
        batches = self._batches
        batches.append(("submitted", n))
        if len(batches) >= _FOLD_AT:
            self._fold_now()

    def returned(self, n: int) -> None:
        """
        ``n`` calls were submitted and returned, counted at once (the sync hot
        path, while nobody observes): together, so that no reader ever sees
        them ended and not submitted.
        """
        batches = self._batches
        batches.append(("submitted", n))
        batches.append(("ok", n))
        if len(batches) >= _FOLD_AT:
            self._fold_now()

    def ended(
        self,
        status: Status,
        listener: str,
        signal: Any,
        sender: Any,
        elapsed: float | None,
        error: BaseException | None = None,
    ) -> None:
        """One call ended with ``status``, and nothing to log (see :meth:`book`)."""
        self.book(Ended(status, listener, signal, sender, elapsed, error))

    def cancelled(self, listeners: Iterable[Any], signal: Any, sender: Any) -> None:
        """The calls of ``listeners`` (each with a ``label``) were cancelled before they ended."""
        if self.observers:
            for listener in listeners:
                self.ended("cancelled", listener.label, signal, sender, None)
        else:
            self._add("cancelled", sum(1 for _ in listeners))

    # -- the one door -----------------------------------------------------------------

    def book(self, ended: Ended) -> None:
        """
        One call ended: count it, tell the observers, and log it if it ended
        without a value of its own (see :func:`_log`). An observer that raises
        is logged (``ledger_observer_failed``) and the others still hear of
        the call: a metrics exporter's bug must not fail the listener call.
        """
        status = ended.status
        self._one[status]()
        for observer in self.observers:
            try:
                observer(ended)
            except Exception:
                name = dotted(observer)
                log_limited("error", "ledger_observer_failed", name, observer=name, exc_info=True)
        if status in _EVENTS:
            _log(ended)


def _log(ended: Ended) -> None:
    """
    Log a call that ended without a value of its own.

    A fallback that raised is logged first. An error, a timeout or an open
    circuit is logged (through the limiter: under overload, one line per
    listener and second, with ``suppressed=N``) unless it propagates to the
    caller, whose own handling reports it (logging it here too would print
    its traceback twice); one its ``fallback`` answered is logged with
    ``fallback=True``. An expiry or a rejection is logged only with the
    short-term queue's ``fields``, whatever follows.
    """
    listener, status, error = ended.listener, ended.status, ended.error
    if ended.gone:
        logger().warning("listener_gone", listener=listener)
        return
    if ended.fallback_error is not None:
        logger().error(
            "listener_fallback_failed",
            exc_info=ended.fallback_error,
            signal=signal_label(ended.signal),
            listener=listener,
            sender=sender_label(ended.sender),
        )
    level, event = _EVENTS[status]
    if status in _QUEUE_STATUSES:
        if ended.fields is not None:
            log_limited(
                level,
                event,
                listener,
                signal=signal_label(ended.signal),
                listener=listener,
                sender=sender_label(ended.sender),
                **ended.fields,
            )
    elif ended.fell_back or not ended.propagate:
        assert ended.elapsed is not None
        context: dict[str, Any] = {
            "signal": signal_label(ended.signal),
            "sender": sender_label(ended.sender),
            "elapsed_s": round(ended.elapsed, 6),
        }
        if ended.fell_back:
            context["fallback"] = True
        if get_settings().log_kwargs:
            context["kwargs"] = ended.kwargs
        if status == "error":
            context["exc_info"] = error
        elif status == "timeout":
            limit = getattr(error, "limit", None)
            context["limit_s"] = None if limit is None else round(limit, 6)
        else:
            context["breaker"] = getattr(error, "breaker", None)
        log_limited(level, event, listener, listener=listener, **context)


ledger: Final = Ledger()
"""The process's one ledger (zeroed by ``state.reset()``)."""
state.ledger = ledger


def outcome_counts() -> dict[str, int]:
    """
    How many listener calls were ``"submitted"`` in this process, and how many
    ended with each status (``"ok"``, ``"error"``, ..., ``"cancelled"``),
    since start-up (or the last :func:`patchboard.testing.reset`). Every call
    is counted once when submitted and once when it ends, whichever verb
    dispatched it: with no call in flight, ``submitted`` is the sum of the
    others.
    """
    return ledger.counts()
