"""
What each listener receives: the dispatch's ``signal``, ``sender`` and keyword
arguments, exactly, on every path a call can take.

Every path builds the call in its own place (the async fast path, the
thread-sensitive batch, a worker thread, a time limit, the short-term queue,
an ordered signal, the sync twins with and without an event loop, Django's own
verbs, a background task), so each is pinned here: a path that passed
``sender=None``, dropped a keyword argument or handed a listener another
signal would fail below. Listeners are sync and async where both apply.

Internal on purpose: ``Call``, run by hand, for the path only the short-term
queue and the breaker take (the verbs batch plain listeners instead).
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.dispatch import Signal as DjangoSignal

from patchboard import (
    CircuitBreaker,
    CircuitOpen,
    Listener,
    ListenerOptions,
    Signal,
    queue_stats,
    receiver,
)
from patchboard._call import Call
from patchboard.testing import capture_dispatches
from tests.background.test_background import run_pending


class Shop:
    """The sender: a class, as Django's senders usually are (never None here)."""


KWARGS: dict[str, Any] = {"order": 7, "lines": ["tea", "cups"], "note": None, "paid": False}
KINDS = ["sync", "async"]


class Inbox:
    """What listeners received, by listener name, from any thread."""

    def __init__(self) -> None:
        self.received: dict[str, list[tuple[Any, Any, dict[str, Any]]]] = {}
        self.threads: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, name: str, signal: Any, sender: Any, kwargs: dict[str, Any]) -> str:
        with self._lock:
            self.received.setdefault(name, []).append((signal, sender, kwargs))
            self.threads[name] = threading.get_ident()
        return f"{name} done"

    def listener(self, kind: str, name: str | None = None) -> Callable[..., Any]:
        """A listener of ``kind`` ("sync" or "async") that records what it gets."""
        name = name or kind
        if kind == "sync":

            def sync_listener(signal: Any, sender: Any, **kwargs: Any) -> str:
                return self.record(name, signal, sender, kwargs)

            return sync_listener

        async def async_listener(signal: Any, sender: Any, **kwargs: Any) -> str:
            return self.record(name, signal, sender, kwargs)

        return async_listener

    def assert_each_got(self, signal: Any, names: list[str]) -> None:
        """Each named listener was called once, with exactly the dispatch's arguments."""
        assert sorted(self.received) == sorted(names)
        for name in names:
            [(got_signal, got_sender, got_kwargs)] = self.received[name]
            assert got_signal is signal, name
            assert got_sender is Shop, name
            assert got_kwargs == KWARGS, name


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    sent = copy.deepcopy(KWARGS)
    yield Inbox()
    assert sent == KWARGS, "a listener's kwargs are its own: the sender's are unchanged"


def connect_each(
    signal: Any, inbox: Inbox, kinds: list[str], **options: Any
) -> list[Callable[..., Any]]:
    """Connect one recording listener per kind (strongly held), with ``options``."""
    funcs = [inbox.listener(kind) for kind in kinds]
    for func in funcs:
        receiver(signal, weak=False, **options)(func)
    return funcs


def values(collected: Any, funcs: list[Callable[..., Any]], kinds: list[str]) -> None:
    """Each listener's outcome: ok, its value, and the function itself as the receiver."""
    assert collected.errors() == {}
    assert [(o.receiver, o.status, o.value) for o in collected] == [
        (func, "ok", f"{kind} done") for func, kind in zip(funcs, kinds, strict=True)
    ]


# Options that send a call down each path (``plain``: the fast path, no Call object).
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "on_error": {"on_error": "log", "default": "stood in"},
    "timeout": {"timeout": 30},
    "worker_thread": {"thread_sensitive": False},
    "breaker": {"breaker": "tests.inputs"},
}
COMPANIES = [["async"], ["sync"], ["sync", "async"], ["async", "sync"]]


def options_for(name: str) -> dict[str, Any]:
    if name == "breaker":
        CircuitBreaker("tests.inputs", store="memory")
    return OPTIONS[name]


# -- the async verbs ---------------------------------------------------------------------


@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("kinds", COMPANIES, ids="+".join)
@pytest.mark.parametrize("verb", ["collect_async", "send_async"])
async def test_async_verbs_hand_each_listener_the_dispatch(
    inbox: Inbox, verb: str, kinds: list[str], options: str
) -> None:
    signal = Signal(name="tests.inputs.async_verbs")
    funcs = connect_each(signal, inbox, kinds, **options_for(options))

    collected = await getattr(signal, verb)(sender=Shop, **KWARGS)

    values(collected, funcs, kinds)
    inbox.assert_each_got(signal, kinds)


