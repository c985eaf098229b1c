"""
The outbox: background calls written to a table in the sender's transaction,
then delivered to the Tasks backend, so a broker that is down, a broker that
loses a queued task, or a process that dies after the commit loses nothing.

The picture: a letter is not dropped in the post box while the transaction
is open (a rollback would have to fetch it back); it is written in the
ledger on the signal's database, in the same transaction as the data. A
rolled-back transaction leaves no line; a committed one leaves a line that
says "to post". After the commit the letter is posted
(:func:`~patchboard._background._relay.deliver`) and nothing more is
written: the line is ticked off by the worker that opens the letter (its
claim, :func:`claim`), not by the sender. A post box that refuses the letter
leaves the line due again after a backoff (the one write of a delivery that
fails); the relay (``manage.py patchboard relay``) posts every line no
worker has ticked off once it is due: after ``OUTBOX_GRACE`` for a fresh one
(its own on-commit delivery and a worker normally win), then again after a
growing wait (:func:`redelivery_wait`), for a letter the post lost or a
worker fleet that is stopped.

"Delivered" is therefore "claimed by a worker" (``delivered_at``): an entry
no worker has claimed is still the outbox's responsibility, whether it waits
in the broker's queue, was lost by the broker, or was never enqueued.
Delivered at least once, run once per attempt: a delivery can be repeated
(the relay and the on-commit delivery racing, a task queued behind a backlog
longer than the grace, a relay that died between enqueueing and recording),
so the worker *claims* the entry before the listener runs: the first claim
of an attempt wins, any later one is a duplicate and does not run. A worker
that dies after its claim, mid-listener, is not redelivered (the operator's
``--redeliver`` is). The table (``patchboard_outbox``) is the
:class:`patchboard.models.OutboxEntry` model, looked up through the app
registry: this module is imported before the registry is ready.

Which backends get it (``PATCHBOARD["BACKGROUND"]["OUTBOX"]``): ``"auto"``
is on for a backend outside the database (RQ, Celery) and off for
django-tasks-db (its task row is written in the transaction already) and the
in-process immediate and dummy backends; ``True`` and ``False`` force it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from datetime import datetime, timedelta
from typing import Any, Final

from django.apps import apps
from django.db import connections, router
from django.utils import timezone

from patchboard._background import _framework
from patchboard._config import get_settings

BACKOFF_MIN: Final = 1.0
BACKOFF_MAX: Final = 300.0
"""Seconds: the bounds of the wait before a failed delivery is tried again."""
REDELIVERY_MAX: Final = 3600.0
"""Seconds: the most the relay waits before delivering an unclaimed entry once more."""
ERROR_CHARS: Final = 500
"""The most of a delivery error's ``Class: message`` an entry keeps."""


def model() -> Any:
    """
    The ``OutboxEntry`` model.

    Raises:
        LookupError: ``"patchboard"`` is not in ``INSTALLED_APPS``.
    """
    return apps.get_model("patchboard", "OutboxEntry")


def enabled(alias: str) -> bool:
    """
    Whether calls to the Tasks backend ``alias`` go through the outbox.

    Raises:
        UnusableBackend: ``alias`` names no usable backend (with ``"auto"``).
    """
    switch = get_settings().background.outbox
    if switch != "auto":
        return bool(switch)
    return _framework.outside_database(_framework.backend(alias))


def backoff(attempts: int) -> float:
    """
    Seconds before delivery attempt ``attempts + 1``: exponential from
    :data:`BACKOFF_MIN`, capped at :data:`BACKOFF_MAX`, with full jitter (a
    random share of it), so that senders a broker outage failed together do
    not all come back in the same second.
    """
    ceiling = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(max(attempts - 1, 0), 30))
    return max(BACKOFF_MIN, random.uniform(0, ceiling))


