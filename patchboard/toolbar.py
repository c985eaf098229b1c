"""
A django-debug-toolbar panel: what a request dispatched.

:class:`DispatchesPanel` lists each dispatch of the request (its signal, its
verb, its deadline and whether the deadline was hit) and under it each
listener call: its status, how long it ran, how long it waited in the
short-term queue, its circuit breaker and the breaker's state as the call
ended, and whether the dispatch's deadline cut it. Django's own ``send()``
and ``send_robust()`` are not listed (the toolbar's Signals panel and its
profiling cover Django's verbs).

It records through the tracing seam (``patchboard._instrument``): its
instrument is attached only while the toolbar records a request, and it
keeps only what the recorded request dispatched (a context variable, so
concurrent requests under ASGI never mix; a listener thread or a queued
call copies its dispatch's context). With the toolbar not installed, the
panel not configured or the toolbar not recording, dispatches pay nothing.

Django-named like ``patchboard.apps``: ``DEBUG_TOOLBAR_PANELS`` names the
panel by its dotted path, and this module is imported only from there
(``import patchboard`` never imports it, nor django-debug-toolbar).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Generator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar, Token
from types import FrameType
from typing import Any, Final

from debug_toolbar.panels import Panel
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from patchboard import _clock
from patchboard._breaker import CircuitBreaker, get_breaker
from patchboard._instrument import NO_SPAN, Attributes, CallStart, Span, instruments
from patchboard._log import signal_label
from patchboard._signals import Signal
from patchboard._stream import Stream

__all__ = ["DispatchesPanel"]

_VERBS: Final = {
    getattr(Signal, verb).__code__: verb
    for verb in ("send_async", "collect_async", "send_sync", "collect")
} | {Stream._start.__code__: "stream_async"}  # a stream starts as it is first iterated
"""The code of patchboard's verbs, by name: a dispatch finds its verb on its caller's stack."""


def _verb() -> str:
    # The seam does not pass the verb: looking for it on the stack costs the
    # recorded dispatches only, where a parameter would cost every dispatch.
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        verb = _VERBS.get(frame.f_code)
        if verb is not None:
            return verb
        frame = frame.f_back
    return "?"


class _Recording:
    """What one request dispatched: its dispatches' records, in the order they started."""

    __slots__ = ("dispatches", "lock")

    def __init__(self) -> None:
        self.dispatches: list[dict[str, Any]] = []
        self.lock = threading.Lock()  # calls end in listener threads too


_recording: ContextVar[_Recording | None] = ContextVar("patchboard_toolbar", default=None)
"""The recording of the request this context serves (None: not recorded)."""

_dispatch: ContextVar[dict[str, Any] | None] = ContextVar(
    "patchboard_toolbar_dispatch", default=None
)
"""The record of the dispatch whose listeners run in this context."""


class _RecordSpan:
    """The span of a dispatch (its record has ``"calls"``) or of a listener call: it fills the
    record in as it ends."""

    __slots__ = ("_ago", "_record", "_recording", "_started")

    def __init__(self, recording: _Recording, record: dict[str, Any], ago: float = 0.0) -> None:
        self._recording = recording
        self._record = record
        self._started = _clock.now()
        self._ago = ago

    def current(self) -> AbstractContextManager[object]:
        return self._current() if "calls" in self._record else nullcontext()

    @contextmanager
    def _current(self) -> Generator[None]:
        # The dispatch whose calls start meanwhile, here or in the contexts copied from here.
        token = _dispatch.set(self._record)
        try:
            yield
        finally:
            _dispatch.reset(token)

    def end(self, status: str, error: BaseException | None, attributes: Attributes = None) -> None:
        record = self._record
        breaker = record.get("breaker")
        state = None if breaker is None else _breaker_state(breaker)
        with self._recording.lock:
            record["status"] = status
            record["elapsed"] = self._ago + _clock.now() - self._started
            record["error"] = None if error is None else f"{type(error).__name__}: {error}"
            if "calls" in record:
                record["deadline_hit"] = bool(
                    attributes and attributes.get("patchboard.deadline_hit")
                )
            else:
                # ListenerTimeout and Expired say whether the dispatch's deadline was the cause.
                record["deadline_cut"] = bool(getattr(error, "deadline", False))
                record["breaker_state"] = state


