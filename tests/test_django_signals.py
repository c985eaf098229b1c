"""Listener options on Django's own signals, sent by Django's own send()."""

from __future__ import annotations

import asyncio

import pytest
from django.db.models.signals import post_save
from django.dispatch import Signal as DjangoSignal

from patchboard import ListenerTimeout, receiver
from tests.testapp.models import Order


@pytest.mark.django_db
def test_on_error_log_on_post_save_logs_and_does_not_raise(logs) -> None:
    seen = []

    @receiver(post_save, sender=Order, on_error="log")
    def index_order(sender, instance, created, **kwargs):
        seen.append((instance.reference, created))
        raise ConnectionError("search backend down")

    try:
        Order.objects.create(reference="A-1")
    finally:
        post_save.disconnect(index_order, sender=Order)

    assert seen == [("A-1", True)]
    [event] = [e for e in logs.entries if e["event"] == "listener_failed"]
    assert event["signal"] == "django.db.models.signals.post_save"
    assert event["sender"] == "tests.testapp.models.Order"
    assert isinstance(event["exc_info"], ConnectionError)


@pytest.mark.django_db
def test_on_error_raise_on_post_save_propagates_like_django() -> None:
    @receiver(post_save, sender=Order, on_error="raise")
    def index_order(sender, **kwargs):
        raise ConnectionError("search backend down")

    try:
        with pytest.raises(ConnectionError):
            Order.objects.create(reference="A-2")
    finally:
        post_save.disconnect(index_order, sender=Order)


def test_options_apply_under_send_robust_and_asend() -> None:
    plain = DjangoSignal()

    @receiver(plain, on_error="log", default="stood in")
    def broken(sender, **kwargs):
        raise ValueError("x")

    @receiver(plain, timeout=0.02, on_error="log", default="late")
    async def slow(sender, **kwargs):
        await asyncio.sleep(5)

    responses = dict(plain.send_robust(sender=None))
    assert sorted(responses.values()) == ["late", "stood in"]
    responses = dict(asyncio.run(plain.asend(sender=None)))
    assert sorted(responses.values()) == ["late", "stood in"]


def test_timeout_with_raise_policy_reaches_djangos_send_robust() -> None:
    plain = DjangoSignal()

    @receiver(plain, timeout=0.02)
    async def slow(sender, **kwargs):
        await asyncio.sleep(5)

    [(_, error)] = plain.send_robust(sender=None)
    assert isinstance(error, ListenerTimeout)


def test_a_receivers_warning_blames_the_line_that_sent_the_signal() -> None:
    """send() adds no frame: a receiver's warnings.warn(stacklevel=3) names the caller."""
    import inspect
    import warnings

    from patchboard import Signal

    signal = Signal(name="tests.django_signals.warn")

    def warn(sender, **kwargs):
        warnings.warn("careful", stacklevel=3)  # this frame, Django's send(), the caller

    signal.connect(warn, weak=False)
    for verb in (signal.send, signal.send_robust):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
            verb(sender=None)
        assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]
