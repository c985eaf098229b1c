"""
Structured logging: the ``patchboard`` logger and the labels its events carry.

The library never configures structlog or the standard library's logging; it
asks structlog for a logger lazily, so the application's configuration, made
at any time before the first event, applies. Event names are stable
snake_case identifiers; context travels as keys (``signal``, ``listener``,
``sender``, ``elapsed_s``, ``limit_s``), never inside the event string.
"""

from __future__ import annotations

import sys
from typing import Any

import structlog
from django.dispatch import Signal as DjangoSignal

from patchboard._state import state


def logger() -> Any:
    """The ``patchboard`` structlog logger (a lazy proxy until first use)."""
    log = state.logger
    if log is None:
        log = state.logger = structlog.get_logger("patchboard")
    return log


def dotted(obj: object) -> str:
    """``module.qualname`` of a function, class or callable object."""
    func = getattr(obj, "__func__", obj)
    module = getattr(func, "__module__", None) or type(func).__module__
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{qualname}"


def sender_label(sender: object) -> str | None:
    """How a sender appears in logs: a class by dotted path, an object by its type."""
    if sender is None:
        return None
    if isinstance(sender, type):
        return dotted(sender)
    return f"<{dotted(type(sender))} instance>"


def name_signal(signal: object, name: str) -> None:
    """Record the name logs (and background task payloads) use for ``signal``."""
    state.signal_names[signal] = name


def signal_name(signal: object) -> str | None:
    """The name given to ``signal`` (``Signal(name=...)``, or Django's import path), if any."""
    names = state.signal_names
    name = names.get(signal)
    if name is None:
        _name_django_signals()
        # "" marks a signal seen without a name: the scan above runs once per signal.
        name = names.setdefault(signal, "")
    return name or None


def local_label(signal: object) -> str:
    """A label for a signal without a name: its type and id (meaningful in this process only)."""
    return f"{dotted(type(signal))}@{id(signal):#x}"


def signal_label(signal: object) -> str:
    """A signal's name in logs: its ``name=``, Django's own name, or its type and id."""
    return signal_name(signal) or local_label(signal)


_DJANGO_SIGNAL_MODULES = (
    "django.core.signals",
    "django.db.models.signals",
    "django.db.backends.signals",
)


def _name_django_signals() -> None:
    # Django's built-in signals have no name of their own: they go by their
    # import path. Only modules already loaded are read: importing
    # django.db.models.signals here would make its ModelSignal subclass
    # Django's Signal before a project can swap patchboard's in.
    names = state.signal_names
    for module_name in _DJANGO_SIGNAL_MODULES:
        module = sys.modules.get(module_name)
        for attr, value in list(vars(module).items()) if module is not None else ():
            if isinstance(value, DjangoSignal) and not names.get(value):
                names[value] = f"{module_name}.{attr}"