@pytest.mark.parametrize("options", ["plain", "timeout", "worker_thread"])
@pytest.mark.parametrize("kinds", COMPANIES, ids="+".join)
async def test_the_short_term_queue_hands_each_listener_the_dispatch(
    inbox: Inbox, kinds: list[str], options: str
) -> None:
    signal = Signal(name="tests.inputs.queue")
    funcs = connect_each(signal, inbox, kinds, **options_for(options))

    collected = await signal.collect_async(sender=Shop, queue=True, **KWARGS)

    values(collected, funcs, kinds)
    inbox.assert_each_got(signal, kinds)
    stats = queue_stats()
    assert (stats.submitted, stats.completed) == (len(kinds), len(kinds)), "all went through it"


async def test_through_the_queue_a_stopped_dispatch_still_raises_its_error() -> None:
    """An error that must propagate cancels the calls after it; the error reaches the caller."""
    signal = Signal(name="tests.inputs.queue_stop")

    async def broken(sender: Any, **kwargs: Any) -> None:
        raise LookupError("no rate")

    async def slow(sender: Any, **kwargs: Any) -> None:
        await asyncio.sleep(3600)

    signal.connect(broken, weak=False, on_error="raise")
    signal.connect(slow, weak=False)

    with pytest.raises(LookupError, match="no rate"):
        await signal.collect_async(sender=Shop, queue=True)
    assert queue_stats().cancelled == 1


# Keyword names a listener must get as sent: none, names the fast path cannot
# spell in a call (a Python keyword, not an identifier), identifiers Python's
# compiler would rewrite (NFKC: the micro sign becomes a Greek mu, a ligature two
# letters; found by Hypothesis through a background payload), names of its own
# parameters, and the same names in another order.
NAMED: dict[str, list[dict[str, Any]]] = {
    "none": [{}],
    "unspellable": [{"class": "a", "two words": "b", "order": 1}],
    "a_keyword_alone": [{"class": "a"}, {"lambda": 1, "order": 2}],
    "not_normalized": [{"\u00b5": 1, "\ufb01le": 2, "ok": 3}],
    "own_names": [{"a": 1, "func": 2, "apply": 3}],
    "reordered": [{"x": 1, "y": 2}, {"y": 3, "x": 4}],
}


@pytest.mark.parametrize("named", list(NAMED))
@pytest.mark.parametrize("verb", ["collect", "send_sync", "collect_async", "send_async"])
def test_plain_listeners_get_the_keyword_arguments_as_sent(verb: str, named: str) -> None:
    signal = Signal(name="tests.inputs.named")
    got: list[tuple[str, dict[str, Any]]] = []

    def sync_listener(signal: Any, sender: Any, **kwargs: Any) -> None:
        got.append(("sync", kwargs))

    async def async_listener(signal: Any, sender: Any, **kwargs: Any) -> None:
        got.append(("async", kwargs))

    signal.connect(sync_listener, weak=False)
    signal.connect(async_listener, weak=False)
    for kwargs in NAMED[named]:
        got.clear()
        run = getattr(signal, verb)
        if verb.endswith("async"):
            asyncio.run(run(sender=Shop, **kwargs))
        else:
            run(sender=Shop, **kwargs)
        assert sorted(got, key=lambda each: each[0]) == [("async", kwargs), ("sync", kwargs)]


# -- the sync twins ----------------------------------------------------------------------


@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("kinds", COMPANIES, ids="+".join)
@pytest.mark.parametrize("verb", ["collect", "send_sync"])
def test_the_sync_twins_hand_each_listener_the_dispatch(
    inbox: Inbox, verb: str, kinds: list[str], options: str
) -> None:
    signal = Signal(name="tests.inputs.sync_twins")
    funcs = connect_each(signal, inbox, kinds, **options_for(options))

    collected = getattr(signal, verb)(sender=Shop, **KWARGS)

    values(collected, funcs, kinds)
    inbox.assert_each_got(signal, kinds)


