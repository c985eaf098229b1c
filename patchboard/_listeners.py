"""
Listeners: a receiver plus the options that say how it runs.

A :class:`Listener` wraps the function a user connects with patchboard
options (``priority``, ``timeout``, ``on_error``, ``default``, ``mode``,
``breaker``, ``fallback``, ``thread_sensitive``). It is itself a Django
receiver, so it works on any signal, Django's own ``post_save`` included:
when Django's ``send()`` calls it, the options apply and the listener's
``on_error`` decides whether the error reaches the sender.

A listener with nothing to apply but its error policy (a *plain* one) is
called directly, without building a :class:`~patchboard._call.Call`, unless
it fails; every other call goes through a ``Call``. Where its calls run is
the placement rule's answer (``patchboard._run.place``), learnt once, when
the listener is built; how they run, and in which context, is
``patchboard._run``'s business.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import itertools
import weakref
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured

from patchboard import _deadline
from patchboard._config import (
    DEFAULT_OPTIONS,
    Criticality,
    Guard,
    ListenerOptions,
    Missing,
    Mode,
    OnError,
    Retry,
    Settings,
    get_settings,
)
from patchboard._django import dead_receiver_flag, filed_under, lookup_key, make_id
from patchboard._features import features
from patchboard._ledger import ledger
from patchboard._log import dotted
from patchboard._outcomes import Outcome
from patchboard._run import HERE, Dispatch, InOwnContext, Place, place, run_async, run_here
from patchboard._state import state

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal


class _ModuleOf(str):
    """
    ``Listener.__module__``: this module's name on the class, and the
    function's module on an instance, so that whoever names a receiver
    ``__module__ + "." + __qualname__`` (sentry-sdk's signal spans, Django's
    ``send_robust()`` log) names the user's function, not the wrapper. (A str,
    so the class keeps a real module name; a non-data descriptor, since a
    slot cannot be named ``__module__``.)
    """

    __slots__ = ()

    def __get__(self, instance: object, owner: type | None = None) -> str:
        if instance is None:
            return self
        func = instance.ref() if isinstance(instance, Listener) else None
        return getattr(func, "__module__", None) or str(self)


class Listener:
    """
    A receiver connected with patchboard options.

    The listener holds its function weakly when connected with ``weak=True``
    (Django's default): it lives exactly as long as the function, so Django's
    weak-reference clean-up works unchanged. ``receiver`` is the user's
    function; patchboard's outcomes and logs name it, never the wrapper.
    ``options`` are its :class:`~patchboard.ListenerOptions`, ``label`` its
    dotted path, ``places`` where its calls run without a deadline and with
    one (``patchboard._run.place``).
    """

    __module__ = _ModuleOf(__name__)

    __slots__ = (
        "__weakref__",
        "_hash",
        "_is_coroutine_marker",
        "bare",
        "direct",
        "direct_async",
        "is_async",
        "label",
        "options",
        "places",
        "ref",
        "watched",
    )

    def __init__(
        self,
        func: Callable[..., Any],
        options: ListenerOptions,
        *,
        weak: bool,
        on_death: Callable[[], None] | None = None,
    ) -> None:
        self.is_async = _is_async(func)
        self.options = options
        self.direct = options.plain
        """Nothing to apply but the error policy: ``patchboard._run`` calls it directly."""
        self.direct_async = self.direct and self.is_async
        self.bare = options == DEFAULT_OPTIONS
        """No options at all: under ON_ERROR="raise", Django's verbs may call the
        function itself (see __call__ and ``_dispatch.in_order``)."""
        self.places: tuple[Place, Place] = (
            place(self, budgeted=False),
            place(self, budgeted=True),
        )
        self.label = dotted(func)
        self._hash = hash(func)  # kept: the function may die, a hash may not change
        self.ref: Callable[[], Callable[..., Any] | None]
        """The function, or None once it has been collected."""
        self.watched = on_death is not None or not weak
        """Whether a signal may hold this wrapper strongly: it learns of the
        function's death from ``on_death`` (or the function never dies)."""
        if weak:
            is_method = hasattr(func, "__self__") and hasattr(func, "__func__")
            ref = weakref.WeakMethod if is_method else weakref.ref
            self.ref = ref(func, None if on_death is None else _calling(on_death))
        else:
            # A C callable that returns ``func``: a weak reference's cost, no Python frame.
            self.ref = itertools.repeat(func).__next__
        if self.is_async:
            # Makes Django (and asgiref) treat the wrapper as an async receiver.
            inspect.markcoroutinefunction(self)

    def __getattr__(self, name: str) -> Any:
        # Django's send_robust() logs receivers by __qualname__: name the user's function.
        if name in ("__qualname__", "__name__"):
            return getattr(self.receiver, name, self.label)
        raise AttributeError(name)

    @property
    def receiver(self) -> Callable[..., Any] | None:
        """The connected function, or None once it has been garbage collected."""
        return self.ref()

    def __eq__(self, other: object) -> bool:
        # Django's verbs pair each response with the receiver they called: this
        # wrapper. It equals the function it wraps, so that
        # ``dict(signal.send(...))[my_receiver]`` finds it, as with Django.
        if other is self:
            return True
        if isinstance(other, Listener):
            return False
        func = self.ref()
        return func is not None and func == other

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        changed = ", ".join(
            f"{field.name}={getattr(self.options, field.name)!r}"
            for field in dataclasses.fields(self.options)
            if getattr(self.options, field.name) != field.default
        )
        return f"<Listener {self.label}{' ' if changed else ''}{changed}>"

    # -- Django's entry point ----------------------------------------------------

    def __call__(self, signal: DjangoSignal, sender: Any, **kwargs: Any) -> Any:
        """
        Called by any signal's ``send()``/``asend()``: apply the options and
        return the response, or raise if the listener's policy is ``"raise"``.
        """
        if self.bare:
            settings = state.settings  # errors_raise(), inlined: Django's send() pays per call
            if (settings.on_error == "raise") if settings is not None else errors_raise():
                # Nothing to apply: the function is called exactly as Django would
                # call it connected bare (and, as then, the call is not counted).
                func = self.ref()
                if func is not None:
                    return func(signal=signal, sender=sender, **kwargs)
        dispatch = Dispatch(signal, sender, kwargs, (self,))
        # Django's verbs are traced where Django is (sentry-sdk's signals_spans wraps
        # this receiver, naming it after the function: see _ModuleOf), not here too.
        dispatch.traced = None
        dispatch.budgeted = _deadline.current() is not None
        ledger.submitted()
        # In its own copy of the caller's context (see patchboard._run):
        # Django's asend() runs its async receivers in one shared context.
        if self.is_async:
            return _unwrap_async(InOwnContext(run_async(self, dispatch)))
        if self.places[False] in HERE:
            return _unwrap(run_here((self,), dispatch)[0])
        run = contextvars.copy_context().run
        return _unwrap(run(async_to_sync(run_async), self, dispatch))


def errors_raise() -> bool:
    """
    Whether the errors of a listener that does not set ``on_error`` reach the
    sender (``PATCHBOARD["ON_ERROR"]`` is ``"raise"``). One attribute read
    once the settings are parsed: they are parsed again when they change.
    """
    settings: Settings | None = state.settings
    if settings is None:
        try:
            settings = get_settings()
        except ImproperlyConfigured:
            # Invalid: the full path runs, and a failure raises the error naming the key.
            return False
    return settings.on_error == "raise"


def _is_async(func: Callable[..., Any]) -> bool:
    """Whether calling ``func`` gives a coroutine: an async function, or an object whose
    ``__call__`` is one (``inspect.iscoroutinefunction`` alone misses the latter)."""
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func) or isinstance(func, type):
        return False
    call = type(func).__call__ if callable(func) else None
    return inspect.iscoroutinefunction(call)


