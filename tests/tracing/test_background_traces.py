"""
A background listener's task carries the trace to the worker: there, its
``process <listener>`` span (OpenTelemetry) and its transaction (Sentry)
join the trace of the request that enqueued it.

In process: the DummyBackend keeps the tasks until ``run_pending`` runs
them as a worker without a queue integration does (django-tasks-db's
``db_worker``); RQ's own ``SimpleWorker``, on a private redis-server, is
the worker whose Sentry integration starts the task's transaction itself.
The real ``rqworker`` and ``db_worker`` processes are in
tests/background/test_traced_workers.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import django.dispatch
import pytest
import sentry_sdk
from django.db import transaction
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

try:
    from django.tasks import task_backends
    from django.tasks.backends.dummy import DummyBackend
except ImportError:  # Django 5.2, with the django-tasks backport
    from django_tasks import task_backends  # type: ignore[no-redef]
    from django_tasks.backends.dummy import DummyBackend  # type: ignore[no-redef]

from patchboard import CircuitOpen, Signal, receiver
from tests.background.test_background import run_pending
from tests.background.test_payload import FORGED_TRACES
from tests.services import RedisServer
from tests.tracing.conftest import InMemory, sentry_running
from tests.tracing.test_opentelemetry import EXPORTER, parent_of, span_id

LABEL = "tests.tracing.test_background_traces"
OLD_PAYLOAD_KEYS = {"v", "listener", "signal", "sender", "kwargs", "attempt", "first_enqueued_at"}

shipped = Signal(name="tests.tracing.shipped")
django_shipped = django.dispatch.Signal()
"""A signal of Django's own kind: its ``send()`` opens no patchboard span."""
noted = Signal(name="tests.tracing.noted")
tracer = trace.get_tracer("tests")
seen: list[dict[str, Any]] = []


def note(sender: Any, **kwargs: Any) -> None:
    """Inline: what a background listener dispatches runs under its span."""


def ship(sender: Any, **kwargs: Any) -> str:
    seen.append({"tenant": baggage.get_baggage("tenant")})
    with tracer.start_as_current_span("inside ship"), sentry_sdk.start_span(name="inside ship"):
        noted.collect(sender=None)
    return "shipped"


async def ship_async(sender: Any, **kwargs: Any) -> str:
    seen.append({"tenant": baggage.get_baggage("tenant")})
    await asyncio.sleep(0)
    with tracer.start_as_current_span("inside ship"), sentry_sdk.start_span(name="inside ship"):
        await noted.collect_async(sender=None)
    return "shipped"


def closed_for_now(sender: Any, **kwargs: Any) -> None:
    raise CircuitOpen("tests.tracing.carrier", datetime.now(UTC) + timedelta(minutes=5))


@pytest.fixture(autouse=True)
def _nothing_seen() -> None:
    seen.clear()


@pytest.fixture
def spans(settings: Any, dummy: DummyBackend) -> Iterator[InMemorySpanExporter]:
    settings.PATCHBOARD = {"OPENTELEMETRY": True, "BACKGROUND": {"BACKEND": "dummy"}}
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


@pytest.fixture
def connected() -> Iterator[None]:
    receiver(shipped, mode="background")(ship)
    noted.connect(note)
    yield
    shipped.disconnect(ship)
    noted.disconnect(note)


def payload(backend: DummyBackend) -> dict[str, Any]:
    [result] = backend.results
    found: dict[str, Any] = result.args[0]
    return found


def process_spans(exporter: InMemorySpanExporter, listener: str) -> list[ReadableSpan]:
    return by_name_all(exporter, f"process {LABEL}.{listener}")


