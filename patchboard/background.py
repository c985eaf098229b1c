"""
Background listeners: listeners that run in a task worker, through Django's
Tasks framework (``django.tasks``, or the ``django-tasks`` backport on
Django 5.2).

A background listener is a letter, not a phone call. Sending the signal
writes one letter per background listener (a task of :data:`run_listener`)
and drops it into the configured Tasks backend; the send returns at once and
the listener's outcome is ``"enqueued"``, with the task's id. Later a worker
(any backend's: django-tasks-db's ``db_worker``, RQ, Celery) opens the
letter, checks that the listener it names is connected as a background
listener in its own process, re-fetches the model instances it refers to and
calls the listener through the same machinery as an inline call, so its
``timeout``, ``on_error`` and ``breaker`` apply there.

Timing. Inside ``transaction.atomic()`` the letter is posted when the
transaction commits (``transaction.on_commit``), so the worker sees the
committed rows and a rolled-back transaction posts nothing; the outcome's
``task_id`` is then None, the task does not exist yet. ``on_commit=False``
posts at once. Async code is never inside ``atomic()``: ``enqueue_async``
posts at once, through the backend's ``aenqueue``.

Open circuits. When the listener's circuit is open in the worker, the task
does not fail: it enqueues its next attempt to run at the circuit's
``retry_at`` (``Task.using(run_after=...)``) and finishes. After
``PATCHBOARD["BACKGROUND"]["MAX_RESCHEDULES"]`` reschedules, or once
``GIVE_UP_AFTER`` seconds have passed since the first enqueue, or when the
backend cannot defer tasks, it gives up instead.

Trust. A payload names a listener by its dotted path; the worker runs it
only if that listener is connected, as a background listener, to the
payload's signal in the worker's own process (the registry below, filled as
listeners connect). Anything else is refused and logged; nothing a payload
names is ever imported or called, and payloads carry no pickles.

Logs (structlog, ``patchboard`` logger): ``background_enqueued``,
``background_started``, ``background_finished`` (``elapsed_s``),
``background_failed``, ``background_rescheduled``, ``background_gave_up``,
``background_refused``, ``background_instance_missing``. Argument values are
never logged.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import threading
import weakref
from datetime import UTC, datetime, timedelta
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

try:
    from django.tasks import Task, TaskContext, TaskResult, task
    from django.tasks import task_backends as task_backends
    from django.tasks.base import DEFAULT_TASK_QUEUE_NAME as DEFAULT_TASK_QUEUE_NAME
    from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY
except ImportError:  # pragma: no cover - Django 5.2, with the django-tasks backport
    try:
        from django_tasks import task  # type: ignore[import-not-found, no-redef, unused-ignore]
        from django_tasks import (  # type: ignore[import-not-found, no-redef, unused-ignore]
            task_backends as task_backends,
        )
        from django_tasks.base import (  # type: ignore[import-not-found, no-redef, unused-ignore]
            DEFAULT_TASK_QUEUE_NAME as DEFAULT_TASK_QUEUE_NAME,
        )
        from django_tasks.base import (  # type: ignore[import-not-found, no-redef, unused-ignore]
            TASK_MAX_PRIORITY,
            TASK_MIN_PRIORITY,
            Task,
            TaskContext,
            TaskResult,
        )
    except ImportError:
        raise ImproperlyConfigured(
            "mode='background' needs Django's Tasks framework: Django >= 6.0, or on "
            "Django 5.2 the backport (pip install 'django-patchboard[tasks-backport]')"
        ) from None

from patchboard.conf import get_settings
from patchboard.exceptions import CircuitOpen
from patchboard.listeners import NONE_ID, Listener, ListenerOptions, _make_id
from patchboard.log import dotted, logger, signal_label
from patchboard.outcomes import Outcome, counted
from patchboard.payload import (
    InstanceMissing,
    Job,
    PayloadError,
    decode,
    decode_kwargs,
    encode,
    encode_kwargs,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.dispatch import Signal as DjangoSignal

# -- connecting ------------------------------------------------------------------


def check_background_listener(func: object, options: ListenerOptions) -> None:
    """
    Validate a listener connected with ``mode="background"``, at connect time.

    Raises:
        TypeError: ``func`` cannot be found by its dotted path in a worker
            (a lambda, a nested function, a bound method, a callable object).
        ValueError: ``priority`` is outside ``django.tasks``' range, or a
            ``fallback`` is set (nothing fails at send time, and an open
            circuit reschedules the task instead).
    """
    label = dotted(func)
    if not inspect.isfunction(func) or "<" in func.__qualname__:
        raise TypeError(
            f"background listener {label} must be a function defined at module level, so "
            f"a worker can find it by its dotted path; lambdas, nested functions, bound "
            f"methods and callable objects cannot be background listeners"
        )
    if not TASK_MIN_PRIORITY <= options.priority <= TASK_MAX_PRIORITY:
        raise ValueError(
            f"receiver {label}: priority of a background listener becomes its task's "
            f"priority and must be between {TASK_MIN_PRIORITY} and {TASK_MAX_PRIORITY}, "
            f"got {options.priority!r}"
        )
    if options.fallback is not None:
        raise ValueError(
            f"receiver {label}: fallback does not apply to a background listener "
            f"(enqueueing never leaves it unanswered, and an open circuit in the "
            f"worker reschedules the task), got {options.fallback!r}"
        )


@dataclasses.dataclass(slots=True, eq=False)
class Registration:
    """A background listener connected to a signal in this process."""

    listener: Listener
    signal_ref: weakref.ReferenceType[DjangoSignal]
    inline_copy: Listener | None = None

    @property
    def signal(self) -> DjangoSignal | None:
        return self.signal_ref()

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
        wanted = None if any_sender else _make_id(sender)
        # Entries are (lookup_key, receiver_ref, sender_ref[, is_async]): Django 5.2 has 3.
        for entry in list(signal.receivers):
            ref = entry[1]
            target = ref() if isinstance(ref, weakref.ReferenceType) else ref
            if target is self.listener and (wanted is None or entry[0][1] in (NONE_ID, wanted)):
                return True
        return False

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


_registry: dict[str, list[Registration]] = {}
_registry_lock = threading.Lock()


def register(listener: Listener, signal: DjangoSignal) -> None:
    """
    Record that ``listener`` is connected to ``signal`` as a background listener.

    Called for every background listener as it connects; a worker runs only
    listeners found here and still connected. Registering twice is a no-op;
    an inline listener is ignored.
    """
    if listener.options.mode != "background":
        return
    with _registry_lock:
        entries = [
            entry
            for entry in _registry.get(listener.label, [])
            if entry.signal_ref() is not None and entry.listener.receiver is not None
        ]
        if not any(e.listener is listener and e.signal_ref() is signal for e in entries):
            entries.append(Registration(listener=listener, signal_ref=weakref.ref(signal)))
        _registry[listener.label] = entries


def registrations() -> list[Registration]:
    """Every background listener still connected in this process, in connect order."""
    with _registry_lock:
        entries = [entry for group in _registry.values() for entry in group]
    return [entry for entry in entries if entry.connected()]


_keys: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


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
    label = signal_label(signal)
    if label != _local_label(signal):
        return label
    found = _keys.get(signal)
    if found is None:
        # Once per signal: the scan reads every loaded module's namespace.
        found = _keys[signal] = _module_attribute(signal) or label
    return found


def is_process_local(key: str, signal: object) -> bool:
    """Whether ``key`` (made by :func:`signal_key`) only means something in this process."""
    return key == _local_label(signal)


def _local_label(signal: object) -> str:
    return f"{dotted(type(signal))}@{id(signal):#x}"


def _module_attribute(signal: object) -> str | None:
    for name in sorted(sys.modules):
        namespace = getattr(sys.modules.get(name), "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        attrs = sorted(attr for attr, value in list(namespace.items()) if value is signal)
        if attrs:
            return f"{name}.{attrs[0]}"
    return None


class _Refused(Exception):
    """A payload this worker will not run; the message says why."""


def _candidates(path: str, key: str) -> list[Registration]:
    with _registry_lock:
        entries = list(_registry.get(path, ()))
    live = [entry for entry in entries if entry.connected()]
    if not live:
        raise _Refused(
            "not connected as a background listener in this process (connect it "
            "where the worker imports it too, e.g. in AppConfig.ready())"
        )
    exact = [entry for entry in live if entry.key == key]
    if exact:
        return exact
    if len({id(entry.signal) for entry in live}) == 1:
        # One signal: unambiguous, even if another process spells its key differently.
        return live
    raise _Refused("the listener is not connected to the payload's signal")


def _pick(candidates: list[Registration], sender: Any) -> Registration:
    for entry in candidates:
        if entry.connected(sender=sender, any_sender=False):
            return entry
    raise _Refused("the listener is not connected for the payload's sender")


# -- enqueueing ------------------------------------------------------------------


def enqueue_sync(
    listener: Listener,
    func: Callable[..., Any],
    signal: DjangoSignal,
    sender: Any,
    kwargs: dict[str, Any],
) -> Outcome:
    """
    Enqueue one call of a background listener, from sync code.

    Inside ``transaction.atomic()`` on the signal's database (its ``using``
    argument, else the default database) the task is enqueued when the
    transaction commits, unless the listener has ``on_commit=False``; the
    outcome's ``task_id`` is then None. A failing backend is the listener's
    error: logged and collected, or raised, as its ``on_error`` says.

    Raises:
        NotSerializable: an argument cannot cross the process boundary.
    """
    started = perf_counter()
    job = _job(listener, signal, sender, kwargs)
    options = listener.options
    if options.on_commit:
        using = _database(kwargs)
        if transaction.get_connection(using).in_atomic_block:
            transaction.on_commit(partial(_enqueue_on_commit, listener, job), using=using)
            return _enqueued(func, None, started)
    try:
        result = _task(options).enqueue(job.to_json())
    except Exception as exc:
        return listener.settle_sync("error", exc, started, signal, sender, kwargs)
    _log_enqueued(listener, job, result, on_commit=False)
    return _enqueued(func, result.id, started)


async def enqueue_async(
    listener: Listener,
    func: Callable[..., Any],
    signal: DjangoSignal,
    sender: Any,
    kwargs: dict[str, Any],
) -> Outcome:
    """
    Enqueue one call of a background listener, from async code, through the
    backend's ``aenqueue``. Unlike :func:`enqueue_sync`, never waits for a
    commit: async code is never inside ``atomic()``.

    Raises:
        NotSerializable: an argument cannot cross the process boundary.
    """
    started = perf_counter()
    job = _job(listener, signal, sender, kwargs)
    try:
        result = await _task(listener.options).aenqueue(job.to_json())
    except Exception as exc:
        return await listener.settle_async("error", exc, started, signal, sender, kwargs)
    _log_enqueued(listener, job, result, on_commit=False)
    return _enqueued(func, result.id, started)


def _job(listener: Listener, signal: DjangoSignal, sender: Any, kwargs: dict[str, Any]) -> Job:
    label = listener.label
    return Job(
        listener=label,
        signal=signal_key(signal),
        sender=encode(sender, listener=label, argument="sender"),
        # Django's own ``signal`` argument is not sent: the worker has the signal.
        kwargs=encode_kwargs(
            {name: value for name, value in kwargs.items() if name != "signal"}, listener=label
        ),
        attempt=1,
        first_enqueued_at=datetime.now(UTC),
    )


def _task(options: ListenerOptions) -> Task[[dict[str, Any]], str]:
    return run_listener.using(
        backend=get_settings().background.backend,
        priority=options.priority,
        queue_name=options.queue_name,
    )


def _database(kwargs: dict[str, Any]) -> str:
    using = kwargs.get("using")
    if isinstance(using, str) and using in connections.settings:
        return using
    return DEFAULT_DB_ALIAS


def _enqueue_on_commit(listener: Listener, job: Job) -> None:
    try:
        result = _task(listener.options).enqueue(job.to_json())
    except Exception as exc:
        logger().error(
            "background_failed",
            exc_info=exc,
            phase="enqueue_on_commit",
            listener=job.listener,
            signal=job.signal,
        )
        if (listener.options.on_error or get_settings().on_error) == "raise":
            raise
        return
    _log_enqueued(listener, job, result, on_commit=True)


def _enqueued(func: Callable[..., Any], task_id: str | None, started: float) -> Outcome:
    counted["enqueued"] += 1
    return Outcome(
        receiver=func, status="enqueued", task_id=task_id, elapsed=perf_counter() - started
    )


def _log_enqueued(
    listener: Listener, job: Job, result: TaskResult[Any, Any], *, on_commit: bool
) -> None:
    logger().info(
        "background_enqueued",
        listener=job.listener,
        signal=job.signal,
        task_id=result.id,
        backend=result.backend,
        queue_name=result.task.queue_name,
        on_commit=on_commit,
    )


# -- running, in the worker --------------------------------------------------------


def _alias_at_import() -> str:
    # The task must be bound to a backend that exists when this module is
    # imported; each enqueue picks the configured one with ``using()``.
    try:
        alias = get_settings().background.backend
        task_backends[alias]
    except ImproperlyConfigured:  # reported by the system checks
        return "default"
    return alias


@task(takes_context=True, backend=_alias_at_import())
def run_listener(context: TaskContext[Any, Any], payload: dict[str, Any]) -> str:
    """
    The task every background call runs: call the listener a payload names.

    Returns how the call ended: ``"ok"``, ``"error"`` or ``"timeout"`` (with
    ``on_error="log"``), ``"rescheduled"``, ``"gave_up"``,
    ``"instance_missing"`` or ``"refused"``.

    Raises:
        Exception: the listener's error when its ``on_error`` is ``"raise"``,
            so the backend records the task as failed.
    """
    return _run(payload, context.task_result)


def _run(payload: object, task_result: TaskResult[Any, Any]) -> str:
    started = perf_counter()
    log = logger()
    task_id = task_result.id
    try:
        job = Job.from_json(payload)
        candidates = _candidates(job.listener, job.signal)
    except (PayloadError, _Refused) as exc:
        return _refuse(payload, task_id, exc)
    context = {
        "listener": job.listener,
        "signal": job.signal,
        "task_id": task_id,
        "attempt": job.attempt,
    }
    log.info("background_started", **context)
    try:
        missing = candidates[0].listener.options.missing_instance
        sender = decode(job.sender, argument="sender", missing=missing)
        registration = _pick(candidates, sender)
        missing = registration.listener.options.missing_instance
        kwargs = decode_kwargs(job.kwargs, missing=missing)
        listener, signal = registration.inline(), registration.signal
        if listener is None or signal is None:
            raise _Refused("the listener is gone")
    except InstanceMissing as exc:
        log.warning(
            "background_instance_missing", argument=exc.argument, model=exc.model, **context
        )
        return "instance_missing"
    except (PayloadError, _Refused) as exc:
        return _refuse(payload, task_id, exc)
    if listener.batchable:
        outcome = listener.run_sync(signal, sender, kwargs)
    else:
        outcome = async_to_sync(listener.run_async)(signal, sender, kwargs)
    elapsed = round(perf_counter() - started, 6)
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
    if outcome.propagate:
        assert outcome.error is not None
        raise outcome.error
    return outcome.status


def _reschedule(
    job: Job, outcome: Outcome, task_result: TaskResult[Any, Any], context: dict[str, Any]
) -> str:
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
        if outcome.propagate:
            assert error is not None
            raise error
        return "gave_up"
    run_after = retry_at if django_settings.USE_TZ else timezone.make_naive(retry_at)
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
    named = payload.get("listener") if isinstance(payload, dict) else None
    logger().error(
        "background_refused",
        listener=named[:200] if isinstance(named, str) else None,
        task_id=task_id,
        reason=str(exc),
    )
    return "refused"
