"""The background listeners of the end-to-end project; each leaves evidence."""

import time
from datetime import datetime, timedelta
from typing import Any

from django.db.models.signals import post_save
from django.utils import timezone

from patchboard import CircuitOpen, Signal, receiver
from tests.e2e.models import Evidence
from tests.testapp.models import Order

order_paid = Signal(name="e2e.order_paid")
payment_requested = Signal(name="e2e.payment_requested")

CIRCUIT_OPEN_FOR = timedelta(seconds=1.5)


@receiver(post_save, sender=Order, mode="background")
def order_saved(
    signal: Any, sender: Any, instance: Order, created: bool, update_fields: Any, **kwargs: Any
) -> None:
    Evidence.objects.create(
        kind="post_save",
        reference=instance.reference,
        detail={
            "signal_is_post_save": signal is post_save,
            "sender": sender._meta.label,
            "instance_type": type(instance).__name__,
            "paid_at": instance.paid_at.isoformat() if instance.paid_at else None,
            "created": created,
            "update_fields": None if update_fields is None else sorted(update_fields),
            "raw": kwargs["raw"],
            "using": kwargs["using"],
        },
    )


@receiver(order_paid, mode="background")
def receipt(sender: Any, order: Order, paid_at: datetime, amount: Any, **kwargs: Any) -> None:
    Evidence.objects.create(
        kind="receipt",
        reference=order.reference,
        detail={
            "order_type": type(order).__name__,
            "paid_at": paid_at.isoformat(),
            "paid_at_type": type(paid_at).__name__,
            "amount": str(amount),
            "amount_type": type(amount).__name__,
            "sender": sender._meta.label,
        },
    )


@receiver(payment_requested, mode="background")
def charge(sender: Any, order: Order, **kwargs: Any) -> None:
    """Finds its circuit open on the first call, and closed once the retry time has passed."""
    now = timezone.now()
    opened = Evidence.objects.filter(kind="circuit_opened", reference=order.reference).first()
    if opened is None:
        retry_at = now + CIRCUIT_OPEN_FOR
        Evidence.objects.create(
            kind="circuit_opened",
            reference=order.reference,
            detail={"retry_at": retry_at.isoformat()},
        )
        raise CircuitOpen("e2e-payments", retry_at)
    retry_at = datetime.fromisoformat(opened.detail["retry_at"])
    if now < retry_at:
        raise CircuitOpen("e2e-payments", retry_at)
    Evidence.objects.create(
        kind="charged",
        reference=order.reference,
        detail={"ran_at": now.isoformat(), "retry_at": retry_at.isoformat()},
    )


slow_requested = Signal(name="e2e.slow_requested")


@receiver(slow_requested, mode="background")
def slow(sender: Any, *, reference: str, hold_s: float, **kwargs: Any) -> None:
    """Says it started, then holds its worker (the test kills the worker meanwhile)."""
    Evidence.objects.create(kind="slow_started", reference=reference)
    time.sleep(hold_s)
    Evidence.objects.create(kind="slow_finished", reference=reference)


def never_connected(sender: Any, **kwargs: Any) -> None:
    """Importable, but connected to nothing: a worker must refuse to run it."""
    Evidence.objects.create(kind="forged", reference="FORGED")