def redelivery_wait(deliveries: int, grace: float) -> float:
    """
    Seconds the relay waits, after its ``deliveries``-th delivery of an
    entry no worker has claimed, before delivering it again: ``grace``
    (at least :data:`BACKOFF_MIN`), doubled with each delivery, capped at
    :data:`REDELIVERY_MAX`; so a stopped worker fleet does not get every
    entry enqueued again each grace period.
    """
    base = max(grace, BACKOFF_MIN)
    doublings = min(max(deliveries - 1, 0), 30)
    return min(REDELIVERY_MAX, base * 2.0**doublings)


def error_text(exc: BaseException) -> str:
    """What an entry keeps of a delivery error: its class and message, bounded."""
    return f"{type(exc).__qualname__}: {exc}"[:ERROR_CHARS]


def write(
    job_json: dict[str, Any],
    *,
    key: str,
    using: str,
    task: Any,
    delay: float,
    error: BaseException | None = None,
) -> None:
    """
    Write one entry on database ``using``: inside an atomic block, part of
    the caller's transaction. The relay may deliver it ``delay`` seconds
    from now; ``error`` is the delivery that already failed, if one did.

    One INSERT, built once per database vendor and run on the connection's
    cursor rather than through ``Model.objects.create()``: on the request
    path, the ORM's model instance, ``save()`` and SQL compilation cost
    several times the statement itself (``make bench``'s outbox table). The
    values are still prepared by each field (``get_db_prep_save``), as the
    ORM would; no ``pre_save``/``post_save`` signal is sent for an entry.

    Raises:
        DatabaseError: the INSERT failed (the table is missing, ...).
    """
    connection = connections[using]
    values = _fields(job_json, key, task, delay, error)
    params = [
        field.get_db_prep_save(values.get(field.attname, field.get_default()), connection)
        for field in model()._meta.concrete_fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(connection), params)


_INSERTS: dict[str, str] = {}
"""The entry's INSERT statement, per database vendor (quoting differs)."""


def _insert_sql(connection: Any) -> str:
    sql = _INSERTS.get(connection.vendor)
    if sql is None:
        meta, quote = model()._meta, connection.ops.quote_name
        columns = ", ".join(quote(field.column) for field in meta.concrete_fields)
        holes = ", ".join(["%s"] * len(meta.concrete_fields))
        sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({holes})"
        _INSERTS[connection.vendor] = sql
    return sql


def _fields(
    job_json: dict[str, Any], key: str, task: Any, delay: float, error: BaseException | None
) -> dict[str, Any]:
    now = timezone.now()
    return {
        "id": uuid.UUID(key),
        "created_at": now,
        "backend": task.backend,
        "queue_name": task.queue_name,
        "priority": task.priority,
        "payload": json.dumps(job_json, separators=(",", ":")),
        "attempts": 0 if error is None else 1,
        "next_attempt_at": now + timedelta(seconds=delay),
        "last_error": "" if error is None else error_text(error),
    }


def mark_relayed(key: str, using: str, deliveries: int, grace: float) -> float:
    """
    Count the relay's delivery of an entry no worker has claimed yet (its
    ``deliveries`` becomes ``deliveries``) and make it due again after
    :func:`redelivery_wait`, in case that delivery is lost too; returns that
    wait. One UPDATE, off the request path (the on-commit delivery writes
    nothing when it succeeds).
    """
    wait = redelivery_wait(deliveries, grace)
    model().objects.using(using).filter(pk=key, delivered_at__isnull=True).update(
        deliveries=deliveries, next_attempt_at=timezone.now() + timedelta(seconds=wait)
    )
    return wait


def mark_failed(key: str, using: str, attempts: int, exc: BaseException) -> float:
    """
    Count a failed delivery (the entry's ``attempts`` becomes ``attempts``)
    and make it due again after :func:`backoff`; returns that backoff.
    """
    wait = backoff(attempts)
    model().objects.using(using).filter(pk=key, delivered_at__isnull=True).update(
        attempts=attempts,
        next_attempt_at=timezone.now() + timedelta(seconds=wait),
        last_error=error_text(exc),
    )
    return wait


