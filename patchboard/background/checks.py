"""
System checks for background listeners: what the configured Tasks backend
cannot do for them is reported at start-up, in the web process and in the
worker (whose management command runs the checks too).

``patchboard.E020``
    ``PATCHBOARD["BACKGROUND"]["BACKEND"]`` is not a usable ``TASKS`` backend.
``patchboard.E021``
    A background listener's ``queue_name`` is not one of the backend's ``QUEUES``.
``patchboard.E022``
    A background listener has a ``priority`` and the backend cannot prioritise.
``patchboard.W020``
    A background listener has a ``breaker`` and the backend cannot defer
    tasks (``supports_defer``): an open circuit makes it give up instead of
    rescheduling.
``patchboard.W021``
    A background listener's signal has no name a worker process can share
    (it is neither named, nor Django's, nor held by a module).

Nothing is checked until a background listener connects.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from patchboard._config import SettingError, get_settings
from patchboard.background import framework
from patchboard.background.registry import is_process_local, registrations

E020_ID = "patchboard.E020"
E021_ID = "patchboard.E021"
E022_ID = "patchboard.E022"
W020_ID = "patchboard.W020"
W021_ID = "patchboard.W021"

_BACKEND_SETTING = 'PATCHBOARD["BACKGROUND"]["BACKEND"]'


def backend_error(alias: str, problem: str) -> Error:
    """``patchboard.E020``: the backend alias cannot be used."""
    return Error(
        f"{_BACKEND_SETTING} is {alias!r}, which is not a usable Tasks backend: {problem}",
        hint="Name an alias of settings.TASKS, or add the backend there.",
        obj="settings.PATCHBOARD",
        id=E020_ID,
    )


def queue_error(listener: str, queue_name: str, alias: str, queues: set[str]) -> Error:
    """``patchboard.E021``: the listener's queue is not one of the backend's."""
    return Error(
        f"background listener {listener} enqueues to queue_name={queue_name!r}, which the "
        f"Tasks backend {alias!r} does not have (QUEUES: {sorted(queues)!r})",
        hint=f'Add {queue_name!r} to settings.TASKS["{alias}"]["QUEUES"], or change queue_name.',
        obj=listener,
        id=E021_ID,
    )


def priority_error(listener: str, priority: int, alias: str) -> Error:
    """``patchboard.E022``: the backend cannot honour the listener's priority."""
    return Error(
        f"background listener {listener} has priority={priority!r}, but the Tasks backend "
        f"{alias!r} does not support task priorities (supports_priority is False)",
        hint="Drop the priority, or use a backend that supports priorities.",
        obj=listener,
        id=E022_ID,
    )


def defer_warning(listener: str, alias: str) -> Warning:
    """``patchboard.W020``: an open circuit cannot reschedule on this backend."""
    return Warning(
        f"background listener {listener} has a circuit breaker, but the Tasks backend "
        f"{alias!r} cannot defer tasks (supports_defer is False): while its circuit is "
        f"open, calls give up instead of being rescheduled for the circuit's retry time",
        hint="Use a backend that supports run_after (django-tasks-db, RQ, Celery).",
        obj=listener,
        id=W020_ID,
    )


def signal_warning(listener: str, key: str) -> Warning:
    """``patchboard.W021``: the signal cannot be named across processes."""
    return Warning(
        f"background listener {listener} is connected to a signal that a worker process "
        f"cannot name ({key}): it is neither a named patchboard.Signal, nor one of "
        f"Django's, nor held by a module, so only an in-process backend can run it",
        hint="Define the signal at module level, or give it a name: Signal(name=...).",
        obj=listener,
        id=W021_ID,
    )


@register()
def check_background(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    entries = registrations()
    if not entries:
        return []  # No background listener has connected: nothing to check.
    api = framework.api()
    try:
        alias = get_settings().background.backend
    except SettingError:
        return []  # Reported as patchboard.E001.
    try:
        backend = api.task_backends[alias]
    except ImproperlyConfigured as exc:
        return [backend_error(alias, str(exc))]
    messages: list[CheckMessage] = []
    seen: set[str] = set()
    for entry in entries:
        listener = entry.listener
        label, options = listener.label, listener.options
        key, signal = entry.key, entry.signal
        if key is not None and is_process_local(key, signal):
            messages.append(signal_warning(label, key))
        if label in seen:
            continue
        seen.add(label)
        queue_name = options.queue_name or api.DEFAULT_TASK_QUEUE_NAME
        if backend.queues and queue_name not in backend.queues:
            messages.append(queue_error(label, queue_name, alias, backend.queues))
        if options.priority and not backend.supports_priority:
            messages.append(priority_error(label, options.priority, alias))
        if options.breaker is not None and not backend.supports_defer:
            messages.append(defer_warning(label, alias))
    return messages
