"""
The one module that touches Django's and asgiref's private internals.

patchboard's ``Signal`` is a subclass of ``django.dispatch.Signal`` and must
compute exactly the keys Django computes, read the receivers list Django
keeps, and clean it up as Django does. None of that is public API: the
receiver tuple is ``(lookup_key, receiver_ref, sender_ref, is_async)`` on
Django 6 and ``(lookup_key, receiver_ref, is_async)`` on 5.2. Everything that
depends on such details is here, so a Django upgrade changes this file only
(Django's own dispatch and signals suites, run with the swap by
``make test``, tell when it must).

From asgiref: whether an event loop is one that ``async_to_sync`` made for a
single sync call (it is closed when that call returns).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from asgiref.sync import AsyncToSync
from django.dispatch import Signal as DjangoSignal
from django.dispatch import dispatcher

# Each ``type: ignore[attr-defined]`` here reads a private member of Django's
# that django-stubs does not declare (no type can say it exists).
make_id: Callable[[object], Hashable] = dispatcher._make_id  # type: ignore[attr-defined]
"""Django's receiver and sender key: patchboard must compute exactly the same keys."""

NONE_ID: Hashable = make_id(None)
"""The sender key of a receiver connected for any sender."""


def lookup_key(receiver: object, sender: object, dispatch_uid: Hashable | None) -> Hashable:
    """The key Django files a connection under (``disconnect`` finds it by this key)."""
    return (dispatch_uid or make_id(receiver), make_id(sender))


def entries(receivers: list[Any]) -> Iterator[tuple[Hashable, Any, Any]]:
    """
    ``(sender_key, receiver_ref, sender_ref)`` for each entry of a signal's
    ``receivers`` list; ``sender_ref`` is None on Django 5.2, which keeps none.
    ``receiver_ref`` is a weak reference, or the receiver itself (``weak=False``).
    """
    for entry in receivers:
        yield entry[0][1], entry[1], entry[2] if len(entry) == 4 else None


def resolve(ref: Any) -> Any:
    """The receiver an entry holds: dereferenced if weak (None once collected)."""
    return ref() if isinstance(ref, weakref.ReferenceType) else ref


def filed_under(signal: DjangoSignal, key: Hashable) -> Any:
    """The live receiver ``signal`` has filed under lookup ``key``, or None."""
    for entry in list(signal.receivers):
        if entry[0] == key:
            return resolve(entry[1])
    return None


def holds(signal: DjangoSignal, receiver: object, sender_key: Hashable | None) -> bool:
    """
    Whether ``signal`` has ``receiver`` connected, for ``sender_key`` (a
    :func:`make_id` of a sender) or, when it is None, for any sender.
    """
    for entry_sender, ref, _ in entries(list(signal.receivers)):
        if resolve(ref) is receiver and (
            sender_key is None or entry_sender in (NONE_ID, sender_key)
        ):
            return True
    return False


def clear_dead_receivers(signal: DjangoSignal) -> None:
    """Drop the entries of collected receivers, as Django does lazily."""
    with signal.lock:
        signal._clear_dead_receivers()  # type: ignore[attr-defined]


def dead_receiver_flag(signal: DjangoSignal) -> Callable[[], None]:
    """
    What marks ``signal``'s receivers list as holding dead entries (Django
    cleans them up, and patchboard drops its cached resolution, on next use).
    """
    # Django 6 calls it _flag_dead_receivers, 5.2 _remove_receiver.
    flag: Callable[[], None] | None = getattr(signal, "_flag_dead_receivers", None)
    if flag is None:
        flag = signal._remove_receiver  # type: ignore[attr-defined]
    return flag


def under_djangos_name(connect: Callable[..., Any]) -> Callable[..., Any]:
    """
    Report ``connect`` under the module of Django's ``Signal.connect``.

    Django's lazy-reference system check (``signals.E001``, "a model signal
    has a receiver for a model that isn't installed") recognises a pending
    ``post_save.connect(handler, sender="app.Missing")`` by the module and
    name of the connect method that ``ModelSignal`` deferred; a subclass's
    override would be reported as the vaguer ``models.E022``.
    """
    connect.__module__ = DjangoSignal.connect.__module__
    return connect


def log_robust_failure(signal: DjangoSignal, receiver: object, error: Exception) -> None:
    """Log a receiver's error as Django's ``send_robust()`` does."""
    signal._log_robust_failure(receiver, error)  # type: ignore[attr-defined]


def is_temporary_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """
    Whether ``loop`` was made by asgiref's ``async_to_sync`` for one sync call:
    it closes when that call returns, so nothing bound to it may outlive the call.
    """
    return loop in AsyncToSync.loop_thread_executors
