import json
import os
from decimal import Decimal, InvalidOperation
from time import perf_counter

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.http import Http404, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import aget_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from shop.models import Order
from shop.signals import carrier_quote_requested, order_completed, order_paid, quote_requested


@require_GET
async def quotes(request):
    """Every carrier's quote for the cart, the cheapest one, and how long it took."""
    try:
        cart = int(request.GET["cart"])
    except (KeyError, ValueError):
        return HttpResponseBadRequest("cart must be an integer")
    started = perf_counter()
    collected = await quote_requested.collect_async(
        sender=None, cart=cart, queue=True, deadline=settings.QUOTES_BUDGET
    )
    carriers = [carrier_quote(outcome) for outcome in collected]
    priced = [quote for quote in carriers if quote["price"] is not None]
    return JsonResponse(
        {
            "cart": cart,
            "carriers": carriers,
            "cheapest": min(priced, key=lambda quote: Decimal(quote["price"]), default=None),
            "deadline_hit": collected.deadline_hit,
            "elapsed_ms": round((perf_counter() - started) * 1000),
        }
    )


@require_GET
async def first_quote(request):
    """The first carrier to answer wins (a hedged call): the other calls are cancelled."""
    try:
        cart = int(request.GET["cart"])
    except (KeyError, ValueError):
        return HttpResponseBadRequest("cart must be an integer")
    started = perf_counter()
    async with quote_requested.stream_async(
        sender=None, cart=cart, deadline=settings.QUOTES_BUDGET
    ) as quotes:
        async for outcome in quotes:
            if outcome.ok:
                break
        else:
            outcome = None  # nobody answered within the budget
    return JsonResponse(
        {
            "cart": cart,
            "first": outcome and carrier_quote(outcome),
            "elapsed_ms": round((perf_counter() - started) * 1000),
        }
    )


@require_GET
async def quote_from(request, carrier):
    """One carrier's quote (the one the customer picked), through that carrier's circuit."""
    if carrier not in settings.CARRIERS:
        raise Http404(f"no carrier {carrier!r}")
    try:
        cart = int(request.GET["cart"])
    except (KeyError, ValueError):
        return HttpResponseBadRequest("cart must be an integer")
    collected = await carrier_quote_requested.collect_async(
        sender=None, carrier=carrier, cart=cart, deadline=settings.QUOTES_BUDGET
    )
    return JsonResponse({"cart": cart, **carrier_quote(collected[0], carrier)})


def carrier_quote(outcome, carrier=None):
    return {
        "carrier": carrier or outcome.receiver.carrier,
        "status": outcome.status,  # ok, error, timeout, circuit_open, expired, rejected
        "price": outcome.value and outcome.value["price"],
        "cached": bool(outcome.value and outcome.value.get("cached")),
        "elapsed_ms": round(outcome.elapsed * 1000),
    }


@csrf_exempt  # a JSON API for the demo; the admin and the status page keep CSRF protection
@require_POST
async def orders(request):
    try:
        data = json.loads(request.body)
        cart, total = int(data["cart"]), Decimal(data["total"])
    except (ValueError, KeyError, TypeError, InvalidOperation):
        return HttpResponseBadRequest('expected {"cart": <int>, "total": "<decimal>"}')
    order = await sync_to_async(place_order)(cart, total)
    return JsonResponse(order.as_json(), status=201)


def place_order(cart: int, total: Decimal) -> Order:
    with transaction.atomic():
        order = Order.objects.create(cart=cart, total=total)
        order_paid.send_sync(sender=Order, order=order)  # stock, then points, then audit
        order.save()
        order_completed.send_sync(sender=Order, order=order)  # enqueued when this commits
    return order


@require_GET
async def order_detail(request, pk):
    order = await aget_object_or_404(Order, pk=pk)
    return JsonResponse(order.as_json())


@require_GET
def metrics(request):
    """
    Prometheus's scrape: this process's metrics or, under several workers
    (``PROMETHEUS_MULTIPROC_DIR`` set), every worker's, added up from their files.
    In production, keep it off the public internet (a separate port or an allow list).
    """
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
