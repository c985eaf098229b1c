"""
Background listeners: listeners that run in a task worker, through Django's
Tasks framework (``django.tasks``, or the ``django-tasks`` backport on
Django 5.2).

The package: :mod:`._enqueue` posts one task per call; :mod:`._tasks` is the
task a worker runs (``patchboard._background._tasks.run_listener``), which
checks that the listener a payload names is connected as a background
listener in its own process (:mod:`._registry`), re-fetches the model
instances it refers to (:mod:`._payload`, the JSON codec: no pickles) and
calls the listener through the same machinery as an inline call, so its
``timeout``, ``on_error`` and ``breaker`` apply there; :mod:`._checks` holds
the system checks. With a backend outside the database, :mod:`._outbox`
writes each call to a table in the sender's transaction first and
:mod:`._relay` delivers it, after the commit and again for what no worker
has claimed (``manage.py patchboard relay``); the worker claims each
attempt once, and its claim is what marks the entry delivered.

Open circuits. When the listener's circuit is open in the worker, the task
does not fail: it enqueues its next attempt to run at the circuit's
``retry_at`` (``Task.using(run_after=...)``) and finishes. After
``PATCHBOARD["BACKGROUND"]["MAX_RESCHEDULES"]`` reschedules, or once
``GIVE_UP_AFTER`` seconds have passed since the first enqueue, or when the
backend cannot defer tasks, it gives up instead.

Logs (``patchboard`` logger): ``background_enqueued``, ``background_started``,
``background_finished`` (``elapsed_s``), ``background_failed``,
``background_rescheduled``, ``background_gave_up``, ``background_refused``,
``background_instance_missing``, ``background_duplicate`` and the outbox's
``background_outbox_written``, ``_delivered``, ``_retry`` and ``_relayed``.
Argument values are never logged.

Importing :mod:`._feature` (``patchboard/__init__.py`` does) plugs it into
the feature seam (``patchboard._features``); Django's Tasks framework itself is imported
only when a background listener connects (:mod:`._framework`).
"""
