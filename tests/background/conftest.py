"""Fixtures shared by the tests of background listeners."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

try:
    from django.tasks import task_backends
    from django.tasks.backends.dummy import DummyBackend
except ImportError:  # Django 5.2, with the django-tasks backport
    from django_tasks import task_backends  # type: ignore[no-redef]
    from django_tasks.backends.dummy import DummyBackend  # type: ignore[no-redef]


@pytest.fixture
def dummy(settings: Any) -> Iterator[DummyBackend]:
    """Background listeners enqueue to the DummyBackend (no outbox: ``"auto"`` is off for it)."""
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy"}}
    backend = task_backends["dummy"]
    assert isinstance(backend, DummyBackend)
    backend.clear()
    yield backend
    backend.clear()
