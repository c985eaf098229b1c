"""
Enqueueing a background listener's call: one ``django.tasks`` task per call.

A background listener is a letter, not a phone call. Sending the signal
writes one letter per background listener (a task of
``patchboard._background._tasks.run_listener``) and drops it into the
configured Tasks backend; the send returns at once and the listener's
outcome is ``"enqueued"``, with the task's id.

Timing. Inside ``transaction.atomic()`` the letter is posted when the
transaction commits (``transaction.on_commit``), so the worker sees the
committed rows and a rolled-back transaction posts nothing; the outcome's
``task_id`` is then None, the task does not exist yet. ``on_commit=False``
posts at once. Async code is never inside ``atomic()``: :func:`enqueue_async`
posts at once, through the backend's ``aenqueue``.

Tracing. With an instrument active (``patchboard._instrument``), the call's
span is opened as the letter is written and is current while it is posted:
the letter carries the trace context (:attr:`Job.trace
<patchboard._background._payload.Job>`), captured at send time even when
it is posted on commit, and the worker's span of the call is that span's
child. With none, the letter carries nothing of the kind.
With the outbox on (:mod:`._outbox`; a backend outside the database), the
letter is first written in the ledger: inside ``atomic()`` an entry is
inserted in the transaction (the request's one extra query) and delivered
on commit (nothing more is written unless the backend refuses it: the
worker's claim marks it delivered, and the relay delivers again what no
worker claims); outside, or from async code, the task is enqueued at once,
and only if the backend refuses it is an entry written instead, for the
relay. Either way the outcome is ``"enqueued"``: the call is not lost.
"""

from __future__ import annotations

import dataclasses
import inspect
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from patchboard import _clock
from patchboard._background import _framework, _outbox, _relay
from patchboard._background import _tasks as task_module
from patchboard._background._payload import Job, encode, encode_kwargs, trace_context
from patchboard._background._registry import signal_key
from patchboard._call import Call, gone_receiver
from patchboard._config import ListenerOptions, get_settings
from patchboard._instrument import Instrument, instruments
from patchboard._log import dotted, log_limited, logger
from patchboard._outcomes import Outcome

if TYPE_CHECKING:
    from collections.abc import Callable


def check_listener(func: Callable[..., Any], options: ListenerOptions) -> None:
    """
    Validate a listener connected with ``mode="background"``, at connect time.

    Raises:
        ImproperlyConfigured: Django's Tasks framework is not installed.
        TypeError: ``func`` cannot be found by its dotted path in a worker
            (a lambda, a nested function, a bound method, a callable object).
        ValueError: ``priority`` is outside ``django.tasks``' range, or a
            ``fallback`` is set (nothing fails at send time, and an open
            circuit reschedules the task instead).
    """
    api = _framework.api()
    label = dotted(func)
    if not inspect.isfunction(func) or "<" in func.__qualname__:
        raise TypeError(
            f"background listener {label} must be a function defined at module level, so "
            f"a worker can find it by its dotted path; lambdas, nested functions, bound "
            f"methods and callable objects cannot be background listeners"
        )
    if not api.TASK_MIN_PRIORITY <= options.priority <= api.TASK_MAX_PRIORITY:
        raise ValueError(
            f"receiver {label}: priority of a background listener becomes its task's "
            f"priority and must be between {api.TASK_MIN_PRIORITY} and "
            f"{api.TASK_MAX_PRIORITY}, got {options.priority!r}"
        )
    if options.fallback is not None:
        raise ValueError(
            f"receiver {label}: fallback does not apply to a background listener "
            f"(enqueueing never leaves it unanswered, and an open circuit in the "
            f"worker reschedules the task), got {options.fallback!r}"
        )


