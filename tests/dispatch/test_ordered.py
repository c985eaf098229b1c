"""Ordered signals: side effects one at a time, highest priority first."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal as DjangoSignal
from django.test import override_settings

from patchboard import Signal, receiver


def _ordered_signal_with_log() -> tuple[Signal, list[str], dict[str, int]]:
    paid = Signal(ordered=True, name="order_paid")
    calls: list[str] = []
    active = {"now": 0, "max": 0}

    async def track(name: str) -> None:
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        await asyncio.sleep(0.01)
        calls.append(name)
        active["now"] -= 1

    @receiver(paid, priority=10)
    async def ship(sender, **kwargs):
        await track("ship")

    @receiver(paid, priority=100)
    async def reserve_stock(sender, **kwargs):
        await track("reserve_stock")

    @receiver(paid)
    def email(sender, **kwargs):
        calls.append("email")

    @receiver(paid, priority=10)
    async def invoice(sender, **kwargs):
        await track("invoice")

    paid._keep = (ship, reserve_stock, email, invoice)  # type: ignore[attr-defined]
    return paid, calls, active


@pytest.mark.parametrize("verb", ["send_async", "collect_async"])
async def test_listeners_run_one_at_a_time_by_priority_ties_in_connect_order(verb) -> None:
    paid, calls, active = _ordered_signal_with_log()

    collected = await getattr(paid, verb)(sender=None)

    assert calls == ["reserve_stock", "ship", "invoice", "email"]
    assert active["max"] == 1
    assert [o.receiver.__name__ for o in collected] == calls


def test_sync_twin_keeps_the_order() -> None:
    paid, calls, active = _ordered_signal_with_log()

    paid.send_sync(sender=None)

    assert calls == ["reserve_stock", "ship", "invoice", "email"]
    assert active["max"] == 1


def test_djangos_send_on_an_ordered_signal_keeps_the_order() -> None:
    paid, calls, active = _ordered_signal_with_log()

    responses = paid.send(sender=None)

    assert calls == ["reserve_stock", "ship", "invoice", "email"]
    assert active["max"] == 1
    assert len(responses) == 4


async def test_djangos_asend_on_an_ordered_signal_keeps_the_order() -> None:
    paid, calls, active = _ordered_signal_with_log()

    await paid.asend(sender=None)

    assert calls == ["reserve_stock", "ship", "invoice", "email"]
    assert active["max"] == 1


async def test_a_raising_listener_stops_the_chain() -> None:
    paid = Signal(ordered=True)
    calls = []

    @receiver(paid, priority=2)
    async def first(sender, **kwargs):
        calls.append("first")
        raise ValueError("stock")

    @receiver(paid, priority=1)
    async def second(sender, **kwargs):
        calls.append("second")

    with pytest.raises(ValueError, match="stock"):
        await paid.send_async(sender=None)
    assert calls == ["first"]


async def test_a_logged_error_does_not_stop_the_chain() -> None:
    paid = Signal(ordered=True)
    calls = []

    @receiver(paid, priority=2, on_error="log", default="skipped")
    async def first(sender, **kwargs):
        raise ValueError("stock")

    @receiver(paid, priority=1)
    async def second(sender, **kwargs):
        calls.append("second")
        return "done"

    collected = await paid.collect_async(sender=None)

    assert collected.values() == ["skipped", "done"]
    assert calls == ["second"]


def test_background_listener_on_an_ordered_signal_is_refused_at_connect() -> None:
    paid = Signal(ordered=True)

    with pytest.raises(ImproperlyConfigured, match="ordered signal"):

        @receiver(paid, mode="background")
        def receipt(sender, **kwargs): ...


async def test_queue_true_on_an_ordered_signal_is_refused() -> None:
    paid = Signal(ordered=True)

    @receiver(paid)
    async def listener(sender, **kwargs): ...

    with pytest.raises(ImproperlyConfigured, match=r"^queue=True: an ordered signal runs its"):
        await paid.collect_async(sender=None, queue=True)


def test_a_listener_connected_again_after_a_disconnect_takes_its_new_priority() -> None:
    paid = Signal(ordered=True)

    def first(sender, **kwargs):
        return "first"

    def second(sender, **kwargs):
        return "second"

    paid.connect(first, priority=5)
    paid.connect(second, priority=1)
    assert paid.collect(sender=None).values() == ["first", "second"]
    assert paid.disconnect(first)
    paid.connect(first)  # priority 0 now

    assert paid.collect(sender=None).values() == ["second", "first"]


def test_priorities_order_sync_listeners_of_a_plain_signal_under_djangos_send() -> None:
    plain = Signal()
    calls = []

    @receiver(plain)
    def low(sender, **kwargs):
        calls.append("low")

    @receiver(plain, priority=5)
    def high(sender, **kwargs):
        calls.append("high")

    plain.send(sender=None)
    assert calls == ["high", "low"]
    calls.clear()
    plain.collect(sender=None)
    assert calls == ["high", "low"]


class _DispatchMidConnect(list):  # type: ignore[type-arg]
    """
    A receivers list that lets a dispatch run while ``connect`` reorders it,
    as another thread may: every sort or full iteration first resolves the
    signal's listeners (and so caches them, as a dispatch does).
    """

    def __init__(self, signal: Signal, entries: list) -> None:  # type: ignore[type-arg]
        super().__init__(entries)
        self.signal = signal
        self.busy = False

    def _dispatch(self) -> None:
        if not self.busy:
            self.busy = True
            try:
                self.signal.listeners(None)
            finally:
                self.busy = False

    def sort(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def, override]
        self._dispatch()
        super().sort(*args, **kwargs)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self._dispatch()
        return super().__iter__()


def test_a_dispatch_during_connect_never_caches_an_unsorted_order() -> None:
    """Regression: the cache kept ['low', 'high'] for good after a racing dispatch."""
    signal = Signal(name="tests.ordered.race")

    def low(sender, **kwargs):
        return "low"

    def high(sender, **kwargs):
        return "high"

    signal.connect(low, weak=False)
    signal.receivers = _DispatchMidConnect(signal, signal.receivers)
    signal.connect(high, weak=False, priority=10)

    assert [listener.receiver for listener in signal.listeners(None)] == [high, low]
    assert signal.collect(None).values() == ["high", "low"]


def test_the_sync_twin_runs_timed_listeners_of_an_ordered_signal_one_at_a_time() -> None:
    """Regression: collect() started an ordered signal's timed sync listeners together."""
    import threading

    signal = Signal(ordered=True, name="tests.ordered.timed")
    b_started = threading.Event()
    overlapped: list[bool] = []

    def first(sender, **kwargs):
        overlapped.append(b_started.wait(0.2))  # True only if second ran meanwhile
        return "first"

    def second(sender, **kwargs):
        b_started.set()
        return "second"

    signal.connect(first, weak=False, priority=2, timeout=5)
    signal.connect(second, weak=False, priority=1, timeout=5)

    assert signal.collect(sender=None).values() == ["first", "second"]
    assert overlapped == [False]


