"""
Sentry: with sentry-sdk's ``DjangoIntegration(signals_spans=True)``, every
patchboard verb gives one span per listener call, named after the listener
(as sentry-sdk names a receiver's span on Django's ``send()``), whether it
is sync, async, in a listener thread or queued; read back from the
envelopes sentry-sdk sends, through an in-memory transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sentry_sdk
from django.dispatch import Signal as DjangoSignal

from patchboard import Signal, receiver
from tests.tracing.conftest import InMemory
from tests.tracing.test_opentelemetry import EXPORTER  # installs the OpenTelemetry SDK provider

LABEL = "tests.tracing.test_sentry"


def sync_listener(sender: Any, **kwargs: Any) -> str:
    with sentry_sdk.start_span(name="inside sync_listener"):
        return "sync"


async def async_listener(sender: Any, **kwargs: Any) -> str:
    await asyncio.sleep(0)
    with sentry_sdk.start_span(name="inside async_listener"):
        return "async"


def threaded_listener(sender: Any, **kwargs: Any) -> str:
    with sentry_sdk.start_span(name="inside threaded_listener"):
        return "threaded"


def signal_of_every_kind() -> Signal:
    signal = Signal(name="orders.paid")
    signal.connect(sync_listener)
    signal.connect(async_listener)
    signal.connect(threaded_listener, timeout=5)
    return signal


NAMES = {f"{LABEL}.{kind}_listener" for kind in ("sync", "async", "threaded")}


def check(spans: list[dict[str, Any]]) -> None:
    """One span per listener call, named after it, under the request's; theirs under each."""
    (request,) = [span for span in spans if span["name"] == "request"]
    calls = {span["name"]: span for span in spans if span["name"] in NAMES}
    assert set(calls) == NAMES
    assert len([span for span in spans if span["name"] in NAMES]) == len(NAMES)
    for name, span in calls.items():
        assert span["parent_span_id"] == request["span_id"]
        assert span["attributes"]["sentry.op"]["value"] == "function"
        assert span["attributes"]["code.function.name"]["value"] == name
        assert span["status"] == "ok"
        inside = [s for s in spans if s["name"] == f"inside {name.rpartition('.')[2]}"]
        assert [s["parent_span_id"] for s in inside] == [span["span_id"]]


@pytest.mark.parametrize("verb", ["send_async", "collect_async", "collect_async queued"])
async def test_async_verbs(sentry: InMemory, verb: str) -> None:
    signal = signal_of_every_kind()
    name, _, queued = verb.partition(" ")
    with sentry_sdk.start_span(name="request"):
        await getattr(signal, name)(sender=None, queue=bool(queued))
    check(sentry.spans())


async def test_stream_async(sentry: InMemory) -> None:
    signal = signal_of_every_kind()
    with sentry_sdk.start_span(name="request"):
        async with signal.stream_async(sender=None) as stream:
            assert len([outcome async for outcome in stream]) == 3
    check(sentry.spans())


@pytest.mark.parametrize("verb", ["send_sync", "collect"])
def test_sync_verbs(sentry: InMemory, verb: str) -> None:
    signal = signal_of_every_kind()
    with sentry_sdk.start_span(name="request"):
        getattr(signal, verb)(sender=None)
    check(sentry.spans())


def test_a_failed_call_is_an_error_span(sentry: InMemory) -> None:
    signal = Signal(name="orders.failed")

    def fails(sender: Any, **kwargs: Any) -> None:
        raise ValueError("down")

    signal.connect(fails, on_error="log")
    with sentry_sdk.start_span(name="request"):
        signal.collect(sender=None)
    (span,) = [span for span in sentry.spans() if span["name"].endswith("fails")]
    assert span["status"] == "error"
    assert span["attributes"]["patchboard.status"]["value"] == "error"


def test_no_span_outside_a_request(sentry: InMemory) -> None:
    """As sentry-sdk's own receiver spans: none without a span to belong to."""
    signal_of_every_kind().collect(sender=None)
    spans = sentry.spans()
    assert len(spans) == 3  # the listeners' own spans: none of patchboard's
    assert not [span for span in spans if span["name"] in NAMES]


def test_djangos_send_names_the_function_not_the_wrapper(sentry: InMemory) -> None:
    """sentry-sdk's own span on Django's send(), around a listener connected with options."""
    django_signal = DjangoSignal()

    @receiver(django_signal, on_error="log")
    def order_saved(sender: Any, **kwargs: Any) -> None:
        pass

    with sentry_sdk.start_span(name="request"):
        django_signal.send(sender=None)
    names = [span["name"] for span in sentry.spans() if span["name"] != "request"]
    assert names == [f"{LABEL}.{order_saved.__qualname__}"]


def test_with_opentelemetry_too_each_gets_its_spans(sentry: InMemory, settings: Any) -> None:
    settings.PATCHBOARD = {"OPENTELEMETRY": True}
    EXPORTER.clear()
    signal = signal_of_every_kind()
    with sentry_sdk.start_span(name="request"):
        signal.collect(sender=None)
    check(sentry.spans())
    otel = {span.name for span in EXPORTER.get_finished_spans()}
    assert {f"process {name}" for name in NAMES} | {"send orders.paid"} <= otel
    EXPORTER.clear()
