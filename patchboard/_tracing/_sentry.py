"""
Sentry spans: one per listener call, named after the listener, as sentry-sdk
names a Django receiver's span.

sentry-sdk's ``DjangoIntegration(signals_spans=True)`` (its default) wraps
the receivers Django's ``send()`` calls (it patches
``Signal._live_receivers``); patchboard's verbs do not go through it, so
this instrument opens the same span (``sentry.op`` ``"function"``, origin
``auto.http.django``, ``code.function.name``) around each listener call of
``send_async``, ``collect_async``, ``send_sync``, ``collect`` and
``stream_async``: sync, async, in a listener thread or through the
short-term queue. As sentry-sdk does, only inside a span (a request's
transaction), and not on the signals of its ``signals_denylist``.

A background listener's task is named after its listener, not after the
task every background call runs (``...run_listener``). As it is enqueued,
its span is current while the payload takes sentry-sdk's outgoing trace
headers (``sentry-trace``, ``baggage``). In the worker, when a queue
integration already started the task's transaction (sentry-sdk's
``RqIntegration`` or ``CeleryIntegration``, an ``op`` ``"queue.*"``,
continuing the trace it carried itself), that transaction is renamed after
the listener (source ``"task"``); when none did (django-tasks-db's ``db_worker``), one named
after the listener is started, continuing the carried trace.

Enabled by sentry-sdk's own option, read when ``PATCHBOARD`` is parsed (at
the first dispatch): when ``sentry_sdk.init()`` ran with the integration
(in settings.py, as Sentry's guide does). sentry-sdk is never imported
here: only looked up among the modules the project imported.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Generator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Final

from patchboard._instrument import NO_SPAN, Attributes, CallStart, Instrument, Span, merge

_FAILED: Final = frozenset({"error", "timeout", "expired", "rejected", "circuit_open"})

ORIGIN: Final = "auto.queue.patchboard"
"""``sentry.origin`` of the transaction a worker starts for a background call."""


class _SentrySpan:
    __slots__ = ("_sdk", "_span")

    def __init__(self, span: Any, sdk: Any) -> None:
        self._span = span
        self._sdk = sdk

    def current(self) -> AbstractContextManager[object]:
        return self._current()

    @contextlib.contextmanager
    def _current(self) -> Generator[None]:
        # A scope of its own: concurrent calls share their caller's scope, and
        # each must be the parent of what it starts.
        with self._sdk.new_scope() as scope:
            scope.span = self._span
            yield

    def end(self, status: str, error: BaseException | None, attributes: Attributes = None) -> None:
        span = self._span
        span.set_attribute("patchboard.status", status)
        if status in _FAILED:
            span.status = "error"
        span.end()


class Sentry:
    """The instrument (see the module docstring)."""

    __slots__ = ("_integration", "_op", "_process", "_sdk")

    def __init__(self, sdk: Any, integration: type[Any], op: str, process: str) -> None:
        self._sdk = sdk
        self._integration = integration
        self._op = op
        self._process = process

    def dispatch(self, signal: Any, deadline: float | None, listeners: int) -> Span:
        return NO_SPAN  # sentry-sdk spans receivers, not sends

    def call(self, start: CallStart) -> Span:
        sdk, listener = self._sdk, start.listener
        integration = sdk.get_client().get_integration(self._integration)
        if (
            integration is None
            or not integration.signals_spans
            or start.signal in integration.signals_denylist
            or sdk.get_current_span() is None
        ):
            return NO_SPAN
        span = sdk.start_span(
            name=listener,
            attributes={
                "sentry.op": self._op,
                "sentry.origin": self._integration.origin,
                "code.function.name": listener,
            },
            active=False,
        )
        return _SentrySpan(span, sdk)

    def inject(self, carrier: dict[str, str]) -> None:
        merge(carrier, dict(self._sdk.get_current_scope().iter_trace_propagation_headers()))

    def resume(self, carrier: Mapping[str, str], listener: str) -> AbstractContextManager[object]:
        return self._resume(carrier, listener)

    @contextlib.contextmanager
    def _resume(self, carrier: Mapping[str, str], listener: str) -> Generator[None]:
        sdk = self._sdk
        current = sdk.get_current_span()
        if current is not None:
            # A queue integration's transaction (named after run_listener) is renamed;
            # any other span is a request running the task itself (an immediate
            # backend), whose call span already names the listener.
            if str(current.get_attributes().get("sentry.op", "")).startswith("queue."):
                sdk.set_transaction_name(listener, source="task")
            yield
            return
        with sdk.isolation_scope():  # the carried trace stays this task's
            sdk.continue_trace(dict(carrier))
            with sdk.start_span(
                name=listener,
                attributes={
                    "sentry.op": self._process,
                    "sentry.origin": ORIGIN,
                    "sentry.segment.name.source": "task",
                    "code.function.name": listener,
                },
                parent_span=None,
            ):
                yield


def instrument() -> Instrument | None:
    """Sentry's instrument when sentry-sdk runs with ``DjangoIntegration(signals_spans=True)``."""
    sdk = sys.modules.get("sentry_sdk")
    django = sys.modules.get("sentry_sdk.integrations.django")
    consts = sys.modules.get("sentry_sdk.consts")
    if sdk is None or django is None or consts is None:
        return None
    integration = sdk.get_client().get_integration(django.DjangoIntegration)
    if integration is None or not integration.signals_spans:
        return None
    return Sentry(sdk, django.DjangoIntegration, consts.OP.FUNCTION, consts.OP.QUEUE_PROCESS)