@pytest.mark.parametrize("ordered", [False, True], ids=["plain", "ordered"])
def test_priorities_hold_after_factory_boys_mute_signals(ordered) -> None:
    """
    Regression: a listener connected with a priority while the signal was
    muted ran last once factory_boy put the saved receivers back in front.
    """
    mute_signals = pytest.importorskip("factory.django").mute_signals
    signal = Signal(ordered=ordered, name="tests.ordered.muted")
    calls: list[str] = []

    def low(sender, **kwargs):
        calls.append("low")

    def high(sender, **kwargs):
        calls.append("high")

    signal.connect(low, weak=False)
    with mute_signals(signal):
        signal.connect(high, weak=False, priority=100)
        signal.send(sender=None)
        assert calls == ["high"]  # muted: only what was connected meanwhile

    calls.clear()
    signal.send(sender=None)
    assert calls == ["high", "low"]
    calls.clear()
    signal.collect(sender=None)
    assert calls == ["high", "low"]


def _failing_then_answering(signal: DjangoSignal) -> tuple[list[str], Any, Any]:
    """Two receivers connected bare: a sync one that raises, then an async one that answers."""
    calls: list[str] = []

    def fails(sender, **kwargs):
        calls.append("fails")
        raise ValueError("stock")

    async def answers(sender, **kwargs):
        calls.append("answers")
        return "answer"

    signal.connect(fails, weak=False)
    signal.connect(answers, weak=False)
    return calls, fails, answers


