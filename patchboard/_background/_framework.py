"""
Django's Tasks framework, found on first use: ``django.tasks`` (Django >= 6.0)
or, on Django 5.2, the ``django-tasks`` backport.

Both are optional for patchboard (only background listeners need them), so
nothing here is imported until a background listener connects or a task runs.

Raises :class:`UnusableBackend` (an ``ImproperlyConfigured``) for a
``PATCHBOARD["BACKGROUND"]["BACKEND"]`` that names no usable backend.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import SimpleNamespace
from typing import Any

from django.core.exceptions import ImproperlyConfigured


@functools.cache
def api() -> Any:
    """
    The framework's names patchboard uses: ``task``, ``task_backends``,
    ``InvalidTaskBackend``, ``DEFAULT_TASK_QUEUE_NAME``, ``TASK_MIN_PRIORITY``,
    ``TASK_MAX_PRIORITY``.

    Raises:
        ImproperlyConfigured: neither ``django.tasks`` nor the backport is installed.
    """
    # Optional dependencies, imported lazily on purpose (see the module docstring).
    try:
        from django.tasks import task, task_backends
        from django.tasks.base import (
            DEFAULT_TASK_QUEUE_NAME,
            TASK_MAX_PRIORITY,
            TASK_MIN_PRIORITY,
        )
        from django.tasks.exceptions import InvalidTaskBackend
    except ImportError:  # Django 5.2, with the django-tasks backport
        try:
            # The backport may be installed beside Django 6 (django-tasks-rq needs it):
            # mypy then sees its types, which are not Django's (hence "assignment").
            from django_tasks import (  # type: ignore[import-not-found, no-redef, assignment, unused-ignore]
                task,
                task_backends,
            )
            from django_tasks.base import (  # type: ignore[import-not-found, no-redef, unused-ignore]
                DEFAULT_TASK_QUEUE_NAME,
                TASK_MAX_PRIORITY,
                TASK_MIN_PRIORITY,
            )
            from django_tasks.exceptions import (  # type: ignore[import-not-found, no-redef, assignment, unused-ignore]
                InvalidTaskBackendError as InvalidTaskBackend,
            )
        except ImportError:
            raise ImproperlyConfigured(
                "mode='background' needs Django's Tasks framework: Django >= 6.0, or on "
                "Django 5.2 the backport (pip install 'django-patchboard[tasks-backport]')"
            ) from None
    return SimpleNamespace(
        task=task,
        task_backends=task_backends,
        InvalidTaskBackend=InvalidTaskBackend,
        DEFAULT_TASK_QUEUE_NAME=DEFAULT_TASK_QUEUE_NAME,
        TASK_MIN_PRIORITY=TASK_MIN_PRIORITY,
        TASK_MAX_PRIORITY=TASK_MAX_PRIORITY,
    )


BACKEND_SETTING = 'PATCHBOARD["BACKGROUND"]["BACKEND"]'


class UnusableBackend(ImproperlyConfigured):
    """``PATCHBOARD["BACKGROUND"]["BACKEND"]`` names a Tasks backend that cannot be used."""

    def __init__(self, alias: str, problem: str) -> None:
        super().__init__(
            f"{BACKEND_SETTING} is {alias!r}, which is not a usable Tasks backend: {problem}"
        )
        self.alias = alias
        self.problem = problem


def backend(alias: str) -> Any:
    """
    The Tasks backend ``alias`` names, built by Django on first use.

    Raises:
        UnusableBackend: ``TASKS`` has no such alias (``TASKS = {}`` has none),
            or building its backend failed (any error: its entry in ``TASKS``
            is the project's code and configuration).
        ImproperlyConfigured: Django's Tasks framework is not installed.
    """
    backends = api().task_backends
    try:
        return backends[alias]
    except ImproperlyConfigured as exc:
        raise UnusableBackend(alias, str(exc)) from exc
    except Exception as exc:
        raise UnusableBackend(alias, f"{type(exc).__name__}: {exc}") from exc


IN_DATABASE_OR_PROCESS: tuple[tuple[str, str], ...] = (
    ("django_tasks_db", "DatabaseBackend"),
    ("django.tasks.backends.immediate", "ImmediateBackend"),
    ("django.tasks.backends.dummy", "DummyBackend"),
    ("django_tasks.backends.immediate", "ImmediateBackend"),
    ("django_tasks.backends.dummy", "DummyBackend"),
)
"""Backends whose enqueue needs no outbox (module, class): django-tasks-db writes its
task row in the sender's transaction; the immediate and dummy backends stay in process."""


def outside_database(backend: object) -> bool:
    """
    Whether enqueueing to ``backend`` leaves the database for a broker (RQ,
    Celery, ...): what ``PATCHBOARD["BACKGROUND"]["OUTBOX"] = "auto"`` turns
    the outbox on for. Decided by class (subclasses included), never by the
    alias or the ``BACKEND`` string; a class whose package is not installed
    cannot be the backend's.
    """
    kind: type = type(backend)
    return _outside(kind)


@functools.cache  # Once per backend class: it is asked on every background send.
def _outside(kind: type) -> bool:
    for module, name in IN_DATABASE_OR_PROCESS:
        if importlib.util.find_spec(module.partition(".")[0]) is None:
            continue
        try:
            # Optional packages, imported only when one is installed (see the module docstring).
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if issubclass(kind, cls):
            return False
    return True
