"""
Which background listeners this process has, and how payloads name signals.

A worker runs a payload's listener only if that listener is connected, as a
background listener, to the payload's signal *in the worker's own process*:
the registry below is filled as listeners connect (``state.background``),
and nothing a payload names is ever imported or called otherwise. The same
registry says which classes a payload may name besides models: the classes
background listeners are connected for (their ``sender=`` filters).
"""

from __future__ import annotations

import dataclasses
import sys
import weakref
from typing import TYPE_CHECKING, Any

from patchboard._django import holds, make_id
from patchboard._listeners import Listener
from patchboard._log import local_label, signal_name
from patchboard._state import state

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal


class Refused(Exception):
    """A payload this worker will not run; the message says why."""


@dataclasses.dataclass(slots=True, eq=False)
class Registration:
    """A background listener connected to a signal in this process."""

    listener: Listener
    signal_ref: weakref.ReferenceType[DjangoSignal]
    sender_ref: weakref.ReferenceType[type] | None = None
    """The ``sender=`` filter when it is a class (an instance filter names no class)."""
    inline_copy: Listener | None = None

    @property
    def signal(self) -> DjangoSignal | None:
        return self.signal_ref()

    @property
    def sender_class(self) -> type | None:
        """The class the listener is connected for, if its sender filter is a class."""
        return None if self.sender_ref is None else self.sender_ref()

    @property
    def key(self) -> str | None:
        """The signal's :func:`signal_key`, or None once the signal is gone."""
        signal = self.signal_ref()
        return None if signal is None else signal_key(signal)

    def connected(self, *, sender: Any = None, any_sender: bool = True) -> bool:
        """Whether the listener is still connected to the signal (for ``sender``)."""
        signal = self.signal_ref()
        if signal is None:
            return False
        return holds(signal, self.listener, None if any_sender else make_id(sender))

    def inline(self) -> Listener | None:
        """
        The listener as the worker runs it: same function and options, but
        inline (and without the fallback, which background listeners reject).
        None once the function has been garbage collected.
        """
        if self.inline_copy is None:
            func = self.listener.receiver
            if func is None:
                return None
            options = dataclasses.replace(self.listener.options, mode="inline", fallback=None)
            self.inline_copy = Listener(func, options, weak=True)
        return self.inline_copy


def register(listener: Listener, signal: DjangoSignal, sender: Any = None) -> None:
    """
    Record that ``listener`` is connected to ``signal`` as a background
    listener, for ``sender`` (None: any sender).

    Called for every background listener as it connects; a worker runs only
    listeners found here and still connected. Registering twice is a no-op;
    an inline listener is ignored. A class ``sender`` becomes a class that
    payloads may name (:func:`sender_class`), held weakly as Django holds it.
    """
    if listener.options.mode != "background":
        return
    with state.lock:
        entries = [
            entry
            for entry in state.background.get(listener.label, [])
            if entry.signal_ref() is not None and entry.listener.receiver is not None
        ]
        if not any(e.listener is listener and e.signal_ref() is signal for e in entries):
            entries.append(
                Registration(
                    listener=listener,
                    signal_ref=weakref.ref(signal),
                    sender_ref=weakref.ref(sender) if isinstance(sender, type) else None,
                )
            )
        state.background[listener.label] = entries


def registrations() -> list[Registration]:
    """Every background listener still connected in this process, in connect order."""
    with state.lock:
        entries = [entry for group in state.background.values() for entry in group]
    return [entry for entry in entries if entry.connected()]


def sender_class(module: str, qualname: str) -> type | None:
    """
    The class named ``module`` + ``qualname`` that a background listener still
    connected in this process is connected for, or None.

    Besides models, these are the only classes a payload may name: finding
    one compares names with the classes listeners were connected for, so it
    never imports a module nor reads a module's attributes (a module's lazy
    ``__getattr__`` could import code).
    """
    for entry in registrations():
        found = entry.sender_class
        if found is not None and (found.__module__, found.__qualname__) == (module, qualname):
            return found
    return None


def candidates(path: str, key: str) -> list[Registration]:
    """
    The registrations a payload naming listener ``path`` and signal ``key`` may run.

    Raises:
        Refused: no such listener is connected, or not to that signal.
    """
    with state.lock:
        entries = list(state.background.get(path, ()))
    live = [entry for entry in entries if entry.connected()]
    if not live:
        raise Refused(
            "not connected as a background listener in this process (connect it "
            "where the worker imports it too, e.g. in AppConfig.ready())"
        )
    exact = [entry for entry in live if entry.key == key]
    if exact:
        return exact
    if len({id(entry.signal) for entry in live}) == 1:
        # One signal: unambiguous, even if another process spells its key differently.
        return live
    raise Refused("the listener is not connected to the payload's signal")


def pick(registrations: list[Registration], sender: Any) -> Registration:
    """
    The registration connected for ``sender``.

    Raises:
        Refused: none is.
    """
    for entry in registrations:
        if entry.connected(sender=sender, any_sender=False):
            return entry
    raise Refused("the listener is not connected for the payload's sender")


def signal_key(signal: object) -> str:
    """
    How a payload names ``signal``, the same in every process that has it.

    A named :class:`patchboard.Signal` goes by its name and Django's own
    signals by their import path; any other signal by the module attribute
    that holds it (the first in sorted order when several modules import it).
    A signal that no module holds, one made inside a function, gets a label
    that only means something in this process (system check
    ``patchboard.W021``).
    """
    name = signal_name(signal)
    if name is not None:
        return name
    found = state.signal_keys.get(signal)
    if found is None:
        # Once per signal: the scan reads every loaded module's namespace.
        found = state.signal_keys[signal] = _module_attribute(signal) or local_label(signal)
    return found


def is_process_local(key: str, signal: object) -> bool:
    """Whether ``key`` (made by :func:`signal_key`) only means something in this process."""
    return key == local_label(signal)


def _module_attribute(signal: object) -> str | None:
    for name in sorted(sys.modules):
        namespace = getattr(sys.modules.get(name), "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        attrs = sorted(attr for attr, value in list(namespace.items()) if value is signal)
        if attrs:
            return f"{name}.{attrs[0]}"
    return None
