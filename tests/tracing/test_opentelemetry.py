"""
OpenTelemetry: with ``PATCHBOARD["OPENTELEMETRY"]``, a span per dispatch and
one per listener call, current while the listener runs, on every verb and
every place a call runs; read back through the SDK's in-memory exporter.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from patchboard import Signal
from patchboard._config import get_settings, installed
from patchboard.testing import VirtualClock

EXPORTER = InMemorySpanExporter()


def _install_provider() -> None:
    # The global provider can be set once per process: this module's, for every test.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


_install_provider()


class Boom(Exception):
    pass


@pytest.fixture
def spans(settings: Any) -> Iterator[InMemorySpanExporter]:
    settings.PATCHBOARD = {"OPENTELEMETRY": True}
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    found = {span.name: span for span in exporter.get_finished_spans()}
    assert len(found) == len(exporter.get_finished_spans()), "span names repeat"
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


tracer = trace.get_tracer("tests")


def sync_quote(sender: Any, **kwargs: Any) -> int:
    with tracer.start_as_current_span("inside sync_quote"):
        return 1


async def async_quote(sender: Any, **kwargs: Any) -> int:
    await asyncio.sleep(0)  # suspends: runs as a task of its own
    with tracer.start_as_current_span("inside async_quote"):
        return 2


def failing(sender: Any, **kwargs: Any) -> None:
    raise Boom("carrier down")


LABEL = "tests.tracing.test_opentelemetry"


async def test_collect_async_opens_a_span_per_dispatch_and_per_call(spans: Any) -> None:
    signal = Signal(name="quotes")
    signal.connect(sync_quote)
    signal.connect(async_quote)
    with tracer.start_as_current_span("request") as request:
        collected = await signal.collect_async(sender=None, deadline=5)
    assert collected.values() == [1, 2]
    found = by_name(spans)
    send = found["send quotes"]
    assert send.kind is SpanKind.PRODUCER
    assert parent_of(send) == request.get_span_context().span_id
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "patchboard"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.destination.name"] == "quotes"
    assert send.attributes["messaging.batch.message_count"] == 2
    assert 0 < send.attributes["patchboard.deadline_s"] <= 5
    assert send.attributes["patchboard.deadline_hit"] is False
    for name in ("sync_quote", "async_quote"):
        call = found[f"process {LABEL}.{name}"]
        assert call.kind is SpanKind.CONSUMER
        assert parent_of(call) == span_id(send)
        assert call.attributes is not None
        assert call.attributes["messaging.operation.type"] == "process"
        assert call.attributes["messaging.consumer.group.name"] == f"{LABEL}.{name}"
        assert call.attributes["patchboard.status"] == "ok"
        assert 0 < call.attributes["patchboard.deadline_s"] <= 5
        assert call.attributes["patchboard.queue.wait_s"] >= 0
        assert call.status.status_code is StatusCode.UNSET
        # What the listener did nests under its call's span.
        assert parent_of(found[f"inside {name}"]) == span_id(call)


@pytest.mark.parametrize("verb", ["collect", "send_sync"])
def test_sync_verbs_trace_plain_listeners_too(spans: Any, verb: str) -> None:
    """The sync hot path (plain listeners, no deadline) is left for the traced path."""
    signal = Signal(name="plain")
    signal.connect(sync_quote)
    signal.connect(failing, on_error="log")
    collected = getattr(signal, verb)(sender=None)
    assert [outcome.status for outcome in collected] == ["ok", "error"]
    found = by_name(spans)
    send = found["send plain"]
    ok, failed = found[f"process {LABEL}.sync_quote"], found[f"process {LABEL}.failing"]
    assert parent_of(ok) == parent_of(failed) == span_id(send)
    assert parent_of(found["inside sync_quote"]) == span_id(ok)
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == f"{__name__}.Boom"
    assert failed.attributes["patchboard.status"] == "error"
    [event] = failed.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == f"{__name__}.Boom"
    assert ok.events == ()


async def test_plain_async_listeners_are_traced(spans: Any) -> None:
    """The async hot path (plain async listeners, own tasks) is left for the traced path."""
    signal = Signal(name="plain_async")
    signal.connect(async_quote)
    await signal.send_async(sender=None)
    found = by_name(spans)
    call = found[f"process {LABEL}.async_quote"]
    assert parent_of(call) == span_id(found["send plain_async"])
    assert parent_of(found["inside async_quote"]) == span_id(call)


async def test_a_call_the_deadline_cut_is_a_timeout(spans: Any) -> None:
    started = asyncio.Event()

    async def hangs(sender: Any, **kwargs: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    signal = Signal(name="slow")
    signal.connect(hangs, on_error="log")
    collected = await signal.collect_async(sender=None, deadline=0.05)
    assert started.is_set()
    found = by_name(spans)
    call = found[f"process {LABEL}.{hangs.__qualname__}"]
    assert call.attributes is not None
    assert call.attributes["patchboard.status"] == "timeout"
    assert call.attributes["error.type"] == "patchboard._exceptions.ListenerTimeout"
    assert call.status.status_code is StatusCode.ERROR
    assert collected.deadline_hit
    assert found["send slow"].attributes["patchboard.deadline_hit"] is True  # type: ignore[index]


def test_a_listener_thread_runs_under_its_span(spans: Any) -> None:
    """A sync listener with a timeout runs in a listener thread: its span is current there."""
    threads: list[int] = []

    def threaded(sender: Any, **kwargs: Any) -> int:
        threads.append(threading.get_ident())
        with tracer.start_as_current_span("inside threaded"):
            return 3

    signal = Signal(name="threaded")
    signal.connect(threaded, timeout=5)
    assert signal.collect(sender=None).values() == [3]
    assert threads != [threading.get_ident()]
    found = by_name(spans)
    call = found[f"process {LABEL}.{threaded.__qualname__}"]
    assert parent_of(found["inside threaded"]) == span_id(call)
    assert parent_of(call) == span_id(found["send threaded"])


async def test_queued_calls_carry_their_wait(spans: Any) -> None:
    signal = Signal(name="queued")
    signal.connect(async_quote)
    signal.connect(sync_quote)
    await signal.collect_async(sender=None, queue=True)
    found = by_name(spans)
    send = found["send queued"]
    for name in ("async_quote", "sync_quote"):
        call = found[f"process {LABEL}.{name}"]
        assert parent_of(call) == span_id(send)
        assert call.attributes is not None
        assert call.attributes["patchboard.queue.wait_s"] >= 0
        assert parent_of(found[f"inside {name}"]) == span_id(call)


async def test_a_stream_has_its_span_until_it_ends(spans: Any) -> None:
    signal = Signal(name="streamed")
    signal.connect(async_quote)
    signal.connect(sync_quote)
    async with asyncio.timeout(5), signal.stream_async(sender=None) as stream:
        seen = [outcome.value async for outcome in stream]
    assert sorted(seen) == [1, 2]
    found = by_name(spans)
    send = found["send streamed"]
    assert send.status.status_code is StatusCode.UNSET
    assert send.attributes is not None
    assert send.attributes["messaging.batch.message_count"] == 2
    assert send.attributes["patchboard.deadline_hit"] is False
    for name in ("async_quote", "sync_quote"):
        assert parent_of(found[f"process {LABEL}.{name}"]) == span_id(send)


async def test_a_stream_the_deadline_cut_says_so_in_its_span(spans: Any) -> None:
    async def hangs(sender: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()

    signal = Signal(name="streamed_slow")
    signal.connect(hangs, on_error="log")
    signal.connect(async_quote)
    with VirtualClock():
        async with asyncio.timeout(5), signal.stream_async(sender=None, deadline=2) as stream:
            statuses = sorted([outcome.status async for outcome in stream])
    assert statuses == ["ok", "timeout"]
    send = by_name(spans)["send streamed_slow"]
    assert send.status.status_code is StatusCode.UNSET  # a deadline hit is not an error
    assert send.attributes is not None
    assert send.attributes["patchboard.deadline_hit"] is True


async def test_a_stream_left_by_an_error_ends_its_span_as_one(spans: Any) -> None:
    signal = Signal(name="streamed_error")
    signal.connect(failing)
    with pytest.raises(Boom):
        async with asyncio.timeout(5):
            async for _ in signal.stream_async(sender=None):
                pass
    send = by_name(spans)["send streamed_error"]
    assert send.status.status_code is StatusCode.ERROR
    assert send.attributes is not None
    assert send.attributes["error.type"] == f"{__name__}.Boom"


async def test_an_ordered_signal_traces_each_call(spans: Any) -> None:
    signal = Signal(name="ordered", ordered=True)
    signal.connect(failing, priority=1)
    signal.connect(sync_quote)
    with pytest.raises(Boom):
        await signal.send_async(sender=None)
    found = by_name(spans)
    send = found["send ordered"]
    assert send.status.status_code is StatusCode.ERROR
    assert send.attributes is not None
    assert send.attributes["error.type"] == f"{__name__}.Boom"
    assert found[f"process {LABEL}.failing"].attributes["patchboard.status"] == "error"  # type: ignore[index]
    # The one after it never ran: cancelled, a span of no time, not an error.
    after = found[f"process {LABEL}.sync_quote"]
    assert after.attributes is not None
    assert after.attributes["patchboard.status"] == "cancelled"
    assert after.status.status_code is StatusCode.UNSET


def test_off_by_default(settings: Any) -> None:
    EXPORTER.clear()
    signal = Signal(name="untraced")
    signal.connect(sync_quote)
    signal.collect(sender=None)
    assert [span.name for span in EXPORTER.get_finished_spans()] == ["inside sync_quote"]


def test_the_setting_must_be_a_bool(settings: Any) -> None:
    settings.PATCHBOARD = {"OPENTELEMETRY": "yes"}
    with pytest.raises(ImproperlyConfigured, match=r'PATCHBOARD\["OPENTELEMETRY"\]: .*bool'):
        get_settings()


def test_enabling_it_without_the_package_is_refused_by_name() -> None:
    installed("OPENTELEMETRY", True, module="opentelemetry.trace")  # installed here: accepted
    installed("OPENTELEMETRY", False, module="not_installed_anywhere.trace")
    with pytest.raises(ValueError, match=r"OPENTELEMETRY is True but not_installed_anywhere"):
        installed("OPENTELEMETRY", True, module="not_installed_anywhere.trace")


def test_patchboard_does_not_import_opentelemetry_unless_enabled() -> None:
    code = (
        "import django; from django.conf import settings; "
        "settings.configure(INSTALLED_APPS=['patchboard']); django.setup()\n"
        "import sys, patchboard\n"
        "signal = patchboard.Signal()\n"
        "def one(sender, **kwargs): return 1\n"
        "signal.connect(one)\n"
        "assert signal.collect(sender=None).values() == [1]\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'sentry_sdk'))))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
