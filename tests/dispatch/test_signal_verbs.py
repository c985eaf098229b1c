"""
Every verb of a ``patchboard.Signal`` (its own, with and without a deadline or
the short-term queue, the stream, and Django's on an ordered signal) hands
each listener the dispatch's signal, sender and arguments, and reports the
dispatch to observers under that signal and sender.

(tests/dispatch/test_listener_inputs.py pins every *path* a call can take; this
file pins every *verb*, each argument of which a verb passes on by hand.)
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import AsyncToSync, async_to_sync
from django.test import override_settings

from patchboard import Listener, ListenerOptions, Signal, queue_stats
from patchboard.testing import capture_dispatches


class Shop:
    """The sender (never None here)."""


KWARGS: dict[str, Any] = {"order": 7, "note": None}


def _recording(signal: Signal, received: list[tuple[Any, Any, dict[str, Any]]]) -> None:
    def sync_listener(signal: Any, sender: Any, **kwargs: Any) -> str:
        received.append((signal, sender, kwargs))
        return "sync"

    async def async_listener(signal: Any, sender: Any, **kwargs: Any) -> str:
        received.append((signal, sender, kwargs))
        return "async"

    signal.connect(sync_listener, weak=False)
    signal.connect(async_listener, weak=False)


async def _streamed(signal: Signal, **options: Any) -> list[Any]:
    async with signal.stream_async(**options) as stream:
        return [outcome.value async for outcome in stream]


VERBS: dict[str, Callable[[Signal], Any]] = {
    "collect": lambda s: s.collect(sender=Shop, **KWARGS).values(),
    "send_sync": lambda s: s.send_sync(sender=Shop, **KWARGS).values(),
    "collect deadline": lambda s: s.collect(sender=Shop, deadline=30, **KWARGS).values(),
    "send_sync deadline": lambda s: s.send_sync(sender=Shop, deadline=30, **KWARGS).values(),
    "collect_async": lambda s: async_to_sync(s.collect_async)(sender=Shop, **KWARGS).values(),
    "send_async": lambda s: async_to_sync(s.send_async)(sender=Shop, **KWARGS).values(),
    "collect_async deadline": lambda s: async_to_sync(s.collect_async)(
        sender=Shop, deadline=30, **KWARGS
    ).values(),
    "send_async deadline": lambda s: async_to_sync(s.send_async)(
        sender=Shop, deadline=30, **KWARGS
    ).values(),
    "stream_async": lambda s: async_to_sync(_streamed)(s, sender=Shop, **KWARGS),
}


@pytest.mark.parametrize("ordered", [False, True], ids=["concurrent", "ordered"])
@pytest.mark.parametrize("verb", list(VERBS))
def test_each_verb_hands_its_listeners_the_dispatch_and_reports_it(
    verb: str, ordered: bool
) -> None:
    signal = Signal(ordered=ordered, name="tests.verbs")
    received: list[tuple[Any, Any, dict[str, Any]]] = []
    _recording(signal, received)

    with capture_dispatches() as dispatches:
        responses = VERBS[verb](signal)

    assert sorted(responses) == ["async", "sync"]
    assert received == [(signal, Shop, KWARGS)] * 2
    [dispatch] = dispatches
    assert (dispatch.signal, dispatch.sender) == (signal, Shop)
    assert sorted(dispatch.statuses()) == ["ok", "ok"]


@pytest.mark.parametrize("deadline", [None, 30], ids=["no deadline", "deadline"])
@pytest.mark.parametrize("verb", ["collect_async", "stream_async"])
def test_queue_true_sends_every_call_through_the_queue(verb: str, deadline: float | None) -> None:
    signal = Signal(name="tests.verbs.queue")
    received: list[tuple[Any, Any, dict[str, Any]]] = []
    _recording(signal, received)

    if verb == "stream_async":
        async_to_sync(_streamed)(signal, sender=Shop, queue=True, deadline=deadline, **KWARGS)
    else:
        async_to_sync(signal.collect_async)(sender=Shop, queue=True, deadline=deadline, **KWARGS)

    assert received == [(signal, Shop, KWARGS)] * 2
    assert queue_stats().submitted == 2


@pytest.mark.parametrize(("threshold", "queued"), [(2, 0), (1, 2)], ids=["at", "above"])
def test_a_collect_uses_the_queue_with_more_listeners_than_its_threshold(
    threshold: int, queued: int
) -> None:
    signal = Signal(name="tests.verbs.auto")
    received: list[tuple[Any, Any, dict[str, Any]]] = []
    _recording(signal, received)

    with override_settings(PATCHBOARD={"COLLECT_QUEUE_THRESHOLD": threshold}):
        collected = async_to_sync(signal.collect_async)(sender=Shop, **KWARGS)
        submitted = queue_stats().submitted

    assert collected.values() == ["sync", "async"]
    assert received == [(signal, Shop, KWARGS)] * 2
    assert submitted == queued


@pytest.mark.parametrize("verb", ["send", "send_robust", "asend", "asend_robust"])
@pytest.mark.parametrize("options", [{}, {"on_error": "log"}], ids=["bare", "with options"])
def test_djangos_verbs_on_an_ordered_signal_hand_each_listener_the_dispatch(
    verb: str, options: dict[str, Any]
) -> None:
    signal = Signal(ordered=True, name="tests.verbs.django")
    received: list[tuple[Any, Any, dict[str, Any]]] = []

    def sync_listener(signal: Any, sender: Any, **kwargs: Any) -> str:
        received.append((signal, sender, kwargs))
        return "sync"

    async def async_listener(signal: Any, sender: Any, **kwargs: Any) -> str:
        received.append((signal, sender, kwargs))
        return "async"

    signal.connect(sync_listener, sender=Shop, weak=False, **options)
    signal.connect(async_listener, sender=Shop, weak=False, **options)
    send = getattr(signal, verb)
    if verb.startswith("a"):
        send = async_to_sync(send)

    responses = send(sender=Shop, **KWARGS)

    assert [response for _, response in responses] == ["sync", "async"]
    assert received == [(signal, Shop, KWARGS)] * 2


def test_a_new_receivers_list_is_used_at_the_next_dispatch() -> None:
    """Whoever replaces the list (factory_boy does) is heard, even with as many entries."""
    signal = Signal(name="tests.verbs.replaced")
    other = Signal(name="tests.verbs.other")
    signal.connect(lambda sender, **kwargs: "old", weak=False)
    other.connect(lambda sender, **kwargs: "new", weak=False)
    assert signal.collect(sender=None).values() == ["old"]

    signal.receivers = list(other.receivers)

    assert signal.collect(sender=None).values() == ["new"]


def test_a_listener_disconnected_after_another_connected_is_not_called() -> None:
    signal = Signal(name="tests.verbs.disconnect")

    def first(sender: Any, **kwargs: Any) -> str:
        return "first"

    def second(sender: Any, **kwargs: Any) -> str:
        return "second"

    signal.connect(first, weak=False)
    assert signal.collect(sender=None).values() == ["first"]
    signal.connect(second, weak=False)
    assert signal.disconnect(first)

    assert signal.collect(sender=None).values() == ["second"]


def test_a_listener_whose_function_died_is_skipped_and_the_others_run() -> None:
    signal = Signal(name="tests.verbs.dead")

    def doomed(sender: Any, **kwargs: Any) -> str:
        return "doomed"

    def after(sender: Any, **kwargs: Any) -> str:
        return "after"

    # A Listener held by the signal, its function only weakly: the function may die first.
    held = Listener(doomed, ListenerOptions(on_error="log"), weak=True)
    signal.connect(held, weak=False)
    signal.connect(after, weak=False)
    del doomed
    gc.collect()

    assert held.receiver is None
    assert signal.collect(sender=None).values() == ["after"]


@pytest.mark.parametrize("deadline", [None, 30], ids=["no deadline", "deadline"])
def test_the_sync_twins_need_no_event_loop_for_threads_and_background(
    monkeypatch, settings, deadline: float | None
) -> None:
    """Background listeners (async ones too) and timed sync ones run without a loop."""
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy"}}  # kept, not run here
    loops: list[Any] = []
    original = AsyncToSync.__call__
    monkeypatch.setattr(
        AsyncToSync, "__call__", lambda self, *a, **k: loops.append(self) or original(self, *a, **k)
    )
    signal = Signal(name="tests.verbs.loopless")
    where: list[int] = []

    def timed(sender: Any, **kwargs: Any) -> str:
        where.append(threading.get_ident())
        return "timed"

    signal.connect(timed, weak=False, timeout=30)
    signal.connect(_enqueued, weak=False, mode="background")

    collected = signal.collect(sender=None, deadline=deadline)

    assert [o.status for o in collected] == ["ok", "enqueued"]
    assert loops == []
    assert where and where[0] != threading.get_ident()


async def _enqueued(sender: Any, **kwargs: Any) -> None:
    """A background listener (module level, so a worker can find it); async, which a sync
    caller could not run without a loop, were it not enqueued."""


def test_a_signals_repr_says_what_it_is() -> None:
    plain = Signal(name="tests.verbs.repr")
    ordered = Signal(ordered=True, name="tests.verbs.repr_ordered")
    plain.connect(lambda sender, **kwargs: None, weak=False)
    assert repr(plain) == "<Signal tests.verbs.repr with 1 receivers>"
    assert repr(ordered) == "<ordered Signal tests.verbs.repr_ordered with 0 receivers>"


@pytest.mark.parametrize("verb", ["collect", "send_sync"])
@pytest.mark.parametrize("deadline", [None, 30], ids=["no deadline", "deadline"])
def test_the_sync_twins_without_a_loop_hand_listeners_the_dispatch_and_report_it(
    verb: str, deadline: float | None
) -> None:
    """Sync listeners only, one in a listener thread: the sync twins' path without a loop."""
    signal = Signal(name="tests.verbs.loopless_inputs")
    received: list[tuple[Any, Any, dict[str, Any]]] = []

    def here(signal: Any, sender: Any, **kwargs: Any) -> str:
        received.append((signal, sender, kwargs))
        return "here"

    def threaded(signal: Any, sender: Any, **kwargs: Any) -> str:
        received.append((signal, sender, kwargs))
        return "threaded"

    signal.connect(here, weak=False)
    signal.connect(threaded, weak=False, timeout=30)

    with capture_dispatches() as dispatches:
        collected = getattr(signal, verb)(sender=Shop, deadline=deadline, **KWARGS)

    assert collected.values() == ["here", "threaded"]
    assert received == [(signal, Shop, KWARGS)] * 2
    [dispatch] = dispatches
    assert (dispatch.signal, dispatch.sender) == (signal, Shop)


@pytest.mark.parametrize("verb", ["collect", "send_sync"])
def test_the_sync_twins_without_a_loop_keep_their_deadline(verb: str) -> None:
    signal = Signal(name="tests.verbs.loopless_deadline")
    release = threading.Event()

    def stuck(sender: Any, **kwargs: Any) -> str:
        release.wait(30)
        return "late"

    signal.connect(stuck, weak=False, on_error="log")
    try:
        collected = getattr(signal, verb)(sender=None, deadline=0.05)
    finally:
        release.set()

    assert [o.status for o in collected] == ["timeout"]
    assert collected.deadline_hit


@pytest.mark.parametrize("verb", ["collect", "collect_async"])
def test_without_arguments_a_listener_gets_the_signal_and_the_sender(verb: str) -> None:
    """The path of a dispatch with no keyword arguments (no names to spell)."""
    signal = Signal(name=f"tests.verbs.bare.{verb}")
    received: list[tuple[Any, Any, dict[str, Any]]] = []
    _recording(signal, received)

    collect = getattr(signal, verb)
    values = (async_to_sync(collect) if verb.endswith("async") else collect)(sender=Shop).values()

    assert sorted(values) == ["async", "sync"]
    assert received == [(signal, Shop, {}), (signal, Shop, {})]
