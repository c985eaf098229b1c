"""
Background listeners: listeners that run in a task worker, through Django's
Tasks framework (``django.tasks``, or the ``django-tasks`` backport on
Django 5.2).

The package: :mod:`.enqueue` posts one task per call; :mod:`.tasks` is the
task a worker runs (``patchboard.background.tasks.run_listener``), which
checks that the listener a payload names is connected as a background
listener in its own process (:mod:`.registry`), re-fetches the model
instances it refers to (:mod:`.payload`, the JSON codec: no pickles) and
calls the listener through the same machinery as an inline call, so its
``timeout``, ``on_error`` and ``breaker`` apply there; :mod:`.checks` holds
the system checks.

Open circuits. When the listener's circuit is open in the worker, the task
does not fail: it enqueues its next attempt to run at the circuit's
``retry_at`` (``Task.using(run_after=...)``) and finishes. After
``PATCHBOARD["BACKGROUND"]["MAX_RESCHEDULES"]`` reschedules, or once
``GIVE_UP_AFTER`` seconds have passed since the first enqueue, or when the
backend cannot defer tasks, it gives up instead.

Logs (``patchboard`` logger): ``background_enqueued``, ``background_started``,
``background_finished`` (``elapsed_s``), ``background_failed``,
``background_rescheduled``, ``background_gave_up``, ``background_refused``,
``background_instance_missing``. Argument values are never logged.

Importing this package plugs it into the feature seam
(``patchboard._features``); Django's Tasks framework itself is imported
only when a background listener connects (:mod:`.framework`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.dispatch import Signal as DjangoSignal

from patchboard._call import Call
from patchboard._config import ListenerOptions
from patchboard._features import features
from patchboard._outcomes import Outcome
from patchboard.background.enqueue import check_listener, enqueue_async, enqueue_sync
from patchboard.background.registry import register


class _Background:
    """The background feature, as the listener call sees it."""

    def check(self, func: Callable[..., Any], options: ListenerOptions, /) -> None:
        check_listener(func, options)

    def connected(self, listener: Any, signal: DjangoSignal, sender: Any, /) -> None:
        register(listener, signal, sender)

    def enqueue_sync(self, call: Call, /) -> Outcome:
        return enqueue_sync(call)

    async def enqueue_async(self, call: Call, /) -> Outcome:
        return await enqueue_async(call)


features.plug_background(_Background())