def claim(key: str, using: str, attempt: int, task_id: str) -> bool:
    """
    Claim attempt ``attempt`` of the call ``key`` for this worker (running
    task ``task_id``), before its listener runs: False if this attempt was
    claimed already (a duplicate delivery: do not run it). One UPDATE, which
    also marks the entry delivered (``delivered_at``: the relay leaves it
    alone from now on, and ``OUTBOX_RETENTION`` counts from now). An entry
    that no longer exists (purged after ``OUTBOX_RETENTION``) cannot tell:
    the call runs.
    """
    entries = model().objects.using(using).filter(pk=key)
    claimed = entries.filter(claimed_attempt__lt=attempt).update(
        claimed_attempt=attempt, delivered_at=timezone.now(), task_id=task_id
    )
    return bool(claimed) or not entries.exists()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStatistics:
    """
    The outbox on one database, as the status page and the command show it.
    An entry is *pending* until a worker claims it: the outbox cannot tell a
    task queued in the broker from one the broker lost, so both count here
    until a worker starts them (or the relay delivers them again).
    """

    database: str
    pending: int
    """Unclaimed entries: written, and no worker has started them (queued in the
    broker, lost by it, waiting for their backoff or their grace)."""
    oldest_pending_at: datetime | None
    """When the oldest unclaimed entry was written."""
    failed: int
    """Unclaimed entries whose delivery failed at least once (the broker refused them)."""
    last_error: str
    """The most recent failed delivery's error ('' when no unclaimed entry has one)."""
    awaiting_worker: int
    """Unclaimed entries the relay has delivered (again) and no worker claimed since:
    queued behind a backlog longer than ``OUTBOX_GRACE``, workers stopped, or lost."""
    claimed: int
    """Entries a worker claimed (delivered): run, running, or interrupted mid-listener."""


def statistics(using: str) -> OutboxStatistics:
    """
    The outbox on database ``using`` (five queries, the unclaimed ones on
    the relay's index).

    Raises:
        DatabaseError: the table is missing (migrations not applied) or unreachable.
    """
    entries = model().objects.using(using)
    pending = entries.filter(delivered_at__isnull=True)
    oldest = pending.order_by("created_at").values_list("created_at", flat=True).first()
    failed = pending.filter(attempts__gt=0)
    last = failed.order_by("-next_attempt_at").values_list("last_error", flat=True).first()
    return OutboxStatistics(
        database=using,
        pending=pending.count(),
        oldest_pending_at=oldest,
        failed=failed.count(),
        last_error=last or "",
        awaiting_worker=pending.filter(deliveries__gt=0).count(),
        claimed=entries.filter(delivered_at__isnull=False).count(),
    )


def databases() -> list[str]:
    """The databases the outbox may be on: every one the router lets it migrate to."""
    entry = model()
    return [alias for alias in connections if router.allow_migrate_model(alias, entry)]


def has_table(using: str) -> bool:
    """Whether database ``using`` has the outbox table (its migration is applied)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        return model()._meta.db_table in connection.introspection.table_names(cursor)


def redeliver(key: str, using: str) -> bool:
    """
    Make entry ``key`` due now, for the relay's next pass; a claimed
    (delivered) one is delivered again and runs again (its claim is cleared:
    the operator's decision, e.g. for a call whose worker died mid-listener),
    and the relay's count of its deliveries starts over. False if there is
    no such entry.
    """
    return bool(
        model()
        .objects.using(using)
        .filter(pk=key)
        .update(
            next_attempt_at=timezone.now(),
            delivered_at=None,
            task_id=None,
            claimed_attempt=0,
            deliveries=0,
        )
    )


def redeliver_failed(using: str) -> int:
    """Make every unclaimed entry whose delivery failed due now; how many there were."""
    return int(
        model()
        .objects.using(using)
        .filter(delivered_at__isnull=True, attempts__gt=0)
        .update(next_attempt_at=timezone.now())
    )


def purge_delivered(using: str, older_than: float) -> int:
    """
    Delete entries a worker claimed (delivered) more than ``older_than``
    seconds ago; how many. Unclaimed entries are never purged.
    """
    cutoff = timezone.now() - timedelta(seconds=older_than)
    deleted, _ = model().objects.using(using).filter(delivered_at__lt=cutoff).delete()
    return int(deleted)
