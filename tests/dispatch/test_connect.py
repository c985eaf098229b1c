"""
Connecting: Django's arguments keep their meaning; bad input fails at connect.

Internal on purpose: ``state.keepalive``, to show a disconnected listener
leaves nothing behind.
"""

from __future__ import annotations

import gc
import sys
import weakref

import pytest
from django.dispatch import Signal as DjangoSignal

from patchboard import Listener, ListenerOptions, Signal, receiver
from patchboard._state import state


@pytest.fixture(params=["patchboard", "django"])
def signal(request):
    return Signal() if request.param == "patchboard" else DjangoSignal()


def test_disconnect_original_function_removes_a_listener_with_options(signal) -> None:
    def listener(sender, **kwargs):
        return 1

    signal.connect(listener, sender=None) if isinstance(signal, Signal) else None
    receiver(signal, on_error="log")(listener)
    assert signal.has_listeners()
    assert len(signal.receivers) == 1, "connecting the same function twice is a no-op"

    assert signal.disconnect(listener) is True
    assert not signal.has_listeners()


def test_dispatch_uid_identifies_a_listener_with_options(signal) -> None:
    def listener(sender, **kwargs): ...

    receiver(signal, dispatch_uid="uid-1", on_error="log")(listener)
    receiver(signal, dispatch_uid="uid-1", on_error="log")(listener)

    assert len(signal.receivers) == 1
    assert signal.disconnect(dispatch_uid="uid-1") is True
    assert not signal.has_listeners()


def test_weak_listener_with_options_goes_away_with_its_function(signal) -> None:
    def listener(sender, **kwargs): ...

    receiver(signal, timeout=1.0)(listener)
    assert signal.has_listeners()

    del listener
    gc.collect()

    assert not signal.has_listeners()


def test_strong_listener_with_options_stays(signal) -> None:
    def listener(sender, **kwargs):
        return "alive"

    receiver(signal, weak=False, on_error="log")(listener)
    del listener
    gc.collect()

    assert signal.has_listeners()
    [(wrapper, response)] = signal.send(sender=None)
    assert isinstance(wrapper, Listener)
    assert response == "alive"


def test_bound_method_listener_goes_away_with_its_instance(signal) -> None:
    class Handler:
        def on_event(self, sender, **kwargs):
            return "handled"

    handler = Handler()
    receiver(signal, on_error="log")(handler.on_event)
    assert [r for _, r in signal.send(sender=None)] == ["handled"]

    del handler
    gc.collect()

    assert not signal.has_listeners()


def test_listener_sees_sender_filtering(signal) -> None:
    class A: ...

    class B: ...

    def listener(sender, **kwargs):
        return sender

    receiver(signal, sender=A, on_error="log")(listener)

    assert [r for _, r in signal.send(sender=A)] == [A]
    assert signal.send(sender=B) == []


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"timeout": -1},
            ValueError,
            r"receiver .*\.target: timeout must be a finite number of seconds > 0, got -1",
        ),
        ({"timeout": 0}, ValueError, r"timeout must be a finite number of seconds > 0, got 0"),
        ({"timeout": "2"}, TypeError, r"timeout must be a number of seconds, got '2'"),
        (
            {"on_error": "ignore"},
            ValueError,
            r"on_error must be 'raise', 'log' or 'group', got 'ignore'",
        ),
        ({"mode": "later"}, ValueError, r"mode must be 'inline' or 'background', got 'later'"),
        ({"priority": 1.5}, TypeError, r"priority must be an int, got 1.5"),
        ({"fallback": 3}, TypeError, r"fallback must be callable, got 3"),
        ({"breaker": 3}, TypeError, r"breaker must be a breaker name or a CircuitBreaker"),
    ],
)
def test_bad_options_fail_at_connect_naming_listener_and_option(options, error, message) -> None:
    def target(sender, **kwargs): ...

    with pytest.raises(error, match=message):
        receiver(Signal(), **options)(target)


def test_non_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="signal receivers must be callable, got 42"):
        receiver(Signal(), on_error="log")(42)


def test_receiver_without_kwargs_is_refused() -> None:
    def rigid(sender): ...

    with pytest.raises(ValueError, match=r"receiver .*rigid must accept keyword arguments"):
        receiver(Signal(), on_error="log")(rigid)