def split(exporter: InMemorySpanExporter, listener: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The call's span as it was enqueued, and its spans in the worker."""
    found = process_spans(exporter, listener)
    status = {span: (span.attributes or {})["patchboard.status"] for span in found}
    [enqueued] = [span for span in found if status[span] == "enqueued"]
    return enqueued, [span for span in found if status[span] != "enqueued"]


def by_name_all(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


# -- OpenTelemetry ---------------------------------------------------------------------------


def send(verb: str) -> int:
    """Send ``shipped`` from a request's span, with ``verb``; the request's trace id."""

    async def send_async() -> int:
        with tracer.start_as_current_span("request") as request:
            await shipped.send_async(sender=None, n=1)
        return request.get_span_context().trace_id

    if verb == "send_async":
        return asyncio.run(send_async())
    with tracer.start_as_current_span("request") as request:
        shipped.send_sync(sender=None, n=1)
    return request.get_span_context().trace_id


@pytest.mark.parametrize("listener", [ship, ship_async], ids=["sync", "async"])
@pytest.mark.parametrize("verb", ["send_sync", "send_async"])
def test_the_workers_span_is_a_child_of_the_enqueued_call_and_links_it(
    spans: InMemorySpanExporter, verb: str, listener: Any
) -> None:
    receiver(shipped, mode="background")(listener)
    noted.connect(note)
    try:
        request_trace = send(verb)
        carried = payload(task_backends["dummy"])["trace"]
        assert run_pending() == ["ok"]
    finally:
        shipped.disconnect(listener)
        noted.disconnect(note)
    enqueued, [ran] = split(spans, listener.__name__)
    [sent] = [
        span for span in spans.get_finished_spans() if span.name == "send tests.tracing.shipped"
    ]
    assert parent_of(enqueued) == span_id(sent)
    assert carried["traceparent"].split("-")[1:3] == [
        f"{request_trace:032x}",
        f"{span_id(enqueued):016x}",
    ]
    # The worker's span: the request's trace, the enqueued call its parent and its link.
    assert trace_id(ran) == request_trace
    assert parent_of(ran) == span_id(enqueued)
    assert [link.context.span_id for link in ran.links] == [span_id(enqueued)]
    assert (ran.attributes or {})["patchboard.status"] == "ok"
    # What the listener does nests under it; the calls it makes have no link of their own.
    [inside] = by_name_all(spans, "inside ship")
    assert parent_of(inside) == span_id(ran)
    [inner_send] = by_name_all(spans, "send tests.tracing.noted")
    assert parent_of(inner_send) == span_id(inside)
    [inner] = process_spans(spans, "note")
    assert (parent_of(inner), list(inner.links)) == (span_id(inner_send), [])


@pytest.mark.django_db(transaction=True)
def test_on_commit_the_context_is_the_one_at_send_time(
    spans: InMemorySpanExporter, dummy: DummyBackend, connected: None
) -> None:
    with transaction.atomic():
        with tracer.start_as_current_span("request") as request:
            shipped.send_sync(sender=None, n=1)
        assert dummy.results == []  # posted as the transaction commits, outside the request
    assert run_pending() == ["ok"]
    enqueued, [ran] = split(spans, "ship")
    assert trace_id(ran) == request.get_span_context().trace_id
    assert parent_of(ran) == span_id(enqueued)


def test_a_rescheduled_task_carries_the_same_context(
    spans: InMemorySpanExporter, dummy: DummyBackend
) -> None:
    receiver(shipped, mode="background", on_error="log")(closed_for_now)
    try:
        with tracer.start_as_current_span("request") as request:
            shipped.send_sync(sender=None)
        first = payload(dummy)
        assert run_pending() == ["rescheduled"]
        second = payload(dummy)
        assert run_pending() == ["rescheduled"]
    finally:
        shipped.disconnect(closed_for_now)
    assert (second["attempt"], second["trace"]) == (2, first["trace"])
    enqueued, attempts = split(spans, "closed_for_now")
    assert len(attempts) == 2
    assert {trace_id(span) for span in attempts} == {request.get_span_context().trace_id}
    assert {parent_of(span) for span in attempts} == {span_id(enqueued)}


def test_untraced_the_payload_carries_nothing_more(dummy: DummyBackend, connected: None) -> None:
    """No instrument active (an OpenTelemetry span current does not matter): the old payload."""
    EXPORTER.clear()
    with tracer.start_as_current_span("request"):
        shipped.send_sync(sender=None, n=1)
    assert set(payload(dummy)) == OLD_PAYLOAD_KEYS
    assert run_pending() == ["ok"]
    assert process_spans(EXPORTER, "ship") == []


def test_djangos_own_send_carries_the_current_span(spans: InMemorySpanExporter) -> None:
    """
    Django's ``send()`` calls a background listener's wrapper without a span
    of patchboard's: the task carries whatever span is current (a request's,
    from the project's own Django instrumentation), and the worker's span
    joins that trace.
    """
    receiver(django_shipped, mode="background")(ship)
    noted.connect(note)
    try:
        with tracer.start_as_current_span("request") as request:
            django_shipped.send(sender=None, n=1)
        carried = payload(task_backends["dummy"])["trace"]
        assert run_pending() == ["ok"]
    finally:
        django_shipped.disconnect(ship)
        noted.disconnect(note)
    context = request.get_span_context()
    assert carried["traceparent"].split("-")[1:3] == [
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
    ]
    [ran] = process_spans(spans, "ship")
    assert (trace_id(ran), parent_of(ran)) == (context.trace_id, context.span_id)


def test_a_payload_without_a_trace_runs_in_a_trace_of_its_own(
    settings: Any, dummy: DummyBackend, connected: None
) -> None:
    """What a sender before tracing (or without it) enqueued, run by a traced worker."""
    shipped.send_sync(sender=None, n=1)
    assert set(payload(dummy)) == OLD_PAYLOAD_KEYS
    settings.PATCHBOARD = {"OPENTELEMETRY": True, "BACKGROUND": {"BACKEND": "dummy"}}
    EXPORTER.clear()
    assert run_pending() == ["ok"]
    [ran] = process_spans(EXPORTER, "ship")
    assert (ran.parent, list(ran.links)) == (None, [])
    EXPORTER.clear()


@pytest.mark.parametrize("forged", FORGED_TRACES)
def test_a_forged_trace_is_refused_and_nothing_runs(
    spans: InMemorySpanExporter, dummy: DummyBackend, connected: None, forged: object
) -> None:
    with tracer.start_as_current_span("request"):
        shipped.send_sync(sender=None, n=1)
    payload(dummy)["trace"] = forged
    assert run_pending() == ["refused"]
    assert seen == []
    assert split(spans, "ship")[1] == []


# -- Sentry ------------------------------------------------------------------------------------


def sentry_calls(spans: list[dict[str, Any]], listener: str) -> dict[str, list[dict[str, Any]]]:
    """The spans named after ``listener``, by ``sentry.op``, and the enqueued call apart."""
    found: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span["name"] != f"{LABEL}.{listener}":
            continue
        attributes = span["attributes"]
        status = attributes.get("patchboard.status", {}).get("value")
        kind = "enqueued" if status == "enqueued" else attributes["sentry.op"]["value"]
        found.setdefault(kind, []).append(span)
    return found


def attribute(span: dict[str, Any], name: str) -> Any:
    return span["attributes"][name]["value"]


def test_sentry_a_worker_without_a_transaction_starts_one_named_after_the_listener(
    sentry: InMemory, dummy: DummyBackend, connected: None
) -> None:
    with sentry_sdk.start_span(name="request") as request:
        shipped.send_sync(sender=None, n=1)
    assert set(payload(dummy)["trace"]) == {"sentry-trace", "baggage"}
    assert run_pending() == ["ok"]
    spans = sentry.spans()
    found = sentry_calls(spans, "ship")
    [enqueued], [task], [call] = found["enqueued"], found["queue.process"], found["function"]
    assert enqueued["parent_span_id"] == request.span_id
    assert task["is_segment"] is True
    assert attribute(task, "sentry.segment.name.source") == "task"
    assert (task["trace_id"], task["parent_span_id"]) == (request.trace_id, enqueued["span_id"])
    assert (call["trace_id"], call["parent_span_id"]) == (request.trace_id, task["span_id"])
    [inside] = [span for span in spans if span["name"] == "inside ship"]
    assert inside["parent_span_id"] == call["span_id"]


def test_sentry_and_opentelemetry_each_carry_their_context(
    sentry: InMemory, spans: InMemorySpanExporter, connected: None
) -> None:
    """Both in one carrier, their baggage joined: each worker side continues its own trace."""
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with (
            tracer.start_as_current_span("request") as otel_request,
            sentry_sdk.start_span(name="request") as sentry_request,
        ):
            shipped.send_sync(sender=None, n=1)
    finally:
        context.detach(token)
    carried = payload(task_backends["dummy"])["trace"]
    assert {"traceparent", "sentry-trace", "baggage"} <= set(carried)
    members = carried["baggage"].split(",")
    assert "tenant=acme" in members
    assert f"sentry-trace_id={sentry_request.trace_id}" in members
    assert run_pending() == ["ok"]
    assert seen == [{"tenant": "acme"}]  # OpenTelemetry's baggage reached the listener
    enqueued, [ran] = split(spans, "ship")
    assert trace_id(ran) == otel_request.get_span_context().trace_id
    assert parent_of(ran) == span_id(enqueued)
    [task] = sentry_calls(sentry.spans(), "ship")["queue.process"]
    assert task["trace_id"] == sentry_request.trace_id


@pytest.fixture
def rq_backend(settings: Any, private_redis: RedisServer) -> Iterator[str]:
    """django-tasks-rq's backend on a private redis-server, the one background listeners use."""
    pytest.importorskip("django_tasks_rq", reason="the stress group is not installed")
    settings.RQ_QUEUES = {"default": {"URL": private_redis.url}}
    settings.TASKS = {**settings.TASKS, "rq": {"BACKEND": "django_tasks_rq.RQBackend"}}
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "rq"}}
    yield private_redis.url


