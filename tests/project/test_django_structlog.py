"""
patchboard's events under django-structlog's documented configuration: a
request's ``request_id`` (bound by its middleware) is on every patchboard
event the request causes, whichever thread the listener ran in, and each
event is rendered once, by the handler's formatter (no JSON inside JSON).

Real django-structlog, real logging handlers, Django's test client.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path

from patchboard import Signal
from tests.services import require_module

order_checked = Signal(name="tests.structlog.order_checked")


class Boom(Exception):
    pass


def failing_sync(sender: Any, **kwargs: Any) -> None:
    raise Boom("sync")


async def failing_async(sender: Any, **kwargs: Any) -> None:
    raise Boom("async")


LISTENERS = {
    "sync, in the caller's thread": (failing_sync, {}),
    "sync, in a listener thread": (failing_sync, {"timeout": 5}),
    "async": (failing_async, {}),
}


def sync_view(request: HttpRequest) -> HttpResponse:
    order_checked.send_sync(sender=None, order=request.GET.get("order"))
    return HttpResponse("ok")


async def async_view(request: HttpRequest) -> HttpResponse:
    await order_checked.collect_async(sender=None, order=request.GET.get("order"))
    return HttpResponse("ok")


urlpatterns = [path("sync", sync_view), path("async", async_view)]


def documented_configuration() -> None:
    """django-structlog's documented ``structlog.configure()`` (its Getting Started)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.filter_by_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """
    django-structlog set up as its docs say: the middleware, structlog
    configured, and a handler on the ``patchboard`` and ``django_structlog``
    loggers whose ``ProcessorFormatter`` renders JSON (its ``json_formatter``).
    """
    require_module("django_structlog", "pip install django-structlog")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=structlog.processors.JSONRenderer())
    )
    loggers = [logging.getLogger(name) for name in ("patchboard", "django_structlog")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        each.setLevel(logging.INFO)
    documented_configuration()
    middleware = ["django_structlog.middlewares.RequestMiddleware"]
    try:
        with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware):
            yield stream
    finally:
        structlog.reset_defaults()
        for each, level in zip(loggers, levels, strict=True):
            each.removeHandler(handler)
            each.setLevel(level)


def _events(stream: io.StringIO) -> list[dict[str, Any]]:
    # Every line must be one JSON object: a line that is not fails here.
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _check(events: list[dict[str, Any]], listener: Any) -> None:
    [started] = [e for e in events if e["event"] == "request_started"]
    [failed] = [e for e in events if e["event"] == "listener_failed"]
    assert started["request_id"]
    assert failed["request_id"] == started["request_id"]
    # Encoded once: the keys are the event's own, not a JSON string inside "event".
    assert failed["listener"] == f"{listener.__module__}.{listener.__qualname__}"
    assert failed["signal"] == "tests.structlog.order_checked"
    assert failed["logger"] == "patchboard"
    assert failed["level"] == "error"
    assert "Boom" in failed["exception"]
    assert "order" not in failed  # kwargs' values are never logged


@pytest.mark.parametrize("placement", LISTENERS)
def test_a_sync_views_failed_listener_is_logged_once_with_the_request_id(
    json_lines: io.StringIO, placement: str
) -> None:
    listener, options = LISTENERS[placement]
    order_checked.connect(listener, weak=False, on_error="log", **options)
    try:
        response = Client().get("/sync", {"order": "secret-17"})
    finally:
        order_checked.disconnect(listener)
    assert response.status_code == 200
    _check(_events(json_lines), listener)


@pytest.mark.parametrize("placement", LISTENERS)
async def test_an_async_views_failed_listener_is_logged_once_with_the_request_id(
    json_lines: io.StringIO, placement: str
) -> None:
    listener, options = LISTENERS[placement]
    order_checked.connect(listener, weak=False, on_error="log", **options)
    try:
        response = await AsyncClient().get("/async", {"order": "secret-17"})
    finally:
        order_checked.disconnect(listener)
    assert response.status_code == 200
    _check(_events(json_lines), listener)
