"""
Delivering outbox entries to the Tasks backend: once after the commit that
wrote them (which writes nothing more when the backend takes the task), and
by the relay (``manage.py patchboard relay``) for every entry no worker has
claimed once it is due: entries whose delivery failed (after their backoff),
entries a process wrote and died before delivering, and entries whose task
the broker lost or no worker has taken yet (after ``OUTBOX_GRACE``, which
leaves a fresh entry to its own on-commit delivery and a worker; then again
after a wait that doubles with each of the relay's deliveries, up to an hour).

Several relays may run on PostgreSQL: each takes its batch with ``SELECT
... FOR UPDATE SKIP LOCKED``, so two relays never hold the same entry. Where
the database cannot skip locked rows (SQLite), run one relay per database;
a second one would deliver some entries twice, which the worker's claim
then runs once.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any, Final

from django.db import connections, transaction
from django.utils import timezone

from patchboard._background import _outbox
from patchboard._background import _tasks as task_module
from patchboard._config import get_settings
from patchboard._log import log_limited, logger

BATCH: Final = 100
"""Entries a relay takes per query (and holds locked, on PostgreSQL, while it delivers them)."""
PURGE_EVERY: Final = 300.0
"""Seconds between two purges of claimed entries past ``OUTBOX_RETENTION``, per relay."""


def task_for(backend: str, queue_name: str, priority: int) -> Any:
    """The ``run_listener`` task bound to a backend alias, a queue and a priority."""
    return task_module.task().using(backend=backend, priority=priority, queue_name=queue_name)


def deliver(
    task: Any,
    job_json: dict[str, Any],
    *,
    key: str,
    using: str,
    attempts: int,
    relayed: int | None,
) -> bool:
    """
    Enqueue one entry's job; True if the backend took it. ``relayed`` says
    who delivers: None for the on-commit delivery, which writes nothing more
    (the worker's claim marks the entry delivered); else the relay, and how
    many times it delivered the entry before: one UPDATE counts this
    delivery and makes the entry due again after a growing wait, in case no
    worker claims it. Logs ``background_outbox_delivered`` (``by``:
    ``"commit"`` or ``"relay"``). A backend that refuses it counts
    the failed attempt (``attempts`` failed ones before this), makes the
    entry due again after a backoff and logs ``background_outbox_retry``
    (limited per backend to one a second, the next one carrying how many
    were dropped): the relay delivers it later.

    Raises:
        DatabaseError: recording the relay's delivery, or a failed one, failed
            (the entry stays unclaimed and due: it is delivered again).
    """
    fields = {"entry": key, "listener": job_json.get("listener"), "database": using}
    by = "commit" if relayed is None else "relay"
    try:
        result = task.enqueue(job_json)
    except Exception as exc:
        wait = _outbox.mark_failed(key, using, attempts + 1, exc)
        log_limited(
            "warning",
            "background_outbox_retry",
            ("outbox", task.backend),
            **fields,
            backend=task.backend,
            attempts=attempts + 1,
            retry_in_s=round(wait, 3),
            error=type(exc).__qualname__,
            by=by,
        )
        return False
    if relayed is not None:
        _outbox.mark_relayed(key, using, relayed + 1, grace())
    logger().info(
        "background_outbox_delivered",
        **fields,
        task_id=result.id,
        backend=result.backend,
        queue_name=result.task.queue_name,
        attempts=attempts,
        deliveries=relayed + 1 if relayed is not None else 0,
        by=by,
    )
    return True


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RelayPass:
    """What one pass of the relay did on one database."""

    database: str
    delivered: int = 0
    failed: int = 0
    purged: int = 0


def relay_once(
    using: str, *, batch: int = BATCH, purge: bool = True, stop: threading.Event | None = None
) -> RelayPass:
    """
    Deliver the entries of database ``using`` that are due, ``batch`` at a
    time, until none is left, a delivery fails (the broker is likely down:
    the rest waits for the next pass, one entry probing it per pass) or
    ``stop`` is set; then, with ``purge``, delete the entries a worker
    claimed more than ``OUTBOX_RETENTION`` seconds ago. Logs
    ``background_outbox_relayed`` when it did anything.
    """
    delivered = failed = 0
    while stop is None or not stop.is_set():
        done, refused = _batch(using, batch)
        delivered, failed = delivered + done, failed + refused
        if refused or done < batch:
            break
    purged = 0
    if purge:
        purged = _outbox.purge_delivered(using, get_settings().background.outbox_retention)
    outcome = RelayPass(database=using, delivered=delivered, failed=failed, purged=purged)
    if delivered or failed or purged:
        logger().info(
            "background_outbox_relayed",
            database=using,
            delivered=delivered,
            failed=failed,
            purged=purged,
        )
    return outcome


def _batch(using: str, size: int) -> tuple[int, int]:
    connection = connections[using]
    due = (
        _outbox.model()
        .objects.using(using)
        .filter(delivered_at__isnull=True, next_attempt_at__lte=timezone.now())
        .order_by("next_attempt_at")
    )
    if not connection.features.has_select_for_update_skip_locked:
        # SQLite: no row locks to take, and a write transaction held while a broker
        # answers would lock every sender out; each entry is recorded on its own.
        return _deliver_all(list(due[:size]), using)
    with transaction.atomic(using=using):
        return _deliver_all(list(due.select_for_update(skip_locked=True)[:size]), using)


def _deliver_all(entries: list[Any], using: str) -> tuple[int, int]:
    done = 0
    for entry in entries:
        task = task_for(entry.backend, entry.queue_name, entry.priority)
        key, job_json = str(entry.id), json.loads(entry.payload)
        attempts, relayed = entry.attempts, entry.deliveries
        if not deliver(task, job_json, key=key, using=using, attempts=attempts, relayed=relayed):
            # The broker is likely down: one entry per pass probes it, the rest stay due.
            return done, 1
        done += 1
    return done, 0


def relay_forever(
    databases: list[str], *, interval: float, stop: threading.Event, batch: int = BATCH
) -> None:
    """
    Relay passes over ``databases`` every ``interval`` seconds until ``stop``
    is set (a SIGTERM handler sets it: the relay stops between batches, never
    between enqueueing an entry and recording it); claimed entries are purged
    every :data:`PURGE_EVERY` seconds.
    """
    purged_at: float | None = None
    while not stop.is_set():
        now = time.monotonic()
        purge = purged_at is None or now - purged_at >= PURGE_EVERY
        for alias in databases:
            relay_once(alias, batch=batch, purge=purge, stop=stop)
        if purge:
            purged_at = now
        stop.wait(interval)


def grace() -> float:
    """Seconds the relay leaves a fresh entry to its on-commit delivery (``OUTBOX_GRACE``)."""
    return get_settings().background.outbox_grace
