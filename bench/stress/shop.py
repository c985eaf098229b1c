"""
What the stress run adds to the example shop's processes (see
:mod:`bench.stress.settings`): the sync carrier listener, the middleware
that says which process served a response, and a background listener of
``order_completed`` that leaves one :class:`~bench.stress.models.Receipt`
per run, for the run to count.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from django.apps import AppConfig
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import async_only_middleware

STACKS_SIGNAL = signal.SIGUSR1
"""Sent by the run to a shop worker that stops answering: the worker writes every
thread's stack to its output, the shop's log, for the run's report."""

PID_HEADER = "X-Stress-Pid"
QUOTES_HEADER = "X-Stress-Quotes-Started"
ORDERS_HEADER = "X-Stress-Orders-Started"


class Counters:
    """
    This process's quote requests that reached the view (they each dispatch
    every carrier), and its order requests (each dispatches ``order_paid``
    and ``order_completed``).
    """

    quotes_started = 0
    orders_started = 0


@async_only_middleware
def stamp_process(
    get_response: Callable[[HttpRequest], Awaitable[HttpResponse]],
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    """
    Counts the quote and order requests this process starts and stamps every
    response with the pid and those counts. Last in ``MIDDLEWARE``: nothing
    suspends between the count and the view's dispatch, so a request that is
    counted has submitted its calls, even if its client goes away.
    """

    async def middleware(request: HttpRequest) -> HttpResponse:
        if request.path == "/quotes":
            Counters.quotes_started += 1
        elif request.path == "/orders":
            Counters.orders_started += 1
        response = await get_response(request)
        response[PID_HEADER] = str(os.getpid())
        response[QUOTES_HEADER] = str(Counters.quotes_started)
        response[ORDERS_HEADER] = str(Counters.orders_started)
        return response

    return middleware


class StressShopConfig(AppConfig):
    name = "bench.stress"
    label = "stress_shop"

    def ready(self) -> None:
        faulthandler.register(STACKS_SIGNAL, file=sys.stderr, all_threads=True)
        connect_sync_carrier(settings.SYNC_CARRIER)
        # Imported here: shop.signals is the example's, on the path once Django is set up.
        from shop.signals import order_completed

        # In the shop, which sends it inside the order's transaction, and in the
        # rqworker, which runs it.
        order_completed.connect(record_receipt, mode="background", dispatch_uid="stress-receipt")


def record_receipt(sender: object, *, order: Any, **kwargs: Any) -> None:
    """Leave the evidence of this run, keyed by the order the signal was sent for."""
    from bench.stress.models import Receipt

    Receipt.objects.create(order_id=order.pk)


def connect_sync_carrier(name: str) -> None:
    """Quote carrier ``name`` with a blocking HTTP client, in a listener thread."""
    # Imported here: the shop's receivers module needs the app registry ready.
    from shop.receivers import carrier_circuit, carrier_listeners
    from shop.signals import quote_requested

    client = httpx.Client(base_url=settings.CARRIERS_URL)  # thread-safe, one pool

    def quote(sender: object, *, cart: int, **kwargs: Any) -> Any:
        response = client.get(f"/quote/{name}", params={"cart": cart})
        response.raise_for_status()
        offer = response.json()
        cache.set(f"quote:{name}:{cart}", offer, timeout=3600)
        return offer

    _, last_quote = carrier_listeners(name)
    quote.__qualname__ = f"quote_{name}_sync"
    quote.carrier = name  # type: ignore[attr-defined]  # how the view names its outcome
    quote_requested.connect(
        quote,
        weak=False,
        dispatch_uid=f"quote-{name}",
        timeout=settings.CARRIER_TIMEOUT,
        on_error="log",
        breaker=carrier_circuit(name),  # carriers[gls], as the async carriers' circuits
        fallback=last_quote,
        thread_sensitive=False,  # a listener thread of its own, under MAX_THREADS
    )
