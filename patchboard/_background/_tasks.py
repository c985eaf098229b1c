"""
The task every background call runs: ``patchboard._background._tasks.run_listener``.

That dotted path is what task backends store and what workers import, so it
is part of patchboard's contract with the queues of every deployment: it
does not move.

The :class:`~django.tasks.Task` object is built on first use (module
``__getattr__``) rather than at import: ``django.tasks`` validates a task
against its backend when it is built, and a project whose ``TASKS`` lacks
the alias must still start (``patchboard.E020`` tells it what is wrong).
At start-up, :func:`build_at_start` builds it when that alias exists, for
the workers that know only the tasks built before they start (Celery's).
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from patchboard import _clock, _deadline
from patchboard._background import _framework
from patchboard._background._outbox import claim
from patchboard._background._payload import (
    InstanceMissing,
    Job,
    PayloadError,
    decode,
    decode_kwargs,
)
from patchboard._background._registry import Refused, candidates, pick
from patchboard._config import SettingError, get_settings
from patchboard._exceptions import CircuitOpen
from patchboard._instrument import instruments
from patchboard._log import logger
from patchboard._outcomes import Outcome
from patchboard._run import HERE, Dispatch, run_async, run_sync


def run_listener(context: Any, payload: dict[str, Any]) -> str:
    """
    The task every background call runs: call the listener a payload names.

    Returns how the call ended: ``"ok"``, ``"error"`` or ``"timeout"`` (with
    ``on_error="log"``), ``"rescheduled"``, ``"gave_up"``,
    ``"instance_missing"``, ``"refused"`` or ``"duplicate"``.

    A call that went through the outbox carries its idempotency key: first
    of all, the worker claims the key's attempt on the entry's database,
    which marks the entry delivered (the relay stops delivering it, even if
    the call is then refused or its instance is missing); a delivery of an
    attempt already claimed is a duplicate and does not run
    (``background_duplicate``). An entry purged since (``OUTBOX_RETENTION``)
    cannot tell, and the call runs.

    Raises:
        Exception: the listener's error when its ``on_error`` is ``"raise"``,
            so the backend records the task as failed.
    """
    return run(payload, context.task_result)


_function = run_listener
del run_listener  # the module attribute is the Task, built by __getattr__


def __getattr__(name: str) -> Any:
    if name != "run_listener":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return task()


def task() -> Any:
    """
    The ``run_listener`` Task, built on first use, bound to the configured
    backend if it exists (each enqueue names its backend with ``using()``).

    Raises:
        ImproperlyConfigured: Django's Tasks framework is not installed.
    """
    built = globals().get("run_listener")
    if built is not None:
        return built
    api = _framework.api()
    alias = get_settings().background.backend
    try:
        api.task_backends[alias]
    except api.InvalidTaskBackend:
        alias = "default"
    built = api.task(takes_context=True, backend=alias)(_function)
    globals()["run_listener"] = built
    return built


def build_at_start() -> None:
    """
    Build the ``run_listener`` Task now (``PatchboardConfig.ready()``) when the
    project's ``TASKS`` has the configured backend alias.

    A Celery worker runs only the tasks registered when it starts, and
    django-tasks-celery registers a task with Celery when the task is built:
    built lazily, ``run_listener`` would be unknown to the worker, which
    discards its messages ("Received unregistered task"). Other workers find
    the task by its dotted path; building it early costs them nothing.

    Does nothing when ``TASKS`` is not set (Django's default runs tasks in the
    request: there is no worker), when ``PATCHBOARD`` is invalid
    (``patchboard.E001``), when the alias is missing or its backend cannot be
    built (``patchboard.E020``), or without Django's Tasks framework: the
    project still starts, and the system checks say what is wrong.
    """
    # (is_overridden is documented API that django-stubs does not declare.)
    if not django_settings.is_overridden("TASKS"):  # type: ignore[misc]
        return
    try:
        _framework.backend(get_settings().background.backend)
    except (SettingError, ImproperlyConfigured):  # UnusableBackend is one
        return
    task()


def run(payload: object, task_result: Any) -> str:
    """Run the call ``payload`` describes, in the worker; see ``run_listener``."""
    started = _clock.now()
    log = logger()
    task_id = task_result.id
    try:
        job = Job.from_json(payload)
    except PayloadError as exc:
        return _refuse(payload, task_id, exc)
    context = {
        "listener": job.listener,
        "signal": job.signal,
        "task_id": task_id,
        "attempt": job.attempt,
    }
    # Claimed first, whatever follows (refused, instance missing, run): a worker took
    # the call, so the relay no longer delivers it, and a duplicate does not get further.
    if (
        job.key is not None
        and job.db is not None
        and not claim(job.key, job.db, job.attempt, task_id)
    ):
        log.info("background_duplicate", entry=job.key, database=job.db, **context)
        return "duplicate"
    try:
        found = candidates(job.listener, job.signal)
    except Refused as exc:
        return _refuse(payload, task_id, exc)
    log.info("background_started", **context)
    try:
        missing = found[0].listener.options.missing_instance
        sender = decode(job.sender, argument="sender", missing=missing)
        registration = pick(found, sender)
        missing = registration.listener.options.missing_instance
        kwargs = decode_kwargs(job.kwargs, missing=missing)
        listener, signal = registration.inline(), registration.signal
        if listener is None or signal is None:
            raise Refused("the listener is gone")
    except InstanceMissing as exc:
        log.warning(
            "background_instance_missing", argument=exc.argument, model=exc.model, **context
        )
        return "instance_missing"
    except (PayloadError, Refused) as exc:
        return _refuse(payload, task_id, exc)
    # A task is not bound by the deadline of the request that enqueued it
    # (an immediate backend runs it inside that request).
    with _deadline.none(), _resumed(job):
        dispatch = Dispatch(signal, sender, kwargs, (listener,))
        if listener.places[False] in HERE:
            outcome = run_sync(listener, dispatch)
        else:
            outcome = async_to_sync(run_async)(listener, dispatch)
    elapsed = round(_clock.now() - started, 6)
    if outcome.status == "ok":
        log.info("background_finished", elapsed_s=elapsed, **context)
        return "ok"
    if outcome.status == "circuit_open" or isinstance(outcome.error, CircuitOpen):
        # Also a CircuitOpen the listener raised itself, from a breaker of its own.
        return _reschedule(job, outcome, task_result, context)
    log.warning(
        "background_failed",
        status=outcome.status,
        error=type(outcome.error).__qualname__,
        elapsed_s=elapsed,
        **context,
    )
    if outcome.propagate or outcome.grouped:  # a group of one: the task fails with it
        assert outcome.error is not None
        raise outcome.error
    return outcome.status


def _resumed(job: Job) -> AbstractContextManager[object]:
    """
    The trace ``job`` carries, continued while its call runs (the call's span
    joins the enqueuing request's trace), when an instrument is active here.
    """
    get_settings()  # parsed first: the instruments are chosen as PATCHBOARD is parsed
    traced = instruments.active
    if traced is None:
        return nullcontext()
    return traced.resume(job.trace or {}, job.listener)


def _reschedule(job: Job, outcome: Outcome, task_result: Any, context: dict[str, Any]) -> str:
    conf = get_settings().background
    now = datetime.now(UTC)
    error = outcome.error
    breaker = getattr(error, "breaker", None)
    retry_at: datetime | None = getattr(error, "retry_at", None)
    if retry_at is None:
        retry_at = now + timedelta(seconds=conf.retry_delay)
    elif retry_at.tzinfo is None:
        retry_at = retry_at.replace(tzinfo=UTC)
    task = task_result.task
    reason = None
    if job.attempt > conf.max_reschedules:
        reason = "max_reschedules"
    elif (now - job.first_enqueued_at).total_seconds() >= conf.give_up_after:
        reason = "give_up_after"
    elif not task.get_backend().supports_defer:
        reason = "backend_cannot_defer"
    if reason is not None:
        logger().warning(
            "background_gave_up",
            reason=reason,
            breaker=breaker,
            reschedules=job.attempt - 1,
            **context,
        )
        if outcome.propagate or outcome.grouped:
            assert error is not None
            raise error
        return "gave_up"
    run_after = retry_at if django_settings.USE_TZ else timezone.make_naive(retry_at)
    # The same trace context too: the next attempt joins the same request's trace.
    following = dataclasses.replace(job, attempt=job.attempt + 1)
    result = task.using(run_after=run_after).enqueue(following.to_json())
    logger().info(
        "background_rescheduled",
        breaker=breaker,
        run_after=retry_at.isoformat(),
        next_task_id=result.id,
        **context,
    )
    return "rescheduled"


def _refuse(payload: object, task_id: str, exc: Exception) -> str:
    # A forged payload chooses these strings: the log gets a bounded share of them.
    named = payload.get("listener") if isinstance(payload, dict) else None
    logger().error(
        "background_refused",
        listener=named[:200] if isinstance(named, str) else None,
        task_id=task_id,
        reason=str(exc)[:500],
    )
    return "refused"
