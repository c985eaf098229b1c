"""
The end-to-end scenario's sender and reporter, run as processes of their own::

    python -m tests.e2e.scenario send     # sends the signals; prints task ids as JSON
    python -m tests.e2e.scenario slow [in_transaction]   # one call that holds its worker
    python -m tests.e2e.scenario report   # prints the evidence and the task rows as JSON
    python -m tests.e2e.scenario traced   # one background call sent from a request's span
    python -m tests.e2e.scenario burst 0 10   # orders B-0 .. B-9, one transaction each
    python -m tests.e2e.scenario outbox   # the outbox's rows, as JSON

with ``DJANGO_SETTINGS_MODULE=tests.e2e.settings``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import django

PAID_AT = datetime(2031, 5, 4, 12, 30, 15, 123456, tzinfo=ZoneInfo("Europe/Paris"))


class Rollback(Exception):
    pass


def send() -> dict[str, Any]:
    from django.db import transaction

    from patchboard._background._payload import TAG, Job, encode, encode_kwargs
    from patchboard._background._tasks import run_listener
    from tests.e2e.listeners import order_paid, payment_requested
    from tests.testapp.models import Order

    ids: dict[str, Any] = {}
    # post_save, sent by Django's own save(), outside any transaction.
    order = Order.objects.create(reference="E2E-1", paid_at=PAID_AT)
    [outcome] = order_paid.send_sync(
        sender=Order, order=order, paid_at=PAID_AT, amount=Decimal("19.90")
    )
    ids["receipt"] = outcome.task_id

    # A rolled-back transaction enqueues nothing, post_save included.
    try:
        with transaction.atomic():
            doomed = Order.objects.create(reference="ROLLBACK", paid_at=PAID_AT)
            order_paid.send_sync(sender=Order, order=doomed, paid_at=PAID_AT, amount=Decimal(1))
            raise Rollback
    except Rollback:
        pass

    # Committed inside atomic(): enqueued on commit.
    with transaction.atomic():
        committed = Order.objects.create(reference="COMMITTED")
    ids["committed_pk"] = committed.pk

    # The circuit is open on the first call.
    [flaky] = Order.objects.bulk_create([Order(reference="FLAKY")])
    [outcome] = payment_requested.send_sync(sender=Order, order=flaky)
    ids["charge"] = outcome.task_id

    # Deleted before the worker runs.
    [gone] = Order.objects.bulk_create([Order(reference="GONE")])
    [outcome] = order_paid.send_sync(sender=Order, order=gone, paid_at=PAID_AT, amount=Decimal(1))
    ids["gone"] = outcome.task_id
    Order.objects.filter(pk=gone.pk).delete()

    # Forged: names an importable function that is not a connected listener.
    job = Job(
        listener="tests.e2e.listeners.never_connected",
        signal="e2e.order_paid",
        sender=None,
        kwargs={},
        first_enqueued_at=datetime.now(UTC),
    )
    ids["forged"] = run_listener.enqueue(job.to_json()).id

    # Tampered payloads of a connected listener: each refused, none blames the listener.
    real = Job(
        listener="tests.e2e.listeners.receipt",
        signal="e2e.order_paid",
        sender=encode(Order, listener="receipt", argument="sender"),
        kwargs=encode_kwargs(
            {"order": order, "paid_at": PAID_AT, "amount": Decimal(1)}, listener="receipt"
        ),
        first_enqueued_at=datetime.now(UTC),
    ).to_json()
    hostile = {
        "version_true": {"v": True},
        "kwarg_named_sender": {"kwargs": {**real["kwargs"], "sender": 1}},
        "pk_of_another_type": {
            "kwargs": {**real["kwargs"], "order": {**real["kwargs"]["order"], "pk": "abc"}}
        },
        "unknown_database": {
            "kwargs": {**real["kwargs"], "order": {**real["kwargs"]["order"], "db": "other"}}
        },
        "lazy_module_class": {
            "sender": {
                TAG: "class",
                "module": "concurrent.futures",
                "qualname": "ProcessPoolExecutor",
            }
        },
    }
    ids["hostile"] = {
        name: run_listener.enqueue({**real, **fields}).id for name, fields in hostile.items()
    }
    return ids


def slow(where: str = "outside") -> dict[str, Any]:
    """
    One background call that holds its worker for a minute
    (``e2e.slow_requested``), sent outside a transaction (enqueued at once),
    or ``in_transaction`` (through the outbox, delivered on commit: no
    task id yet).
    """
    from django.db import transaction

    from tests.e2e.listeners import slow_requested

    with transaction.atomic() if where == "in_transaction" else contextlib.nullcontext():
        [outcome] = slow_requested.send_sync(sender=None, reference="SLOW", hold_s=60.0)
    return {"slow": outcome.task_id}


def traced() -> dict[str, Any]:
    """
    One background call (``receipt``) sent inside a span standing for a
    request's, with OpenTelemetry on (``PATCHBOARD_E2E_SPANS``); the
    request's trace id and the task's id.
    """
    from opentelemetry import trace

    from tests.e2e.listeners import order_paid
    from tests.testapp.models import Order

    order = Order.objects.create(reference="TRACED", paid_at=PAID_AT)
    with trace.get_tracer("tests.e2e").start_as_current_span("request") as request:
        [outcome] = order_paid.send_sync(
            sender=Order, order=order, paid_at=PAID_AT, amount=Decimal("1.00")
        )
    return {"trace_id": f"{request.get_span_context().trace_id:032x}", "task_id": outcome.task_id}


def abandon() -> dict[str, Any]:
    """
    What an RQ worker's maintenance does once the heartbeat of a job whose
    worker died has lapsed: here with the clock two minutes ahead.
    """
    import time

    import django_rq
    from django_tasks_rq import Job as TaskJob
    from rq.registry import StartedJobRegistry

    queue = django_rq.get_queue("default", job_class=TaskJob)
    registry = StartedJobRegistry(queue=queue, job_class=TaskJob)
    before = registry.get_job_ids()
    registry.cleanup(timestamp=time.time() + 120)
    return {"abandoned": before}


def burst(first: str, last: str) -> dict[str, Any]:
    """Orders ``B-first`` .. ``B-(last - 1)``, each saved in a transaction of its own."""
    from django.db import transaction

    from tests.testapp.models import Order

    for n in range(int(first), int(last)):
        with transaction.atomic():
            Order.objects.create(reference=f"B-{n}")
    return {"sent": int(last) - int(first)}


def die() -> dict[str, Any]:
    """
    Order ``DIED`` committed, and the process killed by the commit itself: a
    callback registered before the save's runs first and exits, so patchboard's
    on-commit delivery never runs (a deploy or an OOM kill at that moment).
    """
    import os

    from django.db import transaction

    from tests.testapp.models import Order

    with transaction.atomic():
        transaction.on_commit(lambda: os._exit(0))
        Order.objects.create(reference="DIED")
    raise AssertionError("unreachable: the commit exits the process")


def send_async() -> dict[str, Any]:
    """``order_paid`` for order ``ASYNC``, sent from async code (outside any transaction)."""
    import asyncio

    from tests.e2e.listeners import order_paid
    from tests.testapp.models import Order

    [order] = Order.objects.bulk_create([Order(reference="ASYNC")])  # no post_save
    report = asyncio.run(
        order_paid.send_async(sender=Order, order=order, paid_at=PAID_AT, amount=Decimal(1))
    )
    return {"outcomes": [(o.status, o.task_id) for o in report]}


def duplicate() -> dict[str, Any]:
    """Deliver the first claimed outbox entry once more, as a racing relay would."""
    from patchboard._background._relay import task_for
    from patchboard.models import OutboxEntry

    entry = OutboxEntry.objects.filter(delivered_at__isnull=False).order_by("created_at")[0]
    task = task_for(entry.backend, entry.queue_name, entry.priority)
    return {"entry": str(entry.id), "task_id": task.enqueue(json.loads(entry.payload)).id}


def outbox() -> dict[str, Any]:
    from patchboard.models import OutboxEntry

    return {
        "entries": [
            {
                "id": str(e.id),
                "attempts": e.attempts,
                "claimed": e.delivered_at is not None,  # delivered: a worker took it
                "deliveries": e.deliveries,
                "claimed_attempt": e.claimed_attempt,
                "last_error": e.last_error,
                "task_id": e.task_id,
                "listener": json.loads(e.payload)["listener"],
            }
            for e in OutboxEntry.objects.order_by("created_at")
        ]
    }


def report() -> dict[str, Any]:
    from django.conf import settings

    from tests.e2e.models import Evidence

    evidence = [
        {"kind": e.kind, "reference": e.reference, "detail": e.detail, "at": e.at.isoformat()}
        for e in Evidence.objects.order_by("pk")
    ]
    if settings.CELERY_URL:
        return {"evidence": evidence, "tasks": celery_tasks()}
    return {"evidence": evidence, "tasks": rq_tasks() if settings.RQ_URL else db_tasks()}


def rq_tasks() -> list[dict[str, Any]]:
    """Every job of the RQ queue, in any registry, as the Tasks backend reports it."""
    import django_rq
    from rq.registry import (
        FailedJobRegistry,
        FinishedJobRegistry,
        ScheduledJobRegistry,
        StartedJobRegistry,
    )

    from patchboard._background._framework import api

    queue = django_rq.get_queue("default")
    ids = list(queue.get_job_ids())
    for registry in (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry):
        ids += registry(queue=queue).get_job_ids()
    ids += ScheduledJobRegistry(queue=queue).get_job_ids()
    backend = api().task_backends["default"]
    found = []
    for task_id in dict.fromkeys(ids):
        result = backend.get_result(task_id)
        found.append(
            {
                "id": result.id,
                "status": str(result.status),
                "return_value": result._return_value,
                "payload": result.args[0],
                "run_after": None,
                "enqueued_at": result.enqueued_at and result.enqueued_at.isoformat(),
                "started_at": result.started_at and result.started_at.isoformat(),
                "exception": [e.exception_class_path for e in result.errors],
            }
        )
    return sorted(found, key=lambda task: task["enqueued_at"] or "")


def celery_tasks() -> list[dict[str, Any]]:
    """
    Every task the Celery result backend holds a result of (started, with
    ``task_track_started``, or finished), as the Tasks backend reports it.
    Celery keeps no enqueue or start time: the tasks are in finishing order.
    """
    from patchboard._background._framework import api
    from tests.e2e.celery import app

    prefix = app.backend.task_keyprefix
    keys = app.backend.client.scan_iter(match=prefix + b"*")
    backend = api().task_backends["default"]
    found = []
    for key in keys:
        task_id = key.removeprefix(prefix).decode()
        result = backend.get_result(task_id)
        # Celery's own date, not TaskResult.finished_at: django-tasks-celery 0.1.1
        # replaces its UTC offset with UTC's (hours off outside UTC).
        done = app.backend.get_task_meta(task_id)["date_done"]
        found.append(
            {
                "id": result.id,
                "status": str(result.status),
                "return_value": getattr(result, "_return_value", None),
                # None: a message the worker discarded (its result keeps no arguments).
                "payload": result.args[0] if result.args else None,
                "run_after": None,
                "finished_at": done and datetime.fromisoformat(done).astimezone(UTC).isoformat(),
                "exception": [e.exception_class_path for e in result.errors],
            }
        )
    # Unfinished tasks last.
    return sorted(found, key=lambda task: task["finished_at"] or "~")


def db_tasks() -> list[dict[str, Any]]:
    from django_tasks_db.models import DBTaskResult

    return [
        {
            "id": str(t.id),
            "status": t.status,
            "return_value": t.return_value,
            "payload": t.args_kwargs["args"][0],
            "run_after": t.run_after.isoformat(),
            "enqueued_at": t.enqueued_at.isoformat(),
            "started_at": t.started_at.isoformat() if t.started_at else None,
            "exception": t.exception_class_path,
        }
        for t in DBTaskResult.objects.order_by("enqueued_at")
    ]


def main(argv: list[str]) -> None:
    django.setup()
    command, *args = argv
    commands = {
        "send": send,
        "slow": slow,
        "traced": traced,
        "abandon": abandon,
        "report": report,
        "burst": burst,
        "die": die,
        "send_async": send_async,
        "duplicate": duplicate,
        "outbox": outbox,
    }
    result = commands[command](*args)
    # The marker separates the result from structlog's lines on the same stdout.
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
