"""Listener options on Django's own signals, sent by Django's own send()."""

from __future__ import annotations

import asyncio

import pytest
from django.db.models.signals import post_save
from django.dispatch import Signal as DjangoSignal
from django.test import override_settings

from patchboard import ListenerTimeout, Signal, receiver
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


@pytest.mark.django_db
def test_the_on_error_setting_applies_to_a_receiver_without_options_on_post_save(logs) -> None:
    """Regression: connected bare, its error failed ``create()`` under ON_ERROR="log"."""

    @receiver(post_save, sender=Order)
    def index_order(sender, **kwargs):
        raise ConnectionError("search backend down")

    try:
        with override_settings(PATCHBOARD={"ON_ERROR": "log"}):
            Order.objects.create(reference="A-3")
        with pytest.raises(ConnectionError):
            Order.objects.create(reference="A-4")  # the setting is back to "raise"
    finally:
        post_save.disconnect(index_order, sender=Order)

    [event] = [e for e in logs.entries if e["event"] == "listener_failed"]
    assert event["listener"].endswith("index_order")
    assert not post_save.has_listeners(Order)


def _failing(is_async: bool):  # type: ignore[no-untyped-def]
    if is_async:

        async def fails(sender, **kwargs):
            raise ConnectionError("down")

        return fails

    def fails_sync(sender, **kwargs):
        raise ConnectionError("down")

    return fails_sync


VERBS = {  # each gives the responses
    "send": lambda signal: [r for _, r in signal.send(sender=None)],
    "send_robust": lambda signal: [r for _, r in signal.send_robust(sender=None)],
    "asend": lambda signal: [r for _, r in asyncio.run(signal.asend(sender=None))],
    "send_sync": lambda signal: signal.send_sync(sender=None).values(),
    "collect": lambda signal: signal.collect(sender=None).values(),
    "collect_async": lambda signal: asyncio.run(signal.collect_async(sender=None)).values(),
}


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("ordered", [False, True], ids=["plain", "ordered"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_the_on_error_setting_applies_to_a_receiver_without_options_under_every_verb(
    verb, ordered, is_async
) -> None:
    signal = Signal(ordered=ordered, name="tests.django_signals.on_error")
    fails = _failing(is_async)
    receiver(signal)(fails)
    with override_settings(PATCHBOARD={"ON_ERROR": "log"}):
        assert VERBS[verb](signal) == [None]  # the default stands in
    with pytest.raises(ConnectionError):
        VERBS[verb.replace("_robust", "")](signal)


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


@pytest.mark.parametrize("options", [{}, {"priority": 1}, {"on_error": "log", "timeout": 5}])
def test_djangos_responses_can_be_looked_up_by_the_receiver_function(options) -> None:
    """
    Django's verbs pair each response with the receiver they called, here
    patchboard's wrapper: it equals the function, so the idioms of Django's
    own docs work (``dict(signal.send(...))[receiver]``).
    """
    signal = DjangoSignal()

    @receiver(signal, weak=False, **options)
    def quote(sender, **kwargs):
        return 42

    [(called, response)] = signal.send(sender=None)
    assert response == 42
    assert called == quote and quote == called
    assert dict(signal.send(sender=None))[quote] == 42
    assert quote in [r for r, _ in signal.send_robust(sender=None)]
    assert dict(asyncio.run(signal.asend(sender=None)))[quote] == 42
    assert called != (lambda sender, **kwargs: 42)
    signal.disconnect(quote)


@pytest.mark.parametrize("options", [{}, {"on_error": "log"}])
def test_djangos_send_hands_the_wrapped_function_its_sender_and_arguments(options) -> None:
    # Without options the wrapper calls the function as Django would; with them, through
    # a dispatch of its own: either way the function sees what the sender sent.
    signal = DjangoSignal()
    seen = []

    @receiver(signal, weak=False, **options)
    def quote(signal, sender, **kwargs):
        seen.append((signal, sender, kwargs))

    signal.send(sender=Order, cart=3)
    assert seen == [(signal, Order, {"cart": 3})]