def _calling(hook: Callable[[], None]) -> Callable[[object], None]:
    # A weakref callback that closes over the hook, not over the Listener.
    return lambda _ref: hook()


def _unwrap(outcome: Outcome) -> Any:
    # Django's send() stops at the first error: there, a group is of one, raised as is.
    if outcome.propagate or outcome.grouped:
        assert outcome.error is not None
        raise outcome.error
    return outcome.value


async def _unwrap_async(coro: Awaitable[Outcome]) -> Any:
    return _unwrap(await coro)


# -- connecting ------------------------------------------------------------------


def as_listener(receiver: Callable[..., Any]) -> Listener:
    """``receiver`` as a Listener: itself if it is one, else its default-options wrapper."""
    if type(receiver) is Listener:
        return receiver
    plain = state.plain_listeners
    try:
        return plain[receiver]
    except KeyError:
        listener = plain[receiver] = Listener(receiver, DEFAULT_OPTIONS, weak=True)
        return listener
    except TypeError:  # not weak-referenceable: connected with weak=False
        return Listener(receiver, DEFAULT_OPTIONS, weak=False)


def make_options(func: object, signals: Sequence[DjangoSignal], **options: Any) -> ListenerOptions:
    """
    Validate a receiver and its options for the signals it is about to join.

    Raises:
        TypeError: ``func`` is not callable, does not accept ``**kwargs``, or
            an option has the wrong type (the message names the listener).
        ValueError: an option has a bad value (the message names the listener).
        ImproperlyConfigured: ``mode="background"`` on an ordered signal.
    """
    if not callable(func):
        raise TypeError(f"signal receivers must be callable, got {func!r}")
    label = dotted(func)
    if not _accepts_kwargs(func):
        raise ValueError(f"receiver {label} must accept keyword arguments (**kwargs)")
    try:
        made = ListenerOptions(**options)
    except TypeError as exc:
        raise TypeError(f"receiver {label}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"receiver {label}: {exc}") from None
    if made.mode == "background":
        if any(getattr(s, "ordered", False) for s in signals):
            raise ImproperlyConfigured(
                f"receiver {label}: mode='background' would queue a listener of an ordered "
                f"signal; side effects on an ordered signal run inline, in priority order"
            )
        features.background.check(func, made)
    if made.hedge_after is not None and not _is_async(func):
        # A sync attempt runs in a thread that cannot be cancelled: the loser would run on.
        raise ValueError(f"receiver {label}: hedge_after needs an async listener (async def)")
    return made


def _accepts_kwargs(func: Callable[..., Any]) -> bool:
    # Not django.utils.inspect.func_accepts_kwargs: its lru_cache holds the
    # function strongly, which would defeat weak=True.
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let them through
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def connect(
    signal: DjangoSignal,
    func: Callable[..., Any],
    options: ListenerOptions,
    *,
    sender: Any = None,
    weak: bool = True,
    dispatch_uid: Hashable | None = None,
) -> Listener:
    """
    Connect ``func`` to any Django signal with ``options``.

    The wrapper is registered under the key Django computes for ``func``
    itself, so ``signal.disconnect(func)`` finds it, and connecting the same
    function twice stays a no-op, as in Django.
    """
    # The signal caches its resolved listeners, this one strongly: it must
    # hear of the function's death (Django's entry refers to the wrapper).
    listener = Listener(func, options, weak=weak, on_death=dead_receiver_flag(signal))
    if isinstance(options.breaker, str):
        state.named_breakers.add(listener)
    uid = dispatch_uid if dispatch_uid else make_id(func)
    signal.connect(listener, sender=sender, weak=weak, dispatch_uid=uid)
    key = lookup_key(func, sender, uid)
    if weak and filed_under(signal, key) is listener:
        # Kept only once Django holds it: connecting a key twice is a no-op in
        # Django, and the wrapper it ignored must not replace the one it holds.
        # (``listener`` keeps it alive until then.)
        _keep(_owner(func), (id(signal), key), listener)
    if options.mode == "background":
        # The worker runs only listeners recorded here, in its own process.
        features.background.connected(listener, signal, sender)
    return listener


def _owner(func: Callable[..., Any]) -> Any:
    # What a weakly connected listener lives as long as: its function, or a bound method's object.
    return getattr(func, "__self__", func) if hasattr(func, "__func__") else func


def _keep(owner: object, key: tuple[int, Hashable], listener: Listener) -> None:
    """
    Keep ``listener`` alive exactly as long as ``owner``: Django's entry holds
    the wrapper weakly. Filed by ``id(owner)`` with a finalizer that drops the
    entry when the owner dies (so ids are never reused while filed): looking
    an entry up needs no weak reference, as Django's ``disconnect`` needs none
    for a receiver connected with ``weak=False``.
    """
    kept = state.keepalive
    owner_id = id(owner)
    entry = kept.get(owner_id)
    if entry is None:
        entry = kept[owner_id] = (weakref.finalize(owner, kept.pop, owner_id, None), {})
    entry[1][key] = listener


def forget(signal: DjangoSignal, listener: Listener, key: Hashable) -> None:
    """
    Drop the keep-alive of ``listener``, which ``signal`` has just
    disconnected; ``key`` is the lookup key it was filed under (its own
    function's, or a ``dispatch_uid`` another function was disconnected by).
    """
    func = listener.receiver
    if func is None:
        return  # its function died: the finalizer dropped the entry
    kept = state.keepalive
    owner_id = id(_owner(func))
    entry = kept.get(owner_id)
    if entry is not None and entry[1].get((id(signal), key)) is listener:
        del entry[1][(id(signal), key)]
        if not entry[1]:
            entry[0].detach()
            kept.pop(owner_id, None)


def receiver(
    signal: DjangoSignal | list[DjangoSignal] | tuple[DjangoSignal, ...],
    *,
    sender: Any = None,
    weak: bool = True,
    dispatch_uid: Hashable | None = None,
    priority: int = 0,
    timeout: float | None = None,
    on_error: OnError | None = None,
    default: Any = None,
    mode: Mode = "inline",
    breaker: str | Guard | None = None,
    fallback: Callable[..., Any] | None = None,
    thread_sensitive: bool = True,
    queue_name: str | None = None,
    on_commit: bool = True,
    missing_instance: Missing = "report",
    retry: Retry | None = None,
    hedge_after: float | None = None,
    criticality: Criticality = "default",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Connect the decorated function to one signal or a list of them, with options.

    Works on any Django signal (``post_save``, ``request_finished``, ...) and
    on :class:`patchboard.Signal`. Django's arguments (``sender``, ``weak``,
    ``dispatch_uid``) keep their meaning; the options:

    ``priority``
        Higher runs first where order is observable (ordered signals, sync
        listeners); ties keep connect order.
    ``timeout``
        Seconds; an async listener is cancelled at the limit (a sync one is
        abandoned in its worker thread) and the call ends as ``"timeout"``.
    ``on_error``
        ``"raise"`` (the error reaches the sender), ``"log"`` (it is logged
        as ``listener_failed`` and ``default`` stands in) or ``"group"``
        (every listener runs to its end, then the errors reach the sender
        together, as a :class:`~patchboard.ListenerErrors`). Unset: the
        ``PATCHBOARD["ON_ERROR"]`` setting.
    ``criticality``
        ``"critical"``, ``"default"`` or ``"sheddable"``: under overload the
        short-term queue sheds sheddable calls first, critical ones last.
    ``mode``
        ``"inline"`` (in the request) or ``"background"`` (a ``django.tasks``
        task per call).
    ``breaker``
        A :class:`~patchboard.CircuitBreaker` or the name of one declared in
        ``PATCHBOARD["BREAKERS"]``.
    ``fallback``
        Called with the listener's arguments when the call never ran (expired,
        rejected, circuit open); its return value stands in.
    ``retry``
        A :class:`~patchboard.Retry`: try the call again after the failures
        it names, within the call's time limit and the signal's retry budget.
    ``hedge_after``
        Seconds (async listeners that are idempotent): a call still running
        then gets a second attempt beside it; the first to return answers.

    Returns the function unchanged.

    Raises:
        TypeError, ValueError: at decoration time, for a non-callable or a bad option.
        ImproperlyConfigured: for an option an ordered signal cannot honour.
    """
    options = dict(
        priority=priority,
        timeout=timeout,
        on_error=on_error,
        default=default,
        mode=mode,
        breaker=breaker,
        fallback=fallback,
        thread_sensitive=thread_sensitive,
        queue_name=queue_name,
        on_commit=on_commit,
        missing_instance=missing_instance,
        retry=retry,
        hedge_after=hedge_after,
        criticality=criticality,
    )
    signals = signal if isinstance(signal, (list, tuple)) else [signal]

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        made = make_options(func, signals, **options)
        for each in signals:
            # A wrapper even with no options: PATCHBOARD["ON_ERROR"] may say
            # "log", now or after an override_settings, and Django's own
            # send() must follow it. Under "raise" the wrapper calls the
            # function at once (Listener.__call__).
            connect(each, func, made, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        return func

    return decorator
