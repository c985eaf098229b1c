"""
``patchboard.Signal``: a drop-in ``django.dispatch.Signal`` with an async
dispatch engine.

Django's verbs (``send``, ``send_robust``, ``asend``, ``asend_robust``,
``connect``, ``disconnect``, ``has_listeners``) keep Django's behaviour, and
on an unordered signal they *are* Django's methods: a project that swaps
the class in pays nothing where it uses nothing of patchboard. The new verbs
come in pairs, async first:

``send_async`` / ``send_sync``
    Fire and forget: run inline listeners, enqueue background ones, return
    a report (a :class:`~patchboard.Collected`) of what happened to each.
``collect_async`` / ``collect``
    Fire and gather every listener's response into a ``Collected``.

Both apply each listener's options (timeout, error policy, breaker, ...);
both run listeners concurrently, or one at a time in priority order on an
ordered signal (``Signal(ordered=True)``). Every verb, Django's on an ordered
signal included, runs each listener call in its own copy of the caller's
context (see ``patchboard._listeners``).
"""

from __future__ import annotations

import enum
import weakref
from asyncio import _get_running_loop
from collections.abc import Callable, Hashable
from typing import Any, Final

from django.dispatch import Signal as DjangoSignal

from patchboard import _dispatch
from patchboard._config import get_settings, seconds
from patchboard._dispatch import QueueChoice, Responses, check_no_loop, queue_for
from patchboard._django import (
    NONE_ID,
    clear_dead_receivers,
    entries,
    filed_under,
    lookup_key,
    make_id,
    resolve,
    under_djangos_name,
)
from patchboard._exceptions import SyncCallInEventLoop
from patchboard._listeners import Listener, as_listener, connect, forget, make_options
from patchboard._log import name_signal, signal_label
from patchboard._outcomes import Collected
from patchboard._run import Dispatch, Resolved
from patchboard._state import state
from patchboard._stream import Stream


class Unset(enum.Enum):
    """The type of ``UNSET``: a deadline left to ``PATCHBOARD["DEFAULT_DEADLINE"]``."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET
"""A collect's ``deadline`` not given: ``PATCHBOARD["DEFAULT_DEADLINE"]`` applies
(None already means "no deadline")."""


_RESOLVED_SENDERS = 256
"""How many senders' resolved listeners a signal caches before it starts over."""


