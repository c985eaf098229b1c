"""
Structured logging: the ``patchboard`` logger and the labels its events carry.

The library never configures structlog or the standard library's logging; it
asks structlog for a logger lazily, so the application's configuration, made
at any time before the first event, applies. Event names are stable
snake_case identifiers; context travels as keys (``signal``, ``listener``,
``sender``, ``elapsed_s``, ``limit_s``), never inside the event string.
"""

from __future__ import annotations

import weakref
from typing import Any

import structlog

_logger: Any = None


def logger() -> Any:
    """The ``patchboard`` structlog logger (a lazy proxy until first use)."""
    global _logger
    if _logger is None:
        _logger = structlog.get_logger("patchboard")
    return _logger


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


_signal_names: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def name_signal(signal: object, name: str) -> None:
    """Record the name logs use for ``signal``."""
    _signal_names[signal] = name


def signal_label(signal: object) -> str:
    """A signal's name in logs: its ``name=``, Django's own name, or its type and id."""
    name = _signal_names.get(signal)
    if name is None:
        _name_django_signals()
        name = _signal_names.get(signal)
    return name or f"{dotted(type(signal))}@{id(signal):#x}"


_django_named = False


def _name_django_signals() -> None:
    # Django's built-in signals have no name of their own; give them their
    # import path the first time one is logged.
    global _django_named
    if _django_named:
        return
    _django_named = True
    import django.core.signals
    import django.db.backends.signals
    import django.db.models.signals
    from django.dispatch import Signal

    modules = (
        django.core.signals,
        django.db.models.signals,
        django.db.backends.signals,
    )
    for module in modules:
        for attr, value in vars(module).items():
            if isinstance(value, Signal) and value not in _signal_names:
                _signal_names[value] = f"{module.__name__}.{attr}"