@pytest.mark.parametrize("options", ["plain", "breaker"])
def test_the_sync_twins_run_batchable_sync_listeners_in_the_calling_thread(
    inbox: Inbox, options: str
) -> None:
    """``run_here``: plain listeners called directly, the others through their Call."""
    signal = Signal(name="tests.inputs.run_here")
    receiver(signal, weak=False, **options_for(options))(inbox.listener("sync", "first"))
    receiver(signal, weak=False)(inbox.listener("sync", "second"))

    collected = signal.collect(sender=Shop, **KWARGS)

    assert collected.values() == ["first done", "second done"]
    inbox.assert_each_got(signal, ["first", "second"])
    assert inbox.threads == dict.fromkeys(["first", "second"], threading.get_ident())


@pytest.mark.parametrize("options", ["timeout", "worker_thread"])
def test_the_sync_twins_without_a_loop_hand_threaded_listeners_the_dispatch(
    inbox: Inbox, options: str
) -> None:
    """``run_without_loop``: the threaded listener runs in a listener thread, the others here."""
    signal = Signal(name="tests.inputs.run_without_loop")
    receiver(signal, weak=False)(inbox.listener("sync", "here"))
    receiver(signal, weak=False, **options_for(options))(inbox.listener("sync", "threaded"))
    receiver(signal, weak=False)(inbox.listener("sync", "here too"))

    collected = signal.collect(sender=Shop, **KWARGS)

    assert collected.values() == ["here done", "threaded done", "here too done"]
    inbox.assert_each_got(signal, ["here", "threaded", "here too"])
    caller = threading.get_ident()
    assert inbox.threads["here"] == inbox.threads["here too"] == caller
    assert inbox.threads["threaded"] != caller


@pytest.mark.parametrize("kinds", [["sync"], ["async"], ["sync", "async", "sync"]], ids="+".join)
@pytest.mark.parametrize("verb", ["collect_async", "collect"])
def test_an_ordered_signal_hands_each_listener_the_dispatch(
    inbox: Inbox, verb: str, kinds: list[str]
) -> None:
    """Sync listeners in a row share one batch; a timed one runs in a thread of its own."""
    signal = Signal(ordered=True, name="tests.inputs.ordered")
    names = [f"{kind}{i}" for i, kind in enumerate(kinds)]
    for kind, name in zip(kinds, names, strict=True):
        receiver(signal, weak=False)(inbox.listener(kind, name))
    receiver(signal, weak=False, timeout=30)(inbox.listener("sync", "timed"))

    send = getattr(signal, verb)
    collected = (async_to_sync(send) if verb.endswith("async") else send)(sender=Shop, **KWARGS)

    assert collected.values() == [f"{name} done" for name in [*names, "timed"]]
    inbox.assert_each_got(signal, [*names, "timed"])


# -- Django's own verbs ------------------------------------------------------------------


