"""
Structured logging: the ``patchboard`` logger, the labels its events carry,
and the limiter that keeps an overload from flooding the log.

The library never configures structlog or the standard library's logging.
Where its events go is decided at each event:

* the project configured structlog (``structlog.configure()``, as
  django-structlog does): ``structlog.get_logger("patchboard")``, so that
  configuration applies;
* it did not: the standard library's ``logging.getLogger("patchboard")``,
  so Django's ``LOGGING`` (levels, handlers, filters) applies and debug
  events stay off by default. The event is rendered as logfmt key/values
  (``listener_failed signal=... listener=...``; every line break in values
  escaped, ``\\r`` and ``\\u2028`` too, so no value can forge a log line)
  and a traceback reaches the handler as ``exc_info``, to be formatted there.

Event names are stable snake_case identifiers; context travels as keys
(``signal``, ``listener``, ``sender``, ``elapsed_s``, ``limit_s``), never
inside the event string.
"""

from __future__ import annotations

import atexit
import logging
import math
import sys
import threading
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any

import structlog
from django.dispatch import Signal as DjangoSignal

from patchboard import _clock
from patchboard._state import state


def logger() -> Any:
    """The ``patchboard`` logger: structlog's if the project configured it, else logging's."""
    configured = structlog.is_configured()
    cached = state.logger
    if cached is None or cached[0] is not configured:
        log = structlog.get_logger("patchboard") if configured else _to_logging()
        cached = state.logger = (configured, log)
    return cached[1]