def _breaker_state(name: str) -> str:
    try:
        breaker = get_breaker(name)
    except Exception:  # a guard of the project's own, or a breaker not declared
        return "?"
    return breaker.state if isinstance(breaker, CircuitBreaker) else "?"


class _Recorder:
    """The instrument: records the dispatches of the request being recorded, if any."""

    __slots__ = ()

    def dispatch(self, signal: Any, deadline: float | None, listeners: int) -> Span:
        recording = _recording.get()
        if recording is None:
            return NO_SPAN  # another request's dispatch, while one is recorded
        record: dict[str, Any] = {
            "signal": signal_label(signal),
            "verb": _verb(),
            "deadline": deadline,
            "listeners": listeners,
            "status": None,
            "elapsed": None,
            "deadline_hit": False,
            "error": None,
            "calls": [],
        }
        with recording.lock:
            recording.dispatches.append(record)
        return _RecordSpan(recording, record)

    def call(self, start: CallStart) -> Span:
        recording = _recording.get()
        dispatch = _dispatch.get()
        if recording is None or dispatch is None:
            return NO_SPAN
        record: dict[str, Any] = {
            "listener": start.listener,
            "status": None,
            "elapsed": None,
            "waited": start.waited if not start.ago else None,
            "deadline": start.deadline,
            "breaker": start.breaker,
            "breaker_state": None,
            "deadline_cut": False,
            "error": None,
        }
        with recording.lock:
            dispatch["calls"].append(record)
        return _RecordSpan(recording, record, start.ago)

    def inject(self, carrier: dict[str, str]) -> None:
        pass  # a recording stays in its request: nothing crosses to a worker

    def resume(self, carrier: Mapping[str, str], listener: str) -> AbstractContextManager[object]:
        return nullcontext()


_RECORDER: Final = _Recorder()


class DispatchesPanel(Panel):
    """
    The panel (see the module docstring). Add it to the toolbar's panels::

        DEBUG_TOOLBAR_PANELS = [
            *debug_toolbar.settings.PANELS_DEFAULTS,
            "patchboard.toolbar.DispatchesPanel",
        ]
    """

    title = _("Dispatches")
    template = "patchboard/toolbar_panel.html"
    is_async = True  # it records per context: safe under ASGI

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._recording: _Recording | None = None
        self._token: Token[_Recording | None] | None = None

    @property
    def nav_subtitle(self) -> str:
        stats = self.get_stats()  # type: ignore[no-untyped-call]
        dispatches = stats.get("dispatches", [])
        calls = sum(len(each["calls"]) for each in dispatches)
        return (
            ngettext("%d dispatch", "%d dispatches", len(dispatches)) % len(dispatches)
            + ngettext(", %d call", ", %d calls", calls) % calls
        )

    def enable_instrumentation(self) -> None:
        self._recording = _Recording()
        self._token = _recording.set(self._recording)
        instruments.attach(_RECORDER)

    def disable_instrumentation(self) -> None:
        instruments.detach(_RECORDER)
        if self._token is not None:
            _recording.reset(self._token)
            self._token = None

    def generate_stats(self, request: HttpRequest, response: HttpResponse) -> None:
        recording = self._recording
        if recording is None:
            return
        with recording.lock:
            dispatches = [
                {**_ms(each), "calls": [_ms(call) for call in each["calls"]]}
                for each in recording.dispatches
            ]
        self.record_stats({"dispatches": dispatches})  # type: ignore[no-untyped-call]


def _ms(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its durations in milliseconds (what the panel shows), rounded."""
    shown = dict(record)
    for key in ("elapsed", "waited", "deadline"):
        value = shown.pop(key, None)
        shown[f"{key}_ms"] = None if value is None else round(value * 1000, 3)
    return shown