def test_connect_with_options_on_patchboard_signal() -> None:
    signal = Signal()

    def listener(sender, **kwargs):
        raise ValueError("x")

    signal.connect(listener, on_error="log", default=7)

    assert signal.collect(sender=None).values() == [7]


def test_receiver_decorates_a_list_of_signals_and_returns_the_function() -> None:
    one, two = Signal(), DjangoSignal()

    def listener(sender, **kwargs):
        return "hi"

    assert receiver([one, two], on_error="log")(listener) is listener
    assert one.collect(sender=None).values() == ["hi"]
    assert [r for _, r in two.send(sender=None)] == ["hi"]


def test_a_receiver_without_options_is_wrapped_and_disconnected_by_its_function() -> None:
    """Wrapped so that ``PATCHBOARD["ON_ERROR"]`` applies (dispatch/test_django_signals.py)."""
    signal = DjangoSignal()

    def listener(sender, **kwargs):
        return "hi"

    receiver(signal)(listener)
    assert [r for _, r in signal.send(sender=None)] == ["hi"]
    assert signal.disconnect(listener)
    assert not signal.has_listeners()


class Cart:
    """A sender."""


@pytest.mark.parametrize("sender", [None, Cart], ids=["any_sender", "one_sender"])
@pytest.mark.parametrize("by", ["function", "dispatch_uid"])
def test_disconnecting_lets_go_of_the_wrapper_and_its_keepalive(by: str, sender: object) -> None:
    signal = Signal()
    uid = "tests.connect.released" if by == "dispatch_uid" else None

    def listener(sender, **kwargs): ...

    receiver(signal, sender=sender, on_error="log", dispatch_uid=uid)(listener)
    [listener_wrapper] = signal.listeners(sender)
    wrapper = weakref.ref(listener_wrapper)
    del listener_wrapper
    gc.collect()
    assert wrapper() is not None, "a weak listener's wrapper lives as long as its function"

    if uid is None:
        assert signal.disconnect(listener, sender=sender)
    else:
        assert signal.disconnect(sender=sender, dispatch_uid=uid)
    assert signal.listeners(sender) == []  # the signal's own cache lets go too
    gc.collect()

    assert wrapper() is None
    assert id(listener) not in state.keepalive, "nothing is left behind for the function"


def test_disconnecting_from_one_signal_keeps_the_listener_on_another() -> None:
    first, second = Signal(), Signal()

    def listener(sender, **kwargs):
        return "still here"

    receiver([first, second], on_error="log")(listener)
    assert first.disconnect(listener)
    gc.collect()

    assert second.collect(sender=None).values() == ["still here"]
    assert first.collect(sender=None).values() == []


@pytest.mark.parametrize("options", [{}, {"on_error": "log"}], ids=["plain", "with_options"])
def test_a_dispatched_weak_listener_goes_with_its_function(options: dict[str, object]) -> None:
    """The signal's cache of resolved listeners holds no function alive, nor a dead one."""
    signal = Signal()

    def listener(sender, **kwargs):
        return "alive"

    signal.connect(listener, **options)
    assert signal.collect(sender=None).values() == ["alive"]
    function = weakref.ref(listener)
    del listener
    gc.collect()

    assert function() is None
    assert list(signal.collect(sender=None)) == []


@pytest.mark.parametrize("options", [{}, {"priority": 1}], ids=["plain", "with_options"])
def test_a_dispatch_drops_the_entry_of_a_collected_receiver_as_djangos_verbs_do(options) -> None:
    """A signal sent only through patchboard's verbs does not pile up dead entries."""
    # A listener with options is held by the wrapper connect() made for them, which
    # the cached resolution held too: its entry outlived one more dispatch.
    signal = Signal()

    def listener(sender, **kwargs):
        return "alive"

    def other(sender, **kwargs):
        return "other"

    signal.connect(listener, **options)
    signal.connect(other)
    assert signal.collect(sender=None).values() == ["alive", "other"]
    del listener
    gc.collect()

    assert signal.collect(sender=None).values() == ["other"]
    assert len(signal.receivers) == 1


class Unreferenceable:
    """A callable that takes no weak references (``__slots__`` without ``__weakref__``)."""

    __slots__ = ()

    def __call__(self, sender, **kwargs):
        return "called"


def test_a_callable_without_weak_references_connects_strongly() -> None:
    signal = Signal()
    func = Unreferenceable()
    signal.connect(func, weak=False)

    [outcome] = signal.collect(sender=None)

    assert (outcome.receiver, outcome.status, outcome.value) == (func, "ok", "called")