def _to_logging() -> Any:
    # A structlog logger over logging.getLogger("patchboard"), built here and
    # configured nowhere: structlog's global configuration stays the project's.
    return structlog.wrap_logger(
        logging.getLogger("patchboard"),
        processors=[
            structlog.stdlib.filter_by_level,  # LOGGING's levels, before any work
            _render,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


# ``forced=true`` rather than a bare ``forced`` flag: every value has a key and a value.
_LOGFMT = structlog.processors.LogfmtRenderer(
    key_order=["event"], drop_missing=True, bool_as_flag=False
)
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
"""Every character ``str.splitlines()`` (and so a log reader) breaks a line at, escaped:
structlog's renderer escapes only ``\\n``, and a ``\\r`` or ``\\x1e`` in a forged payload's
text would start a line of its own."""


def _render(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[str], dict[str, Any]]:
    # Key/values for the message, the traceback for the handler to format.
    exc_info = event_dict.pop("exc_info", None)
    event = str(event_dict.pop("event", ""))
    # logfmt renders None as nothing (``sender=``); say it, as structlog's own renderers do.
    # A float in positional notation: ``elapsed_s=0.000037`` beside ``elapsed_s=0.073588``,
    # not ``3.7e-05`` (the durations are rounded to the microsecond already).
    for key, value in event_dict.items():
        if value is None:
            event_dict[key] = "None"
        elif type(value) is float and math.isfinite(value):
            event_dict[key] = f"{value:f}".rstrip("0").rstrip(".") or "0"
    rest = _LOGFMT(logger, method, event_dict).translate(_LINE_BREAKS)
    return (f"{event} {rest}" if rest else event,), {"exc_info": exc_info}


Timer = Callable[[float, Callable[[], None]], Any]
"""Calls a function after a delay in seconds; returns what has ``cancel()`` (or None)."""


def start_timer(delay: float, function: Callable[[], None]) -> threading.Timer:
    """The limiter's default :data:`Timer`: a daemon thread that waits, then calls."""
    timer = threading.Timer(delay, function)
    timer.name = "patchboard-log-summary"
    timer.daemon = True
    timer.start()
    return timer


class _Window:
    """One (event, key)'s interval: when it began, how many were dropped, the last one dropped."""

    __slots__ = ("dropped", "last", "last_at", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.dropped = 0
        self.last: tuple[str, dict[str, Any]] | None = None
        self.last_at = 0.0
        """When ``last`` happened (the limiter's clock)."""
        """(level, fields) of the last event dropped, logged at the interval's end."""


class Limiter:
    """
    At most one event per (event, key) per ``interval`` seconds.

    Under overload a per-item event (an expiry, a rejection, a timeout) would
    be logged once per item: thousands of lines a second. The limiter lets
    the first through and drops the ones that follow within the interval.
    The drops always surface: the next event let through carries
    ``suppressed=N``, how many were dropped before it, and an interval that
    ends with drops and no event after them lets its last dropped event
    through at its end (on ``timer``, a thread that waits, one at a time),
    carrying how many were dropped before that one and ``deferred_s``, how
    late it is logged (lines after it may tell of what happened later). Lines plus ``suppressed``
    add up to every event; the counters (``queue_stats()``,
    ``outcome_counts()``) count every item anyway.
    """

    def __init__(
        self,
        interval: float = 1.0,
        clock: Callable[[], float] = _clock.monotonic,
        timer: Timer = start_timer,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.timer = timer
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, Hashable], _Window] = {}
        self._pending: Any = None
        """The timer that will log the ends of intervals, if one is waiting."""
        self._closed = False
        self._exit_hook = False

    def allow(
        self, event: str, key: Hashable, dropped: tuple[str, dict[str, Any]] | None = None
    ) -> int | None:
        """
        None: drop this one; else let it through, with the count dropped
        before it. ``dropped`` is (level, fields) to log for this event if it
        is dropped and the last of its interval (None: it is only counted).
        """
        now = self.clock()
        with self._lock:
            window = self._seen.get((event, key))
            if window is None:
                if len(self._seen) >= 10_000:
                    self._seen.clear()  # keys come and go (listeners): stay bounded
                self._seen[(event, key)] = _Window(now)
                return 0
            if now - window.started < self.interval:
                window.dropped += 1
                window.last, window.last_at = dropped, now
                if dropped is not None:
                    self._schedule(window.started + self.interval - now)
                return None
            suppressed = window.dropped
            window.started, window.dropped, window.last = now, 0, None
            return suppressed

    def _schedule(self, delay: float) -> None:
        # Under the lock. One timer at a time: it serves every interval ended by then.
        if self._pending is None and not self._closed:
            self._pending = self.timer(max(delay, 0.0), self.flush)
            if not self._exit_hook:
                # The timer is a daemon thread: a command or script that exits
                # within the interval would take its drops with it.
                self._exit_hook = True
                atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        if not self._closed:
            self.flush(everything=True)

    def flush(self, *, everything: bool = False) -> None:
        """
        Log the last dropped event of every interval that has ended (of every
        interval, with ``everything``: the process is exiting), with how many
        were dropped before it (``suppressed``); what the timer calls.
        """
        now = self.clock()
        due: list[tuple[str, str, dict[str, Any]]] = []
        with self._lock:
            self._pending = None
            nearest: float | None = None
            for (event, _), window in self._seen.items():
                if window.last is None:
                    continue
                ends = window.started + self.interval
                if now < ends and not everything:
                    nearest = ends if nearest is None else min(nearest, ends)
                    continue
                level, fields = window.last
                if window.dropped > 1:
                    fields["suppressed"] = window.dropped - 1
                # Logged late, after what happened since (a circuit opening, say): say so.
                fields["deferred_s"] = round(now - window.last_at, 3)
                due.append((level, event, fields))
                # It is let through now: a new interval begins.
                window.started, window.dropped, window.last = now, 0, None
            if nearest is not None:
                self._schedule(nearest - now)
        for level, event, fields in due:
            getattr(logger(), level)(event, **fields)

    def close(self) -> None:
        """Cancel the waiting timer: what was dropped and not yet logged stays untold."""
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        if self._exit_hook:
            atexit.unregister(self._at_exit)


def limiter() -> Limiter:
    """The process's log limiter."""
    found = state.limiter
    if found is None:
        found = state.limiter = Limiter()
    return found


def log_limited(level: str, event: str, key: Hashable, **fields: Any) -> None:
    """Log a per-item event through the :class:`Limiter` (``key``: usually the listener)."""
    suppressed = limiter().allow(event, key, (level, fields))
    if suppressed is None:
        return
    if suppressed:
        fields["suppressed"] = suppressed
    getattr(logger(), level)(event, **fields)


def dotted(obj: object) -> str:
    """``module.qualname`` of a function, class or callable object."""
    func = getattr(obj, "__func__", obj)
    module = getattr(func, "__module__", None) or type(func).__module__
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{qualname}"


def sender_label(sender: object) -> str | None:
    """How a sender appears in logs: a class by dotted path, an object by its type."""
    if sender is None:
        return None
    if isinstance(sender, type):
        return dotted(sender)
    return f"<{dotted(type(sender))} instance>"


def name_signal(signal: object, name: str) -> None:
    """Record the name logs (and background task payloads) use for ``signal``."""
    state.signal_names[signal] = name


def signal_name(signal: object) -> str | None:
    """The name given to ``signal`` (``Signal(name=...)``, or Django's import path), if any."""
    names = state.signal_names
    name = names.get(signal)
    if name is None:
        _name_django_signals()
        # "" marks a signal seen without a name: the scan above runs once per signal.
        name = names.setdefault(signal, "")
    return name or None


def local_label(signal: object) -> str:
    """A label for a signal without a name: its type and id (meaningful in this process only)."""
    return f"{dotted(type(signal))}@{id(signal):#x}"


def signal_label(signal: object) -> str:
    """A signal's name in logs: its ``name=``, Django's own name, or its type and id."""
    return signal_name(signal) or local_label(signal)


_DJANGO_SIGNAL_MODULES = (
    "django.core.signals",
    "django.db.models.signals",
    "django.db.backends.signals",
)


def _name_django_signals() -> None:
    # Django's built-in signals have no name of their own: they go by their
    # import path. Only modules already loaded are read: importing
    # django.db.models.signals here would make its ModelSignal subclass
    # Django's Signal before a project can swap patchboard's in.
    names = state.signal_names
    for module_name in _DJANGO_SIGNAL_MODULES:
        module = sys.modules.get(module_name)
        for attr, value in list(vars(module).items()) if module is not None else ():
            if isinstance(value, DjangoSignal) and not names.get(value):
                names[value] = f"{module_name}.{attr}"