def enqueue_sync(call: Call) -> Outcome:
    """
    Enqueue one call of a background listener, from sync code.

    Inside ``transaction.atomic()`` on the signal's database (its ``using``
    argument, else the default database) the task is enqueued when the
    transaction commits, unless the listener has ``on_commit=False``; the
    outcome's ``task_id`` is then None. With the outbox on, the call is
    also written to it in that transaction (a failing write is the
    listener's error; on PostgreSQL it aborts the transaction, as any failed
    query does), and a backend that refuses a call outside a transaction
    gets it written there instead (``task_id`` None), for the relay. A
    failing backend without the outbox, or one that
    ``PATCHBOARD["BACKGROUND"]["BACKEND"]`` names but ``TASKS`` lacks
    (:class:`~patchboard._background._framework.UnusableBackend`), is the
    listener's error: logged and collected, or raised, as its ``on_error`` says.

    Raises:
        NotSerializable: an argument cannot cross the process boundary.
    """
    job = _job(call)
    if call.instrument is None:
        return _post_sync(call, _carried(job))
    with call.opened():
        return _post_sync(call, _traced(job, call.instrument))


def _post_sync(call: Call, job: Job) -> Outcome:
    options = call.listener.options
    using = _database(call.kwargs)
    if options.on_commit and transaction.get_connection(using).in_atomic_block:
        if not _outbox_on():
            transaction.on_commit(partial(_enqueue_on_commit, options, job), using=using)
            return _enqueued(call, None)
        try:
            task = _task(options)
            key, payload = _keyed(job, using)
            _outbox.write(payload, key=key, using=using, task=task, delay=_relay.grace())
        except Exception as exc:
            return call.settle_sync("error", exc)
        _log_written(job, key, using, task, error=None)
        transaction.on_commit(partial(_deliver_on_commit, task, payload, key, using), using=using)
        return _enqueued(call, None)
    try:
        task = _task(options)
    except Exception as exc:
        return call.settle_sync("error", exc)
    try:
        result = task.enqueue(job.to_json())
    except Exception as exc:
        if not _outbox_on():
            return call.settle_sync("error", exc)
        try:
            key, payload = _keyed(job, using)
            _outbox.write(
                payload, key=key, using=using, task=task, delay=_outbox.backoff(1), error=exc
            )
        except Exception:
            return call.settle_sync("error", exc)  # The backend's refusal, as without the outbox.
        _log_written(job, key, using, task, error=exc)
        return _enqueued(call, None)
    _log_enqueued(job, result, on_commit=False)
    return _enqueued(call, result.id)


async def enqueue_async(call: Call) -> Outcome:
    """
    Enqueue one call of a background listener, from async code, through the
    backend's ``aenqueue``. Unlike :func:`enqueue_sync`, never waits for a
    commit: async code is never inside ``atomic()``. With the outbox on, a
    backend that refuses the call gets it written to the outbox instead, as
    :func:`enqueue_sync` does outside a transaction.

    Raises:
        NotSerializable: an argument cannot cross the process boundary.
    """
    job = _job(call)
    if call.instrument is None:
        return await _post_async(call, _carried(job))
    with call.opened():
        return await _post_async(call, _traced(job, call.instrument))


async def _post_async(call: Call, job: Job) -> Outcome:
    try:
        task = _task(call.listener.options)
    except Exception as exc:
        return await call.settle_async("error", exc)
    try:
        result = await task.aenqueue(job.to_json())
    except Exception as exc:
        if not _outbox_on():
            return await call.settle_async("error", exc)
        using = _database(call.kwargs)
        try:
            key, payload = _keyed(job, using)
            await sync_to_async(_outbox.write)(
                payload, key=key, using=using, task=task, delay=_outbox.backoff(1), error=exc
            )
        except Exception:
            return await call.settle_async("error", exc)
        _log_written(job, key, using, task, error=exc)
        return _enqueued(call, None)
    _log_enqueued(job, result, on_commit=False)
    return _enqueued(call, result.id)


def _outbox_on() -> bool:
    try:
        return _outbox.enabled(get_settings().background.backend)
    except _framework.UnusableBackend:
        return False  # Reported where the task is enqueued, as without the outbox.