class Signal(DjangoSignal):
    """
    A Django signal with patchboard's dispatch verbs and listener options.

    ``ordered=True`` makes a side-effect signal: its listeners run one at a
    time, highest ``priority`` first, ties in connect order, never
    concurrently and never queued (Django's own verbs too). ``name`` is how
    logs and background task payloads refer to the signal.
    """

    def __init__(
        self, use_caching: bool = False, *, ordered: bool = False, name: str | None = None
    ) -> None:
        super().__init__(use_caching=use_caching)
        self.ordered = ordered
        self._priorities: dict[Hashable, int] = {}
        self._resolved: dict[Hashable, Resolved] = {}
        self._version = 0
        """Moves on every connect, disconnect and reordering: older resolutions are stale."""
        if name is not None:
            name_signal(self, name)
        if ordered:
            # On the instance, so that unordered signals keep Django's own
            # methods: no extra stack frame (a receiver's warnings.warn
            # stacklevel stays right) and no cost. (mypy forbids assigning
            # to a method: that is the point here.)
            self.send = self._send_in_order  # type: ignore[method-assign]
            self.send_robust = self._send_robust_in_order  # type: ignore[method-assign]
            self.asend = self._asend_in_order  # type: ignore[method-assign]
            self.asend_robust = self._asend_robust_in_order  # type: ignore[method-assign]

    def __repr__(self) -> str:
        kind = "ordered " if self.ordered else ""
        return f"<{kind}Signal {signal_label(self)} with {len(self.receivers)} receivers>"

    # -- connecting ----------------------------------------------------------------

    @under_djangos_name
    def connect(
        self,
        receiver: Callable[..., Any],
        sender: Any = None,
        weak: bool = True,
        dispatch_uid: Hashable | None = None,
        **options: Any,
    ) -> None:
        """
        Connect ``receiver``, as Django does; with listener options
        (``priority``, ``timeout``, ``on_error``, ``default``, ``mode``,
        ``breaker``, ``fallback``, ...; see :func:`patchboard.receiver`) it is
        wrapped in a :class:`~patchboard.Listener` first.

        Raises:
            TypeError, ValueError: a non-callable receiver or a bad option.
            ImproperlyConfigured: an option an ordered signal cannot honour.
        """
        if options:
            made = make_options(receiver, [self], **options)
            connect(self, receiver, made, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
            return
        super().connect(receiver, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        self._version += 1
        priority = receiver.options.priority if type(receiver) is Listener else 0
        if priority or self._priorities:
            self._order(lookup_key(receiver, sender, dispatch_uid), priority)

    def _order(self, key: Hashable, priority: int) -> None:
        with self.lock:
            self._priorities.setdefault(key, priority)
            # Sorted into a new list on assignment (see __setattr__), not in
            # place: a dispatch resolving the old list meanwhile can never
            # cache it as this one.
            self.receivers = self.receivers
            self._version += 1
            self.sender_receivers_cache.clear()

    def __setattr__(self, name: str, value: Any) -> None:
        # Whoever replaces the receivers list gets it back in priority order
        # (stable: equal priorities keep their order): Django dropping dead
        # entries, and factory_boy's mute_signals, which puts the list it
        # saved in front of the listeners connected while muted. An
        # assignment is rare; reading the list, what every send() does, costs
        # nothing more.
        if name == "receivers" and getattr(self, "_priorities", None):
            priorities = self._priorities
            value = sorted(value, key=lambda entry: -priorities.get(entry[0], 0))
        super().__setattr__(name, value)

    def disconnect(
        self,
        receiver: Callable[..., Any] | None = None,
        sender: Any = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Disconnect as Django does; a function connected with options is found by itself."""
        key = lookup_key(receiver, sender, dispatch_uid)
        # What Django is about to drop: by dispatch_uid, it may be another function's wrapper.
        dropped = filed_under(self, key) if state.keepalive else None
        disconnected = super().disconnect(receiver, sender=sender, dispatch_uid=dispatch_uid)
        self._version += 1
        if disconnected:
            self._priorities.pop(key, None)
            if type(dropped) is Listener:
                forget(self, dropped, key)
        return disconnected

    def listeners(self, sender: Any = None) -> list[Listener]:
        """The live listeners for ``sender``, in dispatch (priority, then connect) order."""
        return list(self._live(sender).listeners)

    def _live(self, sender: Any) -> Resolved:
        """
        The resolved listeners for ``sender``, cached until the receivers list
        changes: connect, disconnect and reordering move ``_version`` (a
        resolution that raced one is stored with the version it started
        from, so it is never taken for current), and Django replaces the
        list when it drops dead entries.

        Every cached listener is alive: a dead receiver, or dead sender, flags
        the signal (Django's weak-reference callbacks, and the ``on_death``
        hook of the wrappers ``connect`` makes), which drops the cache here.
        """
        # Django's own flag, read before the call: the hot path pays no frame for it.
        if self._dead_receivers:  # type: ignore[attr-defined]
            # The cache first: it holds the wrappers of the dead listeners with options,
            # and Django drops an entry only once its wrapper is gone.
            self._resolved.clear()
            clear_dead_receivers(self)
        receivers = self.receivers
        senderkey = NONE_ID if sender is None else make_id(sender)
        resolved = self._resolved.get(senderkey)
        if (
            resolved is None
            or resolved.version != self._version
            or resolved.receivers is not receivers
            or resolved.count != len(receivers)
        ):
            resolved = self._resolve(receivers, self._version, senderkey)
        return resolved

    def _resolve(self, receivers: list[Any], version: int, senderkey: Hashable) -> Resolved:
        listeners: list[Listener] = []
        cacheable = True
        for entry_sender, ref, sender_ref in entries(receivers):
            if entry_sender != NONE_ID and entry_sender != senderkey:
                continue
            if sender_ref is not None and sender_ref() is None:
                continue
            receiver = resolve(ref)
            if receiver is None:
                continue
            if type(receiver) is not Listener:
                receiver = as_listener(receiver)
            elif receiver.receiver is None:
                continue  # its function died: Django drops the entry once we let go
            elif not receiver.watched and isinstance(ref, weakref.ReferenceType):
                cacheable = False  # a Listener connected by hand: held only weakly
            listeners.append(receiver)
        resolved = Resolved(receivers, version, listeners)
        if cacheable:
            if len(self._resolved) >= _RESOLVED_SENDERS:
                self._resolved.clear()  # Senders come and go (instances): stay bounded.
            self._resolved[senderkey] = resolved
        return resolved

    # -- patchboard's verbs ----------------------------------------------------------

    async def send_async(
        self,
        sender: Any,
        *,
        queue: QueueChoice = False,
        deadline: float | None = None,
        **named: Any,
    ) -> Collected:
        """
        Fire and forget: call every listener and return a report of each call.

        Inline listeners run concurrently in tasks owned by this call (one at
        a time on an ordered signal); the call returns when they are done.
        Background listeners are enqueued as ``django.tasks`` tasks; their
        outcome is ``"enqueued"`` with the ``task_id``. ``queue=True`` sends
        inline listeners through the short-term queue. ``deadline`` (seconds
        from now) bounds the whole call, as for :meth:`collect_async`.

        Raises:
            Exception: the error of a listener whose ``on_error`` is
                ``"raise"``, after the other listeners were cancelled.
            ImproperlyConfigured: ``queue=True`` on an ordered signal.
            TypeError, ValueError: ``deadline`` is not a number of seconds > 0.
        """
        return await _dispatch.dispatch_async(self._build(sender, named, queue, deadline))

    async def collect_async(
        self,
        sender: Any,
        *,
        queue: QueueChoice = "auto",
        deadline: float | Unset | None = UNSET,
        **named: Any,
    ) -> Collected:
        """
        Fire and gather every listener's response.

        Unlike :meth:`send_async`, the collector decides about the short-term
        queue, and by default (``queue="auto"``) uses it when the signal has
        more live listeners than ``PATCHBOARD["COLLECT_QUEUE_THRESHOLD"]``.
        Nothing is aggregated: ``sum(collected.values())`` is yours to write.

        ``deadline`` (seconds from now; by default
        ``PATCHBOARD["DEFAULT_DEADLINE"]``, None for none) is the budget of
        everything under this call: it returns by then, whatever its
        listeners do. Calls still running are cancelled (a sync listener's
        thread abandoned) and end as ``"timeout"``, calls not yet started as
        ``"expired"``; fallbacks and ``on_error`` apply as usual, and
        ``Collected.deadline_hit`` says so. A listener's own ``timeout`` is
        cut to what is left, a queued call never waits past it, and a
        listener that dispatches another signal hands it the rest. Under a
        deadline a sync listener runs in a listener thread, like one with a
        ``timeout``. Background listeners are not bound by it.

        Raises the errors :meth:`send_async` raises, for the same reasons.
        """
        return await _dispatch.dispatch_async(self._build(sender, named, queue, deadline))

    def stream_async(
        self,
        sender: Any,
        *,
        queue: QueueChoice = False,
        deadline: float | Unset | None = UNSET,
        **named: Any,
    ) -> Stream:
        """
        Like :meth:`collect_async`, but yield each listener call's outcome as
        soon as the call ends (see :class:`~patchboard.Stream`)::

            async for outcome in signal.stream_async(sender=Cart, cart=cart, deadline=1.0):
                ...

        Leaving the loop early cancels and withdraws every call still
        pending. On an ordered signal the listeners still run one at a time,
        in priority order. ``queue`` defaults to ``False`` (``"auto"`` as
        for a collect, ``True``).

        Raises:
            ImproperlyConfigured: ``queue=True`` on an ordered signal.
            TypeError, ValueError: ``deadline`` is not a number of seconds > 0.
        """
        dispatch = self._build(sender, named, queue, deadline)
        return Stream._of(dispatch)

    def send_sync(
        self,
        sender: Any,
        *,
        queue: QueueChoice = False,
        deadline: float | None = None,
        **named: Any,
    ) -> Collected:
        """
        The sync twin of :meth:`send_async`, for WSGI views, management
        commands and task workers.

        Sync listeners run in this thread, in priority order, and background
        listeners enqueue here, so both see the caller's transaction; a sync
        listener with a ``timeout`` (or ``thread_sensitive=False``, or under a
        ``deadline``) runs in a listener thread meanwhile, and is waited for
        until its limit. When a listener needs an event loop (an async
        listener, a timed sync one with a breaker, the short-term queue), the
        whole dispatch runs through asgiref's ``async_to_sync``.

        Raises:
            SyncCallInEventLoop: called from a thread running an event loop.
            Exception: as :meth:`send_async`.
        """
        dispatch = self._build(sender, named, queue, deadline)  # a bad deadline is named first
        check_no_loop("send_sync")
        return _dispatch.dispatch_sync(dispatch)

    def collect(
        self,
        sender: Any,
        *,
        queue: QueueChoice = "auto",
        deadline: float | Unset | None = UNSET,
        **named: Any,
    ) -> Collected:
        """
        The sync twin of :meth:`collect_async` (see :meth:`send_sync`).

        Raises:
            SyncCallInEventLoop: called from a thread running an event loop.
            Exception: as :meth:`collect_async`.
        """
        dispatch = self._build(sender, named, queue, deadline)  # a bad deadline is named first
        if _get_running_loop() is not None:  # check_no_loop, inlined: the hot path
            raise SyncCallInEventLoop("collect")
        return _dispatch.dispatch_sync(dispatch)

    def _build(
        self,
        sender: Any,
        named: dict[str, Any],
        queue: QueueChoice,
        deadline: float | Unset | None,
    ) -> Dispatch:
        """
        The dispatch of one verb call: its deadline in seconds (``UNSET``:
        ``PATCHBOARD["DEFAULT_DEADLINE"]``), its live listeners and the queue
        they use (a bad ``queue`` is refused with no listeners too).

        Raises:
            TypeError, ValueError: ``deadline`` is not a number of seconds > 0.
            SettingError: ``PATCHBOARD`` is invalid.
            ImproperlyConfigured, ValueError: a bad ``queue`` (see ``queue_for``).
        """
        settings = state.settings
        if deadline is UNSET:
            settings = settings or get_settings()
            until = settings.default_deadline
        else:
            until = None if deadline is None else seconds("deadline", deadline)
            settings = settings or get_settings()
        resolved = self._live(sender)
        listeners = resolved.listeners
        ordered = self.ordered
        if queue == "auto" and (ordered or len(listeners) <= settings.collect_queue_threshold):
            short_term = None  # queue_for's answer, without the call (the hot path's case)
        else:
            short_term = queue_for(queue, len(listeners), ordered=ordered)
        return Dispatch(self, sender, named, listeners, resolved, until, short_term, ordered)

    # -- Django's verbs on an ordered signal (see __init__) -------------------------------

    def _ordered(self, sender: Any, named: dict[str, Any]) -> Dispatch:
        return Dispatch(self, sender, named, self._live(sender).listeners, ordered=True)

    def _send_in_order(self, sender: Any, **named: Any) -> Responses:
        """Django's ``send()``, one listener at a time by priority."""
        return _dispatch.send_in_order(self._ordered(sender, named), robust=False)

    def _send_robust_in_order(self, sender: Any, **named: Any) -> Responses:
        """Django's ``send_robust()``, one listener at a time by priority."""
        return _dispatch.send_in_order(self._ordered(sender, named), robust=True)

    async def _asend_in_order(self, sender: Any, **named: Any) -> Responses:
        """Django's ``asend()``, one listener at a time by priority."""
        return await _dispatch.asend_in_order(self._ordered(sender, named), robust=False)

    async def _asend_robust_in_order(self, sender: Any, **named: Any) -> Responses:
        """Django's ``asend_robust()``, one listener at a time by priority."""
        return await _dispatch.asend_in_order(self._ordered(sender, named), robust=True)