@pytest.mark.parametrize("options", ["on_error", "timeout", "worker_thread", "breaker"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("verb", ["send", "send_robust", "asend", "asend_robust"])
def test_djangos_verbs_hand_a_patchboard_listener_the_dispatch(
    inbox: Inbox, verb: str, kind: str, options: str
) -> None:
    """A Listener connected to a plain Django signal, called by Django's send()/asend()."""
    signal = DjangoSignal()
    connect_each(signal, inbox, [kind], **options_for(options))

    send = getattr(signal, verb)
    if verb.startswith("a"):
        send = async_to_sync(send)
    [(_, response)] = send(sender=Shop, **KWARGS)

    assert response == f"{kind} done"
    inbox.assert_each_got(signal, [kind])


# -- fallbacks ---------------------------------------------------------------------------


@pytest.mark.parametrize("fallback_kind", KINDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("verb", ["collect_async", "collect"])
def test_a_fallback_gets_the_dispatch_of_the_call_that_never_ran(
    inbox: Inbox, verb: str, kind: str, fallback_kind: str
) -> None:
    """An open circuit: the listener is never called, its fallback is, with its arguments."""
    signal = Signal(name="tests.inputs.fallback")
    CircuitBreaker("tests.inputs", store="memory").force_open()
    fallback = inbox.listener(fallback_kind, "fallback")
    receiver(signal, weak=False, breaker="tests.inputs", fallback=fallback)(inbox.listener(kind))

    send = getattr(signal, verb)
    collected = (async_to_sync(send) if verb.endswith("async") else send)(sender=Shop, **KWARGS)

    assert [(o.status, o.value) for o in collected] == [("circuit_open", "fallback done")]
    inbox.assert_each_got(signal, ["fallback"])


# -- a listener that must propagate, followed by others --------------------------------


def raising(inbox: Inbox, name: str) -> Callable[..., Any]:
    def listener(signal: Any, sender: Any, **kwargs: Any) -> None:
        inbox.record(name, signal, sender, kwargs)
        raise LookupError(name)

    return listener


def batch_with_a_raise(signal: Any, inbox: Inbox, *, async_first: bool) -> None:
    """sync ok, sync raising ("raise" policy), then two sync listeners that must not run."""
    if async_first:
        receiver(signal, weak=False)(inbox.listener("async", "eager"))
    receiver(signal, weak=False)(inbox.listener("sync", "before"))
    receiver(signal, weak=False, on_error="raise")(raising(inbox, "raises"))
    receiver(signal, weak=False)(inbox.listener("sync", "after"))
    receiver(signal, weak=False)(inbox.listener("sync", "after too"))


def assert_lined_up(dispatches: Any, inbox: Inbox, expected: list[tuple[str, str]]) -> None:
    """The dispatch's outcomes: one per listener that ran, each with its own receiver."""
    [dispatch] = dispatches
    outcomes = dispatch.outcomes
    assert [(o.status, o.value) for o in outcomes] == [(s, v) for s, v in expected]
    assert [o.propagate for o in outcomes] == [v is None for _, v in expected]
    assert "after" not in inbox.received and "after too" not in inbox.received


@pytest.mark.parametrize("async_first", [False, True], ids=["sync_only", "async_first"])
@pytest.mark.parametrize("verb", ["collect_async", "collect", "ordered"])
def test_a_batch_stops_at_an_error_that_must_propagate(
    inbox: Inbox, verb: str, async_first: bool
) -> None:
    """The listeners after it are not called; the outcomes line up with the listeners."""
    signal = Signal(ordered=verb == "ordered", name="tests.inputs.batch")
    batch_with_a_raise(signal, inbox, async_first=async_first)
    send = signal.collect if verb == "collect" else async_to_sync(signal.collect_async)

    with capture_dispatches() as dispatches, pytest.raises(LookupError, match="raises"):
        send(sender=Shop, **KWARGS)

    expected = [("ok", "before done"), ("error", None)]
    if async_first:
        expected.insert(0, ("ok", "eager done"))
    assert_lined_up(dispatches, inbox, expected)
    [dispatch] = dispatches
    assert (dispatch.signal, dispatch.sender) == (signal, Shop), "observers see the dispatch"
    receivers = [o.receiver.__name__ for o in dispatch.outcomes]
    assert receivers == [*(["async_listener"] if async_first else []), "sync_listener", "listener"]
    inbox.assert_each_got(signal, [*(["eager"] if async_first else []), "before", "raises"])


def test_without_a_loop_the_threaded_listeners_keep_their_place_after_a_stop(
    inbox: Inbox,
) -> None:
    """``run_without_loop``: the threaded call still ends, in its place; the rest never run."""
    signal = Signal(name="tests.inputs.batch_threads")
    receiver(signal, weak=False)(inbox.listener("sync", "before"))
    receiver(signal, weak=False, on_error="raise")(raising(inbox, "raises"))
    receiver(signal, weak=False, timeout=30)(inbox.listener("sync", "threaded"))
    receiver(signal, weak=False)(inbox.listener("sync", "after"))

    with capture_dispatches() as dispatches, pytest.raises(LookupError, match="raises"):
        signal.collect(sender=Shop, **KWARGS)

    [dispatch] = dispatches
    assert [(o.status, o.value) for o in dispatch.outcomes] == [
        ("ok", "before done"),
        ("error", None),
        ("ok", "threaded done"),
    ]
    inbox.assert_each_got(signal, ["before", "raises", "threaded"])


# -- background listeners ------------------------------------------------------------------

paid = Signal(name="tests.inputs.paid")
worker_inbox = Inbox()


def in_the_worker(signal: Any, sender: Any, **kwargs: Any) -> str:
    return worker_inbox.record("sync", signal, sender, kwargs)


async def in_the_worker_async(signal: Any, sender: Any, **kwargs: Any) -> str:
    return worker_inbox.record("async", signal, sender, kwargs)


@pytest.fixture
def background(settings: Any) -> Iterator[Inbox]:
    """Background listeners enqueue to the DummyBackend; ``run_pending()`` is the worker."""
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy"}}
    worker_inbox.received.clear()
    run_pending()
    yield worker_inbox
    worker_inbox.received.clear()


@pytest.mark.parametrize("options", [{}, {"timeout": 30}], ids=["inline_options", "timeout"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("queue", [False, True], ids=["inline", "queue"])
@pytest.mark.parametrize("verb", ["send_async", "send_sync"])
def test_a_background_listener_gets_the_decoded_dispatch_in_the_worker(
    background: Inbox, verb: str, queue: bool, kind: str, options: dict[str, Any]
) -> None:
    """Enqueued by the caller (never through the short-term queue), run by the worker."""
    func = in_the_worker if kind == "sync" else in_the_worker_async
    receiver(paid, sender=Shop, mode="background", **options)(func)
    try:
        send = getattr(paid, verb)
        report = (async_to_sync(send) if verb.endswith("async") else send)(
            sender=Shop, queue=queue, **KWARGS
        )
        assert [o.status for o in report] == ["enqueued"]
        assert background.received == {}, "the worker runs it, not the sender"

        assert run_pending() == ["ok"]
    finally:
        paid.disconnect(func, sender=Shop)
    background.assert_each_got(paid, [kind])


# -- a Call run by hand ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["run_sync", "run_async"])
@pytest.mark.parametrize("options", ["plain", "breaker"])
def test_a_call_run_by_hand_hands_its_listener_the_call(
    inbox: Inbox, method: str, options: str
) -> None:
    """``Call.run_sync``/``run_async`` of a sync listener (the verbs batch plain ones instead)."""
    signal = Signal(name="tests.inputs.call")
    func = inbox.listener("sync")
    listener = Listener(func, ListenerOptions(**options_for(options)), weak=False)
    call = Call(listener, signal, Shop, dict(KWARGS))

    outcome = call.run_sync() if method == "run_sync" else async_to_sync(call.run_async)()

    assert (outcome.receiver, outcome.status, outcome.value) == (func, "ok", "sync done")
    inbox.assert_each_got(signal, ["sync"])
    # From async code, on the thread-sensitive thread: under async_to_sync, this one.
    assert inbox.threads["sync"] == threading.get_ident()


# -- where sync listeners run ----------------------------------------------------------------


@pytest.mark.parametrize("ordered", [False, True], ids=["concurrent", "ordered"])
async def test_a_sync_batch_runs_on_the_thread_sensitive_thread(
    inbox: Inbox, ordered: bool
) -> None:
    """Like Django's own sync_to_async default: the thread the request's sync code shares."""
    signal = Signal(ordered=ordered, name="tests.inputs.thread_sensitive")
    receiver(signal, weak=False)(inbox.listener("sync"))
    receiver(signal, weak=False)(inbox.listener("async"))

    await signal.collect_async(sender=Shop, **KWARGS)

    assert inbox.threads["sync"] == await sync_to_async(threading.get_ident)()
    assert inbox.threads["sync"] != threading.get_ident()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("verb", ["collect_async", "collect"])
def test_a_listener_whose_own_circuit_is_open_is_answered_by_its_fallback(
    inbox: Inbox, verb: str, kind: str
) -> None:
    """A plain listener that raises CircuitOpen itself (a breaker inside it): never ran."""
    signal = Signal(name="tests.inputs.own_circuit")
    error = CircuitOpen("its own", None)

    if kind == "sync":

        def guarded(signal: Any, sender: Any, **kwargs: Any) -> None:
            raise error

    else:

        async def guarded(signal: Any, sender: Any, **kwargs: Any) -> None:
            raise error

    receiver(signal, weak=False, fallback=inbox.listener("sync", "fallback"))(guarded)

    send = getattr(signal, verb)
    collected = (async_to_sync(send) if verb.endswith("async") else send)(sender=Shop, **KWARGS)

    assert [(o.receiver, o.status, o.value, o.error) for o in collected] == [
        (guarded, "circuit_open", "fallback done", error)
    ]
    inbox.assert_each_got(signal, ["fallback"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("verb", ["send", "asend"])
def test_djangos_verbs_enqueue_a_background_listener_for_the_worker(
    background: Inbox, verb: str, kind: str
) -> None:
    """On a plain Django signal: Django calls the Listener, which enqueues the call."""
    signal = DjangoSignal()
    func = in_the_worker if kind == "sync" else in_the_worker_async
    receiver(signal, sender=Shop, mode="background")(func)
    send = getattr(signal, verb)
    [(_, response)] = (async_to_sync(send) if verb == "asend" else send)(sender=Shop, **KWARGS)

    assert response is None, "nothing ran yet"
    assert run_pending() == ["ok"]
    background.assert_each_got(signal, [kind])