_AS_DJANGO = pytest.mark.parametrize(
    "make", [lambda: Signal(ordered=True), DjangoSignal], ids=["ordered", "django"]
)

# Django 5.2's and 6.0's asend() start the async receivers alongside the sync ones
# (in their thread), so their own calls interleave; Django 6.1 runs the sync ones
# first. An ordered signal runs them one at a time, by priority, on all three.
_ASEND_INTERLEAVES = django.VERSION < (6, 1)


@_AS_DJANGO
def test_djangos_send_on_an_ordered_signal_lets_an_error_through_as_django_does(make) -> None:
    signal = make()
    calls, _, _ = _failing_then_answering(signal)

    with pytest.raises(ValueError, match="stock"):
        signal.send(sender=None)
    assert calls == ["fails"]


@_AS_DJANGO
async def test_djangos_asend_on_an_ordered_signal_lets_an_error_through_as_django_does(
    make,
) -> None:
    signal = make()
    calls, _, _ = _failing_then_answering(signal)

    with pytest.raises(ValueError, match="stock"):
        await signal.asend(sender=None)
    if _ASEND_INTERLEAVES and not isinstance(signal, Signal):
        assert "fails" in calls  # the async receiver may have run meanwhile
    else:
        assert calls == ["fails"]


@_AS_DJANGO
def test_djangos_send_robust_on_an_ordered_signal_returns_and_logs_errors_as_django_does(
    make, caplog: pytest.LogCaptureFixture
) -> None:
    signal = make()
    calls, fails, answers = _failing_then_answering(signal)

    with caplog.at_level(logging.ERROR, logger="django.dispatch"):
        responses = signal.send_robust(sender=None)

    assert calls == ["fails", "answers"]
    assert [receiver for receiver, _ in responses] == [fails, answers]
    assert responses[0][0] is fails and responses[1][0] is answers  # the functions themselves
    error, answer = (response for _, response in responses)
    assert isinstance(error, ValueError) and answer == "answer"
    assert [record.exc_info[1] for record in caplog.records if record.exc_info] == [error]


@_AS_DJANGO
async def test_djangos_asend_robust_on_an_ordered_signal_returns_and_logs_errors_as_django_does(
    make, caplog: pytest.LogCaptureFixture
) -> None:
    signal = make()
    calls, fails, answers = _failing_then_answering(signal)

    with caplog.at_level(logging.ERROR, logger="django.dispatch"):
        responses = await signal.asend_robust(sender=None)

    if _ASEND_INTERLEAVES and not isinstance(signal, Signal):
        assert sorted(calls) == ["answers", "fails"]  # in either order
    else:
        assert calls == ["fails", "answers"]
    assert responses[0][0] is fails and responses[1][0] is answers
    error, answer = (response for _, response in responses)
    assert isinstance(error, ValueError) and answer == "answer"
    assert [record.exc_info[1] for record in caplog.records if record.exc_info] == [error]


@pytest.mark.parametrize("verb", ["send", "send_robust"])
def test_djangos_verbs_on_an_ordered_signal_apply_a_listeners_options(verb) -> None:
    """A listener with options runs through them: its on_error and default hold."""
    signal = Signal(ordered=True)

    def fails(sender, **kwargs):
        raise ValueError("stock")

    signal.connect(fails, weak=False, on_error="log", default="skipped")

    [(receiver, response)] = getattr(signal, verb)(sender=None)
    assert response == "skipped"
    assert receiver is not fails and receiver.receiver is fails  # its Listener


@override_settings(PATCHBOARD={"ON_ERROR": "log"})
async def test_djangos_asend_on_an_ordered_signal_logs_bare_errors_when_on_error_is_log() -> None:
    """With ON_ERROR="log", a bare listener's error is logged and the chain goes on."""
    signal = Signal(ordered=True)
    calls, _, _ = _failing_then_answering(signal)

    responses = await signal.asend(sender=None)

    assert calls == ["fails", "answers"]
    assert [response for _, response in responses] == [None, "answer"]
