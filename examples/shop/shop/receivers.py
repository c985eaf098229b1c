"""
The shop's listeners. ``ShopConfig.ready()`` imports this module and connects
the carriers, in the web process and in the Tasks worker alike.
"""

import httpx
import structlog
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from patchboard import receiver
from shop.signals import carrier_quote_requested, order_completed, order_paid, quote_requested

log = structlog.get_logger("shop")

client = httpx.AsyncClient(base_url=settings.CARRIERS_URL)
"""One connection pool for every carrier call this process makes."""


# -- quotes: one listener per carrier, each behind its carrier's circuit ---------------


def connect_carriers(names: list[str]) -> None:
    for name in names:
        quote, last_quote = carrier_listeners(name)
        quote_requested.connect(
            quote,
            weak=False,  # the closure has no other reference
            dispatch_uid=f"quote-{name}",
            timeout=settings.CARRIER_TIMEOUT,
            on_error="log",  # an error or a timeout: logged, and no quote from this carrier
            breaker=carrier_circuit(name),
            fallback=last_quote,  # the call never ran: circuit open, or expired in the queue
        )


def carrier_circuit(name: str) -> str | None:
    """
    The circuit that guards carrier ``name``'s quotes: ``carriers[<name>]``,
    ``name``'s circuit in the keyed breaker ``carriers`` (settings.CARRIER_BREAKER);
    None with ``SHOP_BREAKERS=off``.

    Named, not computed by the breaker's key function: one dispatch asks every
    carrier, so its arguments name none; the listener knows its carrier.
    """
    return f"{settings.CARRIER_BREAKER}[{name}]" if settings.CARRIER_BREAKERS else None


def carrier_of(sender, *, carrier, **kwargs) -> str:
    """
    The ``carriers`` breaker's key function, for a call whose arguments name
    its carrier (``breaker="carriers"`` on a listener of such a signal:
    :func:`quote_from`).
    """
    return carrier


async def ask_for_quote(carrier: str, cart: int):
    """Carrier ``carrier``'s quote for ``cart`` (kept for the fallback)."""
    response = await client.get(f"/quote/{carrier}", params={"cart": cart})
    response.raise_for_status()
    offer = response.json()
    await cache.aset(f"quote:{carrier}:{cart}", offer, timeout=3600)
    return offer


def carrier_listeners(name: str):
    """The listener that asks carrier ``name`` for a quote, and its fallback."""

    async def quote(sender, *, cart, **kwargs):
        return await ask_for_quote(name, cart)

    async def last_quote(sender, *, cart, **kwargs):
        cached = await cache.aget(f"quote:{name}:{cart}")
        return cached and {**cached, "cached": True}

    quote.__qualname__ = f"quote_{name}"  # how logs name the listener: shop.receivers.quote_ups
    quote.carrier = name  # how the view names its outcome
    return quote, last_quote


# -- one carrier's quote: the call names the carrier, the breaker computes the key --------


@receiver(
    carrier_quote_requested,
    # The keyed breaker itself: each call's circuit is carriers[carrier_of(...)], the
    # very circuit that carrier's own quote listener goes through (None: SHOP_BREAKERS=off).
    breaker=settings.CARRIER_BREAKER if settings.CARRIER_BREAKERS else None,
    timeout=settings.CARRIER_TIMEOUT,
    on_error="log",
)
async def quote_from(sender, *, carrier, cart, **kwargs):
    return await ask_for_quote(carrier, cart)


# -- an order is paid: side effects in the request, by priority -------------------------
# (not in the order they are written here: stock 30, then points 20, then audit 10)


@receiver(order_paid, priority=30)
def reserve_stock(sender, *, order, **kwargs):
    order.stock_reserved = True
    order.history.append("stock_reserved")


@receiver(order_paid, priority=10)
def audit(sender, *, order, **kwargs):
    order.history.append("audited")
    log.info("order_audited", order=order.pk, total=str(order.total), history=order.history)


@receiver(order_paid, priority=20)
def award_loyalty_points(sender, *, order, **kwargs):
    if not order.stock_reserved:
        raise RuntimeError(f"order {order.pk}: points before the stock was reserved")
    order.loyalty_points = int(order.total)  # a point per euro
    order.history.append("loyalty_points")


# -- and once it is committed: the receipt, in the Tasks worker ---------------------------


@receiver(order_completed, mode="background")
def send_receipt(sender, *, order, **kwargs):
    """``order`` is fetched again in the worker: the row as committed."""
    order.receipt_sent_at = timezone.now()
    order.save(update_fields=["receipt_sent_at"])
    log.info("receipt_sent", order=order.pk, loyalty_points=order.loyalty_points)
