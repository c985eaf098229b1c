"""
``patchboard.Signal``: a drop-in ``django.dispatch.Signal`` with an async
dispatch engine.

Django's verbs (``send``, ``send_robust``, ``asend``, ``asend_robust``,
``connect``, ``disconnect``, ``has_listeners``) keep Django's behaviour. The
new verbs come in pairs, async first:

``send_async`` / ``send_sync``
    Fire and forget: run inline listeners, enqueue background ones, return
    a report (a :class:`~patchboard.Collected`) of what happened to each.
``collect_async`` / ``collect``
    Fire and gather every listener's response into a ``Collected``.

Both apply each listener's options (timeout, error policy, breaker, ...);
both run listeners concurrently, or one at a time in priority order on an
ordered signal (``Signal(ordered=True)``).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from asgiref.sync import async_to_sync, sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal as DjangoSignal

from patchboard import dispatch
from patchboard.conf import get_settings
from patchboard.exceptions import SyncCallInEventLoop
from patchboard.listeners import (
    DEFAULT_OPTIONS,
    NONE_ID,
    Listener,
    _make_id,
    connect,
    forget,
    make_options,
)
from patchboard.log import name_signal
from patchboard.outcomes import Collected

if TYPE_CHECKING:
    from patchboard.queue import ShortTermQueue

QueueChoice: TypeAlias = Literal["auto"] | bool
_Entry: TypeAlias = tuple[Any, Any, "Listener | None"]
"""A resolved receiver: (its reference or itself, its sender reference, its plain wrapper)."""

_RESOLVED_SENDERS = 256
"""How many senders' resolved receivers a signal caches before it starts over."""

_plain: weakref.WeakKeyDictionary[Callable[..., Any], Listener] = weakref.WeakKeyDictionary()
"""Receivers connected without options, wrapped once with the default options."""


def _as_listener(receiver: Callable[..., Any]) -> Listener:
    if type(receiver) is Listener:
        return receiver
    try:
        return _plain[receiver]
    except KeyError:
        listener = Listener(receiver, DEFAULT_OPTIONS, weak=True)
        _plain[receiver] = listener
        return listener
    except TypeError:  # not weak-referenceable: connected with weak=False
        return Listener(receiver, DEFAULT_OPTIONS, weak=False)


