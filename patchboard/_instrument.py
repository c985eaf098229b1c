"""
The seam where tracing plugs into dispatches and listener calls.

A span needs a hook where a call *starts* (the ledger's observers only see
ends): an :class:`Instrument` opens a :class:`Span` as a dispatch starts
and as each of its listener calls starts, the engine makes it current while
the call runs (so what the listener does, an HTTP call say, nests under its
span) and ends it once, with the call's outcome. The providers
(``patchboard._tracing``: OpenTelemetry, Sentry) plug a chooser in here when
imported; each time ``PATCHBOARD`` is parsed, the choosers say which
instruments are enabled, and :attr:`Instruments.active` holds them (or None).

With none active, a dispatch pays one attribute read (``Dispatch.traced``)
and nothing per listener. With one active, the engine's fast paths
(``_dispatch.dispatch_plain``, ``_run.run_here``'s direct calls,
``_dispatch.run_plain``, ``_run.run_async``'s direct call) are skipped in
favour of the general path through ``patchboard._call.Call``, which opens
each call's span, the way they are skipped while the ledger is observed.

A background call crosses to a worker: as it is enqueued, with its span
current, :meth:`Instrument.inject` writes the trace context into the
task's payload (a carrier of header names and values, as an HTTP request
carries it); in the worker, :meth:`Instrument.resume` continues that trace
around the call, so the worker's span of it joins the request's trace.
Without an active instrument the payload carries nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from patchboard._state import state

if TYPE_CHECKING:
    from patchboard._config import Settings


type Attributes = Mapping[str, Any] | None
"""A span's attributes at its end: OpenTelemetry's, for a call that ran in a worker."""


class Span(Protocol):
    """One span an instrument opened, for a dispatch or a listener call."""

    def current(self) -> AbstractContextManager[object]:
        """Make the span current (the parent of the spans opened meanwhile) in this context."""
        ...

    def end(self, status: str, error: BaseException | None, attributes: Attributes = None) -> None:
        """End the span, once: ``status`` is the call's outcome status (``"ok"``, ``"error"``,
        ...; a dispatch's ``"ok"`` or ``"error"``), ``error`` what it raised, if anything."""
        ...


class CallStart(NamedTuple):
    """
    One listener call starting, as an instrument sees it: ``listener`` its
    dotted path, ``signal`` its dispatch's; ``deadline`` the seconds its
    dispatch has left (None: no deadline), ``waited`` the seconds from its
    dispatch reaching it to its start (its wait in the short-term queue);
    ``ago`` how long ago it started (0: now; a call that never started is
    opened as it ends, covering its time from its dispatch to its end);
    ``breaker`` the name of the circuit breaker guarding it (None: none).
    """

    listener: str
    signal: Any
    deadline: float | None
    waited: float
    ago: float = 0.0
    breaker: str | None = None


class Instrument(Protocol):
    """Opens the spans (see the module docstring)."""

    def dispatch(self, signal: Any, deadline: float | None, listeners: int) -> Span:
        """The span of a dispatch to ``listeners`` listeners, with ``deadline`` seconds left."""
        ...

    def call(self, start: CallStart) -> Span:
        """The span of one listener call, opened as it starts."""
        ...

    def inject(self, carrier: dict[str, str]) -> None:
        """
        Write the current trace context into ``carrier`` (header names to
        values, through :func:`merge`): a background call's, as it is
        enqueued with its span current.
        """
        ...

    def resume(self, carrier: Mapping[str, str], listener: str) -> AbstractContextManager[object]:
        """
        Continue the trace ``carrier`` holds (what :meth:`inject` wrote,
        perhaps nothing) while a background call of ``listener`` runs, in
        the worker: the spans opened meanwhile join the enqueuing request's trace.
        """
        ...