@pytest.mark.redis  # a private redis-server, about a second: not a stress test
def test_sentry_rqs_transaction_is_renamed_after_the_listener(
    rq_backend: str, connected: None
) -> None:
    """RQ's SimpleWorker in burst mode: sentry-sdk's RqIntegration starts the transaction."""
    import django_rq
    from django_tasks_rq import Job
    from rq import SimpleWorker
    from sentry_sdk.integrations.rq import RqIntegration

    with sentry_running(RqIntegration()) as sentry:
        with sentry_sdk.start_span(name="request") as request:
            [outcome] = shipped.send_sync(sender=None, n=1)
        assert outcome.status == "enqueued"
        queue = django_rq.get_queue("default", job_class=Job)
        worker = SimpleWorker([queue], connection=queue.connection, job_class=Job)
        assert worker.work(burst=True)
        spans = sentry.spans()
    assert seen == [{"tenant": None}]
    found = sentry_calls(spans, "ship")
    [task], [call] = found["queue.process"], found["function"]
    assert task["is_segment"] is True
    assert attribute(task, "sentry.origin") == "auto.queue.rq"  # RQ's, not ours
    assert attribute(task, "sentry.segment.name.source") == "task"
    assert task["trace_id"] == request.trace_id
    assert (call["trace_id"], call["parent_span_id"]) == (request.trace_id, task["span_id"])
    assert [
        span for span in spans if span["name"].endswith("run_listener") and span["is_segment"]
    ] == []