def test_a_listener_connected_by_hand_goes_when_dropped() -> None:
    """Connected weakly, as Django does: the signal must not keep it in its cache."""
    signal = Signal()

    def func(sender, **kwargs):
        return "called"

    listener = Listener(func, ListenerOptions(on_error="log"), weak=True)
    signal.connect(listener)
    assert signal.collect(sender=None).values() == ["called"]
    del listener
    gc.collect()

    assert list(signal.collect(sender=None)) == []


def test_a_bound_builtin_method_connects_weakly_as_in_django() -> None:
    """Builtin methods have ``__self__`` but no ``__func__``: a plain weak reference."""
    signal = Signal()
    store: dict[str, object] = {}
    update = store.update
    receiver(signal, on_error="log")(update)

    signal.send_sync(sender="shop", order=7)

    assert store == {"signal": signal, "sender": "shop", "order": 7}


def test_a_callable_without_a_signature_is_let_through() -> None:
    """Builtins whose signature cannot be read are not refused for their kwargs."""
    signal = Signal()
    receiver(signal, weak=False, on_error="log")(max)
    assert [listener.receiver for listener in signal.listeners()] == [max]


@pytest.mark.parametrize("options", [{}, {"on_error": "log"}], ids=["plain", "with_options"])
def test_receiver_keeps_the_dispatch_uid(options: dict[str, object]) -> None:
    signal = Signal()

    def func(sender, **kwargs): ...

    receiver(signal, dispatch_uid="tests.connect.uid", **options)(func)
    assert signal.disconnect(dispatch_uid="tests.connect.uid")
    assert not signal.has_listeners()


def test_background_listeners_connect_to_plain_django_signals() -> None:
    """A Django signal has no ``ordered``: it is never taken for an ordered one."""
    signal = DjangoSignal()
    receiver(signal, mode="background", on_error="log")(_module_level_listener)
    assert signal.has_listeners()
    signal.disconnect(_module_level_listener)


def _module_level_listener(sender, **kwargs): ...


def test_a_plain_listeners_death_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The weak reference of a wrapper made without a death hook calls nothing when it dies."""
    gc.collect()  # earlier tests' garbage is not this test's business
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    signal = Signal()

    def listener(sender, **kwargs):
        return "alive"

    signal.connect(listener)
    assert signal.collect(sender=None).values() == ["alive"]  # wraps it, without options
    del listener
    gc.collect()

    assert unraisable == []


def test_disconnecting_by_a_shared_dispatch_uid_frees_the_wrapper_django_dropped() -> None:
    signal = Signal(name="tests.connect.shared_uid")

    def first(sender, **kwargs):
        return "first"

    def second(sender, **kwargs):
        return "second"

    signal.connect(first, dispatch_uid="shared", timeout=1)
    signal.connect(second, dispatch_uid="shared", timeout=1)  # a no-op, as in Django
    [wrapper] = signal.listeners(None)
    assert wrapper.receiver is first
    dropped = weakref.ref(wrapper)
    del wrapper

    assert signal.disconnect(second, dispatch_uid="shared")  # Django drops first's entry

    assert signal.listeners(None) == []
    gc.collect()
    assert dropped() is None, "the disconnected wrapper is still kept alive"


def test_connecting_a_function_twice_with_options_keeps_it_connected() -> None:
    # Django ignores the second connect (same lookup key); the wrapper it ignored used to
    # replace the one it holds in the keep-alive, so once nothing else held that one (the
    # signal's cache dropped when another listener died), the function was gone.
    signal = Signal(name="tests.connect.twice")

    def quote(sender, **kwargs):
        return "quote"

    signal.connect(quote, timeout=1)
    assert signal.collect(sender=None).values() == ["quote"]  # the cache holds the wrapper
    signal.connect(quote, timeout=2)  # a no-op, as in Django: the first options stay

    def passing(sender, **kwargs):
        return "passing"

    signal.connect(passing)
    assert signal.collect(sender=None).values() == ["quote", "passing"]
    del passing
    gc.collect()  # a listener dies: the signal drops its cache

    [listener] = signal.listeners(None)
    assert (listener.receiver, listener.options.timeout) == (quote, 1)
    gc.collect()
    assert signal.collect(sender=None).values() == ["quote"]