def _keyed(job: Job, using: str) -> tuple[str, dict[str, Any]]:
    """A fresh idempotency key, and the job's JSON carrying it and its database."""
    key = str(uuid.uuid4())
    return key, dataclasses.replace(job, key=key, db=using).to_json()


def _deliver_on_commit(task: Any, payload: dict[str, Any], key: str, using: str) -> None:
    try:
        _relay.deliver(task, payload, key=key, using=using, attempts=0, relayed=None)
    except Exception as exc:
        # Marking it failed: it stays unclaimed in the outbox, and the relay delivers
        # it (again, if the enqueue went through: the worker's claim runs it once).
        logger().error(
            "background_failed",
            exc_info=exc,
            phase="outbox_deliver",
            listener=payload.get("listener"),
            entry=key,
        )


def _job(call: Call) -> Job:
    label = call.listener.label
    return Job(
        listener=label,
        signal=signal_key(call.signal),
        sender=encode(call.sender, listener=label, argument="sender"),
        # Leaves ``signal`` out: the worker passes the listener its own signal.
        kwargs=encode_kwargs(call.kwargs, listener=label),
        attempt=1,
        first_enqueued_at=datetime.now(UTC),
    )


def _carried(job: Job) -> Job:
    """
    ``job`` of an untraced call, with the current trace context when an
    instrument is active all the same: a call Django's own ``send()`` made
    (patchboard opens no span there) carries the request's span.
    """
    get_settings()  # parsed, so the instruments are chosen: Django's send() did not ask
    active = instruments.active
    return job if active is None else _traced(job, active)


def _traced(job: Job, instrument: Instrument) -> Job:
    """``job`` with the current trace context (the call's span is current), if any."""
    carrier: dict[str, str] = {}
    instrument.inject(carrier)
    trace = trace_context(carrier)
    return job if trace is None else dataclasses.replace(job, trace=trace)


def _task(options: ListenerOptions) -> Any:
    alias = get_settings().background.backend
    _framework.backend(alias)  # A missing alias is named as the user wrote it.
    return task_module.task().using(
        backend=alias,
        priority=options.priority,
        queue_name=options.queue_name,
    )


def _database(kwargs: dict[str, Any]) -> str:
    using = kwargs.get("using")
    if isinstance(using, str) and using in connections.settings:
        return using
    return DEFAULT_DB_ALIAS


def _enqueue_on_commit(options: ListenerOptions, job: Job) -> None:
    try:
        result = _task(options).enqueue(job.to_json())
    except Exception as exc:
        logger().error(
            "background_failed",
            exc_info=exc,
            phase="enqueue_on_commit",
            listener=job.listener,
            signal=job.signal,
        )
        # On commit the dispatch has returned: no group is left to join.
        if (options.on_error or get_settings().on_error) != "log":
            raise
        return
    _log_enqueued(job, result, on_commit=True)


def _enqueued(call: Call, task_id: str | None) -> Outcome:
    elapsed = _clock.now() - call.started
    call.ended("enqueued", elapsed)
    return Outcome(
        receiver=call.listener.receiver or gone_receiver,
        status="enqueued",
        task_id=task_id,
        elapsed=elapsed,
    )


def _log_enqueued(job: Job, result: Any, *, on_commit: bool) -> None:
    logger().info(
        "background_enqueued",
        listener=job.listener,
        signal=job.signal,
        task_id=result.id,
        backend=result.backend,
        queue_name=result.task.queue_name,
        on_commit=on_commit,
    )


def _log_written(job: Job, key: str, using: str, task: Any, *, error: BaseException | None) -> None:
    # In a transaction, the usual path: debug (background_outbox_delivered follows on commit).
    fields = {
        "entry": key,
        "listener": job.listener,
        "signal": job.signal,
        "database": using,
        "backend": task.backend,
    }
    if error is None:
        logger().debug("background_outbox_written", **fields, reason="transaction")
    else:  # One a second per backend under an outage, the next one counting the rest.
        log_limited(
            "warning",
            "background_outbox_written",
            ("outbox", task.backend),
            **fields,
            reason="refused",
            error=type(error).__qualname__,
        )
