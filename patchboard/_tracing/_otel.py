"""
OpenTelemetry spans, following the messaging semantic conventions where they fit.

A dispatch is a ``send`` (span kind ``PRODUCER``, named ``send <signal>``);
each listener call a ``process`` (``CONSUMER``, named ``process
<listener>``), a child of its dispatch's span. The signal is the
destination (``messaging.destination.name``), the listener the consumer
(``messaging.consumer.group.name``, ``code.function.name``). A call that did
not end ``"ok"`` or ``"enqueued"`` has the status ``ERROR`` and an
``error.type`` (its exception's qualified class name); every call has
``patchboard.status`` (its outcome status), ``patchboard.deadline_s`` (what
was left of its dispatch's deadline as it started) and
``patchboard.queue.wait_s`` (how long it waited before it started). A
failed call's exception is recorded as the span's ``exception`` event.

A background listener's call is a message to a worker. As it is enqueued,
its span (``process <listener>``, status ``enqueued``) is current while the
task's payload takes the trace context, through the globally configured
propagator (``opentelemetry.propagate.inject``: W3C ``traceparent``,
``tracestate`` and ``baggage`` by default). In the worker, the call's
``process <listener>`` span has that enqueue-side span as its **parent**
(same trace: one request, one trace, its background work included) and
also a **link** to it, the relation the messaging conventions recommend
between a process span and its message's creation context (a backend
that follows links only still finds it). A rescheduled task carries the
same context.

``opentelemetry-api`` is imported when the instrument is built, that is
when ``PATCHBOARD["OPENTELEMETRY"]`` is True; spans go to whatever tracer
provider the project installed (none: the API's no-op).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Any, Final

from patchboard._instrument import Attributes, CallStart, Instrument, Span, merge
from patchboard._log import signal_label

SYSTEM: Final = "patchboard"
"""``messaging.system``."""

_OK: Final = frozenset({"ok", "enqueued"})
"""Statuses of calls that did what was asked of them."""

_ORIGIN: ContextVar[Any] = ContextVar("patchboard_trace_origin", default=None)
"""The span context a worker resumed (see :meth:`OpenTelemetry.resume`): the call
whose parent it is links to it too."""


class _OtelSpan:
    __slots__ = ("_span", "_trace")

    def __init__(self, span: Any, trace: Any) -> None:
        self._span = span
        self._trace = trace

    def current(self) -> AbstractContextManager[object]:
        # Our end() sets the status: an exception passing through (a cancellation) does not.
        use: AbstractContextManager[object] = self._trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )
        return use

    def end(self, status: str, error: BaseException | None, attributes: Attributes = None) -> None:
        span = self._span
        span.set_attribute("patchboard.status", status)
        if attributes:
            span.set_attributes(attributes)
        if status not in _OK and status != "cancelled":
            kind = type(error) if error is not None else None
            span.set_attribute(
                "error.type", status if kind is None else f"{kind.__module__}.{kind.__qualname__}"
            )
            span.set_status(self._trace.StatusCode.ERROR, None if error is None else str(error))
            if error is not None:
                span.record_exception(error)
        span.end()


class OpenTelemetry:
    """The instrument (see the module docstring)."""

    __slots__ = ("_consumer", "_context", "_producer", "_propagate", "_trace", "_tracer")

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace  # the extra: only once enabled

        self._trace = trace
        self._context = context
        self._propagate = propagate
        # A proxy: spans go to the provider installed when they start, even if
        # the project installs it after this instrument was built.
        self._tracer = trace.get_tracer("patchboard")
        self._producer = trace.SpanKind.PRODUCER
        self._consumer = trace.SpanKind.CONSUMER

    def dispatch(self, signal: Any, deadline: float | None, listeners: int) -> Span:
        name = signal_label(signal)
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": name,
            "messaging.batch.message_count": listeners,
        }
        if deadline is not None:
            attributes["patchboard.deadline_s"] = deadline
        span = self._tracer.start_span(f"send {name}", kind=self._producer, attributes=attributes)
        return _OtelSpan(span, self._trace)

    def call(self, start: CallStart) -> Span:
        listener = start.listener
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": signal_label(start.signal),
            "messaging.consumer.group.name": listener,
            "code.function.name": listener,
            "patchboard.queue.wait_s": start.waited,
        }
        if start.deadline is not None:
            attributes["patchboard.deadline_s"] = start.deadline
        began = time.time_ns() - int(start.ago * 1e9) if start.ago else None
        links = None
        origin = _ORIGIN.get()
        # Only the resumed call itself: a call its listener makes has its own parent.
        if origin is not None and self._trace.get_current_span().get_span_context() is origin:
            links = [self._trace.Link(origin)]
        span = self._tracer.start_span(
            f"process {listener}",
            kind=self._consumer,
            attributes=attributes,
            start_time=began,
            links=links,
        )
        return _OtelSpan(span, self._trace)

    def inject(self, carrier: dict[str, str]) -> None:
        headers: dict[str, str] = {}
        self._propagate.inject(headers)
        merge(carrier, headers)

    def resume(self, carrier: Mapping[str, str], listener: str) -> AbstractContextManager[object]:
        if not carrier:  # enqueued untraced: whatever the worker has current stays
            return nullcontext()
        return self._resume(carrier)

    @contextlib.contextmanager
    def _resume(self, carrier: Mapping[str, str]) -> Generator[None]:
        context = self._propagate.extract(carrier, self._context.get_current())
        origin = self._trace.get_current_span(context).get_span_context()
        token = self._context.attach(context)
        linked = _ORIGIN.set(origin if origin.is_valid else None)
        try:
            yield
        finally:
            _ORIGIN.reset(linked)
            self._context.detach(token)


def instrument() -> Instrument:
    """The OpenTelemetry instrument."""
    return OpenTelemetry()