def merge(carrier: dict[str, str], headers: Mapping[str, str]) -> None:
    """
    Add an instrument's ``headers`` to ``carrier``. ``baggage`` and
    ``tracestate`` are lists: a second instrument's members join the first's
    (W3C allows list-members of several vendors in one header; sentry-sdk's
    HTTP integrations join OpenTelemetry's baggage the same way); any other
    header is the last writer's.
    """
    for name, value in headers.items():
        before = carrier.get(name)
        carrier[name] = f"{before},{value}" if before and name in _LISTS else value


_LISTS: Final = frozenset({"baggage", "tracestate"})


Chooser = Callable[["Settings"], "Instrument | None"]
"""A provider's answer to the settings: its instrument when it is enabled, else None."""


class _NoSpan:
    __slots__ = ()

    def current(self) -> AbstractContextManager[object]:
        return nullcontext()

    def end(self, status: str, error: BaseException | None, attributes: Attributes = None) -> None:
        pass


NO_SPAN: Final[Span] = _NoSpan()
"""A span that is nothing: what an instrument opens when it has nothing to trace."""


class _Spans:
    """The spans of several instruments, opened together."""

    __slots__ = ("_spans",)

    def __init__(self, spans: list[Span]) -> None:
        self._spans = spans

    def current(self) -> AbstractContextManager[object]:
        stack = ExitStack()
        for span in self._spans:
            stack.enter_context(span.current())
        return stack

    def end(self, status: str, error: BaseException | None, attributes: Attributes = None) -> None:
        for span in self._spans:
            span.end(status, error, attributes)


class _Fanout:
    """Several instruments at once (OpenTelemetry and Sentry)."""

    __slots__ = ("_instruments",)

    def __init__(self, instruments: list[Instrument]) -> None:
        self._instruments = instruments

    def dispatch(self, signal: Any, deadline: float | None, listeners: int) -> Span:
        return _Spans([each.dispatch(signal, deadline, listeners) for each in self._instruments])

    def call(self, start: CallStart) -> Span:
        return _Spans([each.call(start) for each in self._instruments])

    def inject(self, carrier: dict[str, str]) -> None:
        for each in self._instruments:
            each.inject(carrier)

    def resume(self, carrier: Mapping[str, str], listener: str) -> AbstractContextManager[object]:
        stack = ExitStack()
        for each in self._instruments:
            stack.enter_context(each.resume(carrier, listener))
        return stack


class Instruments:
    """
    The choosers plugged in, the instruments they chose, and those attached
    for a while (see the module docstring).
    """

    __slots__ = ("_attached", "_choosers", "_chosen", "_lock", "active")

    def __init__(self) -> None:
        self._choosers: list[Chooser] = []
        self._chosen: list[Instrument] = []
        self._attached: list[Instrument] = []
        self._lock = threading.Lock()
        self.active: Instrument | None = None
        """What every dispatch built from now on is traced by (None: nothing)."""

    def plug(self, chooser: Chooser) -> None:
        """Ask ``chooser`` at each parse of the settings (plugged once, by its provider)."""
        self._choosers.append(chooser)

    def choose(self, settings: Settings) -> None:
        """Let each chooser answer ``settings``: the instruments enabled become :attr:`active`."""
        chosen = [found for chooser in self._choosers if (found := chooser(settings)) is not None]
        with self._lock:
            self._chosen = chosen
            self._activate()

    def attach(self, instrument: Instrument) -> None:
        """
        Make ``instrument`` active besides the chosen ones, from the next
        dispatch built, until as many :meth:`detach` as ``attach`` calls: a
        debugging tool's, while it records (the Debug Toolbar panel, for the
        requests it records, which may overlap).
        """
        with self._lock:
            self._attached.append(instrument)
            self._activate()

    def detach(self, instrument: Instrument) -> None:
        """Undo one :meth:`attach` of ``instrument``."""
        with self._lock:
            self._attached.remove(instrument)
            self._activate()

    def _activate(self) -> None:
        # Each attached instrument once, however many requests attached it.
        every = self._chosen + list(dict.fromkeys(self._attached))
        self.active = None if not every else every[0] if len(every) == 1 else _Fanout(every)


instruments: Final = Instruments()
"""The seam itself."""
state.on_settings.append(instruments.choose)
