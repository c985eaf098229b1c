"""
patchboard's one model, the outbox of background listeners (Django finds an
app's models in its ``models`` module; the logic is in
:mod:`patchboard._background._outbox`).

An entry is one background call written in the sender's transaction, on the
signal's database: the task the on-commit delivery (or the relay) enqueues,
and the record a worker claims so that a call delivered twice runs once. Until
a worker claims it, the entry is the outbox's to deliver (again).
"""

from __future__ import annotations

import uuid

from django.db import models


class OutboxEntry(models.Model):
    """One background call, from its write in the sender's transaction to its purge."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    """The call's idempotency key: the job carries it to the worker (``key``)."""
    created_at = models.DateTimeField()
    backend = models.CharField(max_length=100)
    """The ``TASKS`` alias the call is delivered to."""
    queue_name = models.CharField(max_length=100)
    priority = models.IntegerField()
    payload = models.TextField()
    """The job's JSON text (``Job.to_json()``): what the task receives. Text, not a
    ``JSONField``, whose system check opens a connection to SQLite: a project's
    ``run_checks()`` stays off the database."""
    attempts = models.PositiveIntegerField(default=0)
    """Failed delivery attempts (a delivery that succeeded is not counted)."""
    next_attempt_at = models.DateTimeField()
    """When the relay may deliver it, if no worker has claimed it by then: after the
    grace period, the backoff of a failed attempt, or the wait after a relay delivery."""
    last_error = models.CharField(max_length=500, blank=True, default="")
    """The last failed delivery's exception class and message (never argument values)."""
    delivered_at = models.DateTimeField(null=True, blank=True)
    """When a worker last claimed it (None: unclaimed, the relay's to deliver). Stamped by
    the worker's claim, never by the sender: an enqueued task a broker loses stays None."""
    task_id = models.CharField(max_length=255, null=True, blank=True)
    """The task of the worker that claimed it."""
    claimed_attempt = models.PositiveIntegerField(default=0)
    """The job attempt a worker last claimed (0: never run): the run-once check."""
    deliveries = models.PositiveIntegerField(default=0)
    """The relay's deliveries of it while unclaimed (its wait before the next one grows)."""

    class Meta:
        app_label = "patchboard"
        db_table = "patchboard_outbox"
        indexes = [
            # The relay's query: what no worker has claimed and is due, oldest first.
            models.Index(
                fields=["next_attempt_at"],
                name="patchboard_outbox_due",
                condition=models.Q(delivered_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        state = (
            "claimed"
            if self.delivered_at
            else f"unclaimed, {self.attempts} failed attempts, {self.deliveries} relayed"
        )
        return f"outbox entry {self.id} ({state})"
