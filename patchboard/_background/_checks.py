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
``patchboard.W022``
    ``settings.TASKS`` is not set, so Django's default, the ImmediateBackend,
    runs background listeners inside the request that sends the signal.
``patchboard.W023``
    The outbox is on (``PATCHBOARD["BACKGROUND"]["OUTBOX"]``) but a database
    has no outbox table: patchboard's migration is not applied there. A
    warning, not an error: ``migrate`` runs the checks too, and must run.

Nothing is checked until a background listener connects. The checks never
build the ``run_listener`` task (start-up builds it only when its backend
works), so a broken ``TASKS`` is reported here instead of crashing
``django.setup()``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from patchboard._background import _framework, _outbox
from patchboard._background._registry import is_process_local, registrations
from patchboard._config import SettingError, get_settings

E020_ID = "patchboard.E020"
E021_ID = "patchboard.E021"
E022_ID = "patchboard.E022"
W020_ID = "patchboard.W020"
W021_ID = "patchboard.W021"
W022_ID = "patchboard.W022"
W023_ID = "patchboard.W023"

W022 = Warning(
    "background listeners are connected, but settings.TASKS is not set: Django's default "
    "Tasks backend, the ImmediateBackend, runs each task as it is enqueued, so background "
    "listeners run inside the request that sends the signal, not in a worker",
    hint=(
        "Set TASKS to a backend that a worker runs (e.g. django-tasks-db's "
        '"django_tasks_db.DatabaseBackend", with its db_worker command), or set it to the '
        "ImmediateBackend explicitly to keep running them in the request."
    ),
    obj="settings.TASKS",
    id=W022_ID,
)


def backend_error(error: _framework.UnusableBackend) -> Error:
    """``patchboard.E020``: the backend alias cannot be used."""
    return Error(
        str(error),
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


def outbox_table_warning(alias: str) -> Warning:
    """``patchboard.W023``: the outbox is on and database ``alias`` lacks its table."""
    return Warning(
        f"the outbox of background listeners is on, but database {alias!r} has no "
        f"patchboard_outbox table: a background listener sent inside a transaction "
        f"on it fails to enqueue",
        hint=f"Run: python manage.py migrate patchboard --database {alias}",
        obj="settings.PATCHBOARD",
        id=W023_ID,
    )


def check_outbox_tables(databases: Any = None) -> list[CheckMessage]:
    """
    ``patchboard.W023`` for each database without the outbox table (those
    the checks were asked about, else every one the outbox may be on). A
    database that cannot be reached is left to the checks that need it.
    """
    try:
        aliases = _outbox.databases() if databases is None else list(databases)
    except LookupError:
        return []  # patchboard is not an installed app: nothing to migrate.
    missing: list[CheckMessage] = []
    for alias in aliases:
        try:
            if not _outbox.has_table(alias):
                missing.append(outbox_table_warning(alias))
        except (DatabaseError, ImproperlyConfigured):
            continue  # Unreachable, or a placeholder (DATABASES = {}): not this check's to say.
    return missing


@register()
def check_background(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    entries = registrations()
    if not entries:
        return []  # No background listener has connected: nothing to check.
    api = _framework.api()
    try:
        alias = get_settings().background.backend
    except SettingError:
        return []  # Reported as patchboard.E001.
    try:
        backend = _framework.backend(alias)
    except _framework.UnusableBackend as exc:
        return [backend_error(exc)]
    # Unset, not merely the ImmediateBackend: a project that names it chose it.
    # (is_overridden is documented API that django-stubs does not declare.)
    explicit = settings.is_overridden("TASKS")  # type: ignore[misc]
    messages: list[CheckMessage] = [] if explicit else [W022]
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
    if _outbox.enabled(alias):
        messages.extend(check_outbox_tables(kwargs.get("databases")))
    return messages