class Signal(DjangoSignal):
    """
    A Django signal with patchboard's dispatch verbs and listener options.

    ``ordered=True`` makes a side-effect signal: its listeners run one at a
    time, highest ``priority`` first, ties in connect order, never
    concurrently and never queued. ``name`` is how logs refer to the signal.
    """

    def __init__(
        self, use_caching: bool = False, *, ordered: bool = False, name: str | None = None
    ) -> None:
        super().__init__(use_caching=use_caching)
        self.ordered = ordered
        self._priorities: dict[Hashable, int] = {}
        # Per sender key: (the receivers list it was resolved from, its length, entries).
        self._resolved: dict[Hashable, tuple[list[Any], int, list[_Entry]]] = {}
        if name is not None:
            name_signal(self, name)

    def __repr__(self) -> str:
        from patchboard.log import signal_label

        kind = "ordered " if self.ordered else ""
        return f"<{kind}Signal {signal_label(self)} with {len(self.receivers)} receivers>"

    # -- connecting ----------------------------------------------------------------

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
        wrapped in a :class:`~patchboard.listeners.Listener` first.

        Raises:
            TypeError, ValueError: a non-callable receiver or a bad option.
            ImproperlyConfigured: an option an ordered signal cannot honour.
        """
        if options:
            made = make_options(receiver, [self], **options)
            connect(self, receiver, made, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
            return
        priority = 0
        if isinstance(receiver, Listener):
            priority = receiver.options.priority
        super().connect(receiver, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        self._resolved.clear()
        if priority or self._priorities:
            key = (dispatch_uid or _make_id(receiver), _make_id(sender))
            with self.lock:
                self._priorities.setdefault(key, priority)
                # Stable: equal priorities keep connect order.
                self.receivers.sort(key=lambda entry: -self._priorities.get(entry[0], 0))
                self.sender_receivers_cache.clear()

    def disconnect(
        self,
        receiver: Callable[..., Any] | None = None,
        sender: Any = None,
        dispatch_uid: Hashable | None = None,
    ) -> bool:
        """Disconnect as Django does; a function connected with options is found by itself."""
        disconnected = super().disconnect(receiver, sender=sender, dispatch_uid=dispatch_uid)
        self._resolved.clear()
        if disconnected:
            key = (dispatch_uid or _make_id(receiver), _make_id(sender))
            self._priorities.pop(key, None)
            forget(self, key)
        return disconnected

    def listeners(self, sender: Any = None) -> list[Listener]:
        """The live listeners for ``sender``, in dispatch (priority, then connect) order."""
        receivers = self.receivers
        if not receivers:
            return []
        if self._dead_receivers:  # type: ignore[attr-defined]
            with self.lock:
                self._clear_dead_receivers()
            receivers = self.receivers
        senderkey = _make_id(sender)
        cached = self._resolved.get(senderkey)
        if cached is None or cached[0] is not receivers or cached[1] != len(receivers):
            cached = (receivers, len(receivers), self._resolve(receivers, senderkey))
            if len(self._resolved) >= _RESOLVED_SENDERS:
                self._resolved.clear()  # Senders come and go (instances): stay bounded.
            self._resolved[senderkey] = cached
        found = []
        for ref, sender_ref, wrapped in cached[2]:
            if sender_ref is not None and sender_ref() is None:
                continue
            receiver = ref() if isinstance(ref, weakref.ReferenceType) else ref
            if receiver is not None:
                found.append(wrapped or receiver)
        return found

    def _resolve(self, receivers: list[Any], senderkey: Hashable) -> list[_Entry]:
        # The entries for one sender, each with the Listener that wraps a plain
        # receiver (it holds the function weakly, so caching it keeps nothing alive).
        entries: list[_Entry] = []
        for entry in receivers:
            # (key, ref, sender_ref, is_async) on Django 6; no sender_ref on 5.2.
            (_, r_senderkey), ref = entry[0], entry[1]
            if r_senderkey != NONE_ID and r_senderkey != senderkey:
                continue
            sender_ref = entry[2] if len(entry) == 4 else None
            receiver = ref() if isinstance(ref, weakref.ReferenceType) else ref
            if receiver is None:
                continue
            wrapped = None if type(receiver) is Listener else _as_listener(receiver)
            if not isinstance(ref, weakref.ReferenceType) and wrapped is None:
                ref = receiver
            entries.append((ref, sender_ref, wrapped))
        return entries

    def _clear_dead_receivers(self) -> None:
        super()._clear_dead_receivers()  # type: ignore[misc]
        self._resolved.clear()

    # -- patchboard's verbs ----------------------------------------------------------

    async def send_async(
        self, sender: Any, *, queue: QueueChoice = False, **named: Any
    ) -> Collected:
        """
        Fire and forget: call every listener and return a report of each call.

        Inline listeners run concurrently in tasks owned by this call (one at
        a time on an ordered signal); the call returns when they are done.
        Background listeners are enqueued as ``django.tasks`` tasks; their
        outcome is ``"enqueued"`` with the ``task_id``. ``queue=True`` sends
        inline listeners through the short-term queue.

        Raises:
            Exception: the error of a listener whose ``on_error`` is
                ``"raise"``, after the other listeners were cancelled.
            ImproperlyConfigured: ``queue=True`` on an ordered signal.
        """
        return await self._dispatch(sender, named, queue)

    async def collect_async(
        self, sender: Any, *, queue: QueueChoice = "auto", **named: Any
    ) -> Collected:
        """
        Fire and gather every listener's response.

        Unlike :meth:`send_async`, the collector decides about the short-term
        queue, and by default (``queue="auto"``) uses it when the signal has
        more live listeners than ``PATCHBOARD["COLLECT_QUEUE_THRESHOLD"]``.
        Nothing is aggregated: ``sum(collected.values())`` is yours to write.

        Raises:
            Exception: the error of a listener whose ``on_error`` is
                ``"raise"``, after the other listeners were cancelled.
            ImproperlyConfigured: ``queue=True`` on an ordered signal.
        """
        return await self._dispatch(sender, named, queue)

    def send_sync(self, sender: Any, *, queue: QueueChoice = False, **named: Any) -> Collected:
        """
        The sync twin of :meth:`send_async`, for WSGI views, management
        commands and task workers.

        Sync listeners run in this thread, in priority order, and background
        listeners enqueue here, so both see the caller's transaction. When any
        listener needs the event loop (async, ``timeout``, queue), the whole
        dispatch runs through asgiref's ``async_to_sync``.

        Raises:
            SyncCallInEventLoop: called from a thread running an event loop.
            Exception: as :meth:`send_async`.
        """
        return self._dispatch_sync("send_sync", sender, named, queue)

    def collect(self, sender: Any, *, queue: QueueChoice = "auto", **named: Any) -> Collected:
        """
        The sync twin of :meth:`collect_async` (see :meth:`send_sync`).

        Raises:
            SyncCallInEventLoop: called from a thread running an event loop.
            Exception: as :meth:`collect_async`.
        """
        return self._dispatch_sync("collect", sender, named, queue)

    # -- Django's verbs on ordered signals ---------------------------------------------

    def send(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Django's ``send()``; on an ordered signal, listeners run one at a time by priority."""
        if not self.ordered:
            return super().send(sender, **named)
        return self._send_ordered(sender, named, robust=False)

    def send_robust(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Django's ``send_robust()``; on an ordered signal, one at a time by priority."""
        if not self.ordered:
            return super().send_robust(sender, **named)
        return self._send_ordered(sender, named, robust=True)

    async def asend(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Django's ``asend()``; on an ordered signal, one at a time by priority."""
        if not self.ordered:
            return await super().asend(sender, **named)
        return await self._asend_ordered(sender, named, robust=False)

    async def asend_robust(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Django's ``asend_robust()``; on an ordered signal, one at a time by priority."""
        if not self.ordered:
            return await super().asend_robust(sender, **named)
        return await self._asend_ordered(sender, named, robust=True)

    def _send_ordered(
        self, sender: Any, named: dict[str, Any], *, robust: bool
    ) -> list[tuple[Callable[..., Any], Any]]:
        responses = []
        for listener in self.listeners(sender):
            receiver = listener if listener.options is not DEFAULT_OPTIONS else listener.receiver
            if receiver is None:
                continue
            call = async_to_sync(receiver) if listener.is_async else receiver
            responses.append(_call_django_style(receiver, call, self, sender, named, robust))
        return responses

    async def _asend_ordered(
        self, sender: Any, named: dict[str, Any], *, robust: bool
    ) -> list[tuple[Callable[..., Any], Any]]:
        responses = []
        for listener in self.listeners(sender):
            receiver = listener if listener.options is not DEFAULT_OPTIONS else listener.receiver
            if receiver is None:
                continue
            if listener.is_async:
                try:
                    response = await receiver(signal=self, sender=sender, **named)
                except Exception as err:
                    if not robust:
                        raise
                    self._log_robust_failure(receiver, err)  # type: ignore[attr-defined]
                    response = err
                responses.append((receiver, response))
            else:
                call = sync_to_async(_call_django_style, thread_sensitive=True)
                responses.append(await call(receiver, receiver, self, sender, named, robust))
        return responses

    # -- the engine --------------------------------------------------------------------

    def _queue_for(self, choice: QueueChoice, count: int) -> ShortTermQueue | None:
        if choice is True:
            if self.ordered:
                raise ImproperlyConfigured(
                    "queue=True: an ordered signal runs its listeners one at a time, "
                    "in priority order, never through the short-term queue"
                )
        elif choice == "auto":
            if self.ordered or count <= get_settings().collect_queue_threshold:
                return None
        elif choice is False:
            return None
        else:
            raise ValueError(f"queue must be 'auto', True or False, got {choice!r}")
        from patchboard.queue import get_queue

        return get_queue()

    async def _dispatch(self, sender: Any, named: dict[str, Any], queue: QueueChoice) -> Collected:
        listeners = self.listeners(sender)
        if not listeners:
            return Collected([])
        short_term = self._queue_for(queue, len(listeners))
        if self.ordered:
            outcomes = await dispatch.run_in_order(listeners, self, sender, named)
        else:
            outcomes = await dispatch.run_concurrently(listeners, self, sender, named, short_term)
        return dispatch.finish(self, sender, outcomes)

    def _dispatch_sync(
        self, method: str, sender: Any, named: dict[str, Any], queue: QueueChoice
    ) -> Collected:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise SyncCallInEventLoop(method)
        listeners = self.listeners(sender)
        if not listeners:
            return Collected([])
        if self._queue_for(queue, len(listeners)) is None and all(
            listener.batchable for listener in listeners
        ):
            return dispatch.finish(self, sender, dispatch.run_batch(listeners, self, sender, named))
        return async_to_sync(self._dispatch)(sender, named, queue)


def _call_django_style(
    receiver: Callable[..., Any],
    call: Callable[..., Any],
    signal: Signal,
    sender: Any,
    named: dict[str, Any],
    robust: bool,
) -> tuple[Callable[..., Any], Any]:
    try:
        return receiver, call(signal=signal, sender=sender, **named)
    except Exception as err:
        if not robust:
            raise
        signal._log_robust_failure(receiver, err)  # type: ignore[attr-defined]
        return receiver, err
