"""
The outbox of background listeners, on the test database (SQLite), with the
DummyBackend as the broker (``OUTBOX: True``; ``"auto"`` leaves it off for
in-process backends): the write in the sender's transaction, the delivery on
commit, retries with backoff, the relay, the worker's run-once claim (which
marks an entry delivered), the relay's redelivery of what no worker claimed,
the setting, the system check and the management command.

A refusing broker is the DummyBackend's ``enqueue`` replaced by one that
raises; a broker that loses a task is the DummyBackend cleared; the real
broker stopped and started is in test_outbox_engines.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.dispatch import Signal as DjangoSignal
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

try:
    from django.tasks import TaskContext, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.backends.dummy import DummyBackend
    from django.tasks.backends.immediate import ImmediateBackend
except ImportError:  # Django 5.2, with the django-tasks backport
    from django_tasks import TaskContext, task_backends  # type: ignore[no-redef]
    from django_tasks.backends.base import BaseTaskBackend  # type: ignore[no-redef]
    from django_tasks.backends.dummy import DummyBackend  # type: ignore[no-redef]
    from django_tasks.backends.immediate import ImmediateBackend  # type: ignore[no-redef]
from structlog.testing import LogCapture

from patchboard import Signal, receiver
from patchboard._background import _outbox, _relay
from patchboard._background._checks import W023_ID, outbox_table_warning
from patchboard._background._framework import outside_database
from patchboard._config import SettingError, get_settings, parse
from patchboard._log import Limiter
from patchboard._state import state
from patchboard.models import OutboxEntry
from patchboard.testing import VirtualClock
from tests.background.test_background import manage_check
from tests.project.test_logs import Timers

outbox_signal = Signal(name="tests.outbox.paid")
django_signal = DjangoSignal()
ran: list[dict[str, Any]] = []


def record(sender: Any, signal: Any, **kwargs: Any) -> None:
    ran.append(kwargs)


async def record_async(sender: Any, signal: Any, **kwargs: Any) -> None:
    ran.append({**kwargs, "async": True})


class BrokerDown:
    """The DummyBackend's ``enqueue`` refusing every task while down, as a broker would."""

    def __init__(self, backend: DummyBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = False
        self.refused = 0
        real = backend.enqueue

        def enqueue(task: Any, args: Any, kwargs: Any) -> Any:
            if self.down:
                self.refused += 1
                raise ConnectionError("broker down")
            return real(task, args, kwargs)

        monkeypatch.setattr(backend, "enqueue", enqueue)


@pytest.fixture(autouse=True)
def listener() -> Iterator[None]:
    ran.clear()
    receiver(outbox_signal, mode="background", on_error="log")(record)
    yield
    outbox_signal.disconnect(record)
    ran.clear()


@pytest.fixture
def outbox(dummy: DummyBackend, settings: Any) -> DummyBackend:
    """The DummyBackend as the broker, with the outbox forced on."""
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy", "OUTBOX": True}}
    return dummy


@pytest.fixture
def broker(outbox: DummyBackend, monkeypatch: pytest.MonkeyPatch) -> BrokerDown:
    return BrokerDown(outbox, monkeypatch)


def run_pending(backend: DummyBackend) -> list[Any]:
    """Run what waits in the DummyBackend, as a worker would; the tasks' results."""
    pending = list(backend.results)
    backend.clear()
    return [
        result.task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
        for result in pending
    ]


def entries() -> list[Any]:
    return list(OutboxEntry.objects.order_by("created_at"))


def events(logs: LogCapture, name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs.entries if entry["event"] == name]


def make_due() -> None:
    """Time passes: every unclaimed entry's backoff, grace or wait is over."""
    OutboxEntry.objects.filter(delivered_at__isnull=True).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


# -- the write, in the sender's transaction --------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_writes_no_entry_and_enqueues_nothing(
    outbox: DummyBackend,
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        [outcome] = outbox_signal.send_sync(sender=None, n=1)
        assert len(entries()) == 1  # written in the transaction ...
        raise RuntimeError("payment declined")

    assert (outcome.status, outcome.task_id) == ("enqueued", None)
    assert entries() == []  # ... and rolled back with it
    assert outbox.results == []


@pytest.mark.django_db(transaction=True)
def test_committed_transaction_writes_one_entry_and_delivers_it(
    outbox: DummyBackend, logs: LogCapture
) -> None:
    with transaction.atomic():
        [outcome] = outbox_signal.send_sync(sender=None, n=1)
        [entry] = entries()
        assert entry.delivered_at is None
        assert outbox.results == []  # not before the commit

    [result] = outbox.results
    [entry] = entries()
    assert outcome.task_id is None
    # Enqueued, not yet delivered: a worker's claim marks it so.
    assert (entry.delivered_at, entry.task_id, entry.attempts, entry.deliveries) == (
        None,
        None,
        0,
        0,
    )
    assert (entry.backend, entry.queue_name, entry.priority) == ("dummy", "default", 0)
    payload = result.args[0]
    assert json.loads(entry.payload) == payload
    assert (payload["key"], payload["db"]) == (str(entry.id), "default")
    [delivered] = events(logs, "background_outbox_delivered")
    assert (delivered["entry"], delivered["task_id"], delivered["by"]) == (
        str(entry.id),
        result.id,
        "commit",
    )
    assert "n" not in delivered and "kwargs" not in delivered  # no argument values

    assert run_pending(outbox) == ["ok"]
    assert ran == [{"n": 1}]
    entry = OutboxEntry.objects.get()
    assert (entry.claimed_attempt, entry.task_id) == (1, result.id)
    assert entry.delivered_at is not None  # the claim delivered it


@pytest.mark.django_db(transaction=True)
def test_the_sender_writes_one_insert_and_nothing_after_the_commit(
    outbox: DummyBackend,
) -> None:
    """The outbox costs the request one INSERT: a delivery that succeeds writes nothing."""
    with CaptureQueriesContext(connection) as queries:
        with transaction.atomic():
            outbox_signal.send_sync(sender=None, n=1)
        assert len(outbox.results) == 1  # delivered on commit, inside the capture

    touched = [q["sql"] for q in queries.captured_queries if "patchboard_outbox" in q["sql"]]
    assert len(touched) == 1, touched
    assert touched[0].startswith("INSERT INTO")
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert writes == []


@pytest.mark.django_db(transaction=True)
def test_a_fresh_entry_waits_out_the_grace_before_the_relay_takes_it(
    outbox: DummyBackend,
) -> None:
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=1)
        # Written, and its process dies before the commit's delivery: only the row is left.
        transaction.get_connection().run_on_commit.clear()
    [entry] = entries()
    grace = get_settings().background.outbox_grace
    assert entry.next_attempt_at - entry.created_at == timedelta(seconds=grace)

    assert _relay.relay_once("default").delivered == 0  # the grace is not over
    make_due()
    assert _relay.relay_once("default").delivered == 1

    assert run_pending(outbox) == ["ok"]
    assert ran == [{"n": 1}]


# -- the broker refuses ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_refused_on_commit_the_entry_waits_its_backoff_then_the_relay_delivers_it(
    outbox: DummyBackend, broker: BrokerDown, logs: LogCapture
) -> None:
    broker.down = True
    with transaction.atomic():
        [outcome] = outbox_signal.send_sync(sender=None, n=1)

    assert outcome.status == "enqueued"
    [entry] = entries()
    assert (entry.delivered_at, entry.attempts) == (None, 1)
    assert entry.last_error == "ConnectionError: broker down"
    wait = (entry.next_attempt_at - timezone.now()).total_seconds()
    assert 0 < wait <= _outbox.BACKOFF_MIN
    [retry] = events(logs, "background_outbox_retry")
    assert (retry["attempts"], retry["error"], retry["by"]) == (1, "ConnectionError", "commit")

    make_due()
    assert _relay.relay_once("default").failed == 1  # still down: a second attempt counted
    assert OutboxEntry.objects.get().attempts == 2

    broker.down = False
    make_due()
    assert _relay.relay_once("default").delivered == 1
    entry = OutboxEntry.objects.get()
    assert (entry.delivered_at, entry.attempts, entry.deliveries) == (None, 2, 1)
    assert run_pending(outbox) == ["ok"]
    assert ran == [{"n": 1}]
    assert OutboxEntry.objects.get().delivered_at is not None


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_a_refused_call_is_written_for_the_relay(
    outbox: DummyBackend, broker: BrokerDown, logs: LogCapture
) -> None:
    broker.down = True

    [outcome] = outbox_signal.send_sync(sender=None, n=2)

    assert (outcome.status, outcome.task_id) == ("enqueued", None)
    [entry] = entries()
    assert (entry.attempts, entry.delivered_at) == (1, None)
    [written] = events(logs, "background_outbox_written")
    assert (written["reason"], written["error"], written["entry"]) == (
        "refused",
        "ConnectionError",
        str(entry.id),
    )
    broker.down = False
    make_due()
    assert _relay.relay_once("default").delivered == 1
    assert run_pending(outbox) == ["ok"]
    assert ran == [{"n": 2}]


@pytest.mark.django_db(transaction=True)
async def test_async_enqueue_refused_is_written_then_relayed(
    outbox: DummyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Django's ``asend`` to an async background listener enqueues through ``aenqueue``."""
    refused = []

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        refused.append(args)
        raise ConnectionError("broker down")

    monkeypatch.setattr(outbox, "aenqueue", refuse)
    receiver(django_signal, mode="background", on_error="log")(record_async)
    try:
        await django_signal.asend(sender=None, n=3)
        monkeypatch.undo()
        assert len(refused) == 1
        [entry] = await sync_to_async(entries)()
        assert (entry.attempts, entry.last_error) == (1, "ConnectionError: broker down")

        def relay() -> int:
            make_due()
            return _relay.relay_once("default").delivered

        assert await sync_to_async(relay)() == 1
        assert await sync_to_async(run_pending)(outbox) == ["ok"]
    finally:
        django_signal.disconnect(record_async)
    assert ran == [{"n": 3, "async": True}]


@pytest.mark.django_db(transaction=True)
def test_without_the_outbox_a_refused_call_is_the_listeners_error(
    outbox: DummyBackend, broker: BrokerDown, settings: Any
) -> None:
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy", "OUTBOX": False}}
    broker.down = True

    [outcome] = outbox_signal.send_sync(sender=None, n=1)

    assert outcome.status == "error"
    assert entries() == []


@pytest.mark.django_db(transaction=True)
def test_an_outage_logs_one_retry_a_second_and_counts_every_attempt(
    outbox: DummyBackend, broker: BrokerDown, logs: LogCapture
) -> None:
    clock = VirtualClock()
    state.limiter = Limiter(clock=clock, timer=Timers())
    broker.down = True
    for n in range(5):
        with transaction.atomic():
            outbox_signal.send_sync(sender=None, n=n)
    clock.advance(1.0)
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=5)

    assert [e.attempts for e in entries()] == [1] * 6  # every attempt counted
    assert broker.refused == 6
    first, summary = events(logs, "background_outbox_retry")
    assert "suppressed" not in first
    assert summary["suppressed"] == 4  # lines plus suppressed: every failed delivery


# -- the worker runs each attempt once ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_delivery_runs_the_listener_once(
    outbox: DummyBackend, logs: LogCapture
) -> None:
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=1)
    [entry] = entries()
    # The relay delivers it again (it raced the on-commit delivery).
    _relay.deliver(
        _relay.task_for("dummy", "default", 0),
        json.loads(entry.payload),
        key=str(entry.id),
        using="default",
        attempts=0,
        relayed=0,
    )
    assert len(outbox.results) == 2

    assert sorted(run_pending(outbox)) == ["duplicate", "ok"]
    assert ran == [{"n": 1}]
    [duplicate] = events(logs, "background_duplicate")
    assert (duplicate["entry"], duplicate["attempt"]) == (str(entry.id), 1)


@pytest.mark.django_db(transaction=True)
def test_the_next_attempt_of_a_rescheduled_call_claims_again(outbox: DummyBackend) -> None:
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=1)
    [result] = outbox.results
    assert run_pending(outbox) == ["ok"]
    # What a reschedule enqueues: the same key, attempt + 1; delivered twice here.
    following = {**result.args[0], "attempt": 2}
    task = _relay.task_for("dummy", "default", 0)
    task.enqueue(following)
    task.enqueue(following)

    assert run_pending(outbox) == ["ok", "duplicate"]
    assert OutboxEntry.objects.get().claimed_attempt == 2
    assert ran == [{"n": 1}, {"n": 1}]


@pytest.mark.django_db(transaction=True)
def test_a_purged_entry_cannot_tell_and_the_call_runs(outbox: DummyBackend) -> None:
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=1)
    OutboxEntry.objects.all().delete()

    assert run_pending(outbox) == ["ok"]
    assert ran == [{"n": 1}]


# -- what no worker claims: the relay delivers it again ---------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_task_the_broker_lost_is_delivered_again_after_the_grace_and_runs_once(
    outbox: DummyBackend, logs: LogCapture
) -> None:
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=1)
    assert len(outbox.results) == 1
    outbox.clear()  # the broker lost it (a restart without persistence, a dead worker's job)

    assert _relay.relay_once("default").delivered == 0  # within the grace: left to a worker
    make_due()
    before = timezone.now()
    assert _relay.relay_once("default").delivered == 1
    after = timezone.now()
    [entry] = entries()
    grace = timedelta(seconds=get_settings().background.outbox_grace)
    assert (entry.delivered_at, entry.deliveries) == (None, 1)
    assert before + grace <= entry.next_attempt_at <= after + grace  # due again after the grace
    assert _relay.relay_once("default").delivered == 0  # not due again yet

    assert run_pending(outbox) == ["ok"]
    assert ran == [{"n": 1}]
    assert OutboxEntry.objects.get().delivered_at is not None
    make_due()
    assert _relay.relay_once("default").delivered == 0  # claimed: the relay is done with it
    relayed = [e for e in events(logs, "background_outbox_delivered") if e["by"] == "relay"]
    assert [(e["entry"], e["deliveries"]) for e in relayed] == [(str(entry.id), 1)]


@pytest.mark.django_db(transaction=True)
def test_an_unclaimed_entry_is_delivered_again_after_a_doubling_wait_and_runs_once(
    outbox: DummyBackend,
) -> None:
    """No worker runs (a stopped fleet): each relay delivery waits twice as long as the last."""
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=1)
    grace = get_settings().background.outbox_grace
    waits = []
    for _ in range(3):
        make_due()
        before = timezone.now()
        assert _relay.relay_once("default").delivered == 1
        entry = OutboxEntry.objects.get()
        waits.append(round((entry.next_attempt_at - before).total_seconds() / grace))
    assert waits == [1, 2, 4]
    assert OutboxEntry.objects.get().deliveries == 3
    assert len(outbox.results) == 4  # on commit, then the relay three times

    assert sorted(run_pending(outbox)) == ["duplicate", "duplicate", "duplicate", "ok"]
    assert ran == [{"n": 1}]


def test_the_redelivery_wait_doubles_from_the_grace_up_to_an_hour() -> None:
    assert [_outbox.redelivery_wait(d, 5.0) for d in (1, 2, 3, 4, 10, 11, 100)] == [
        5,
        10,
        20,
        40,
        2560,
        3600,
        3600,
    ]
    assert _outbox.redelivery_wait(1, 0.0) == _outbox.BACKOFF_MIN  # a zero grace: not a busy loop


@pytest.mark.django_db(transaction=True)
def test_a_call_the_worker_refuses_is_claimed_so_the_relay_leaves_it(
    outbox: DummyBackend, logs: LogCapture
) -> None:
    """A refusal is final, as without the outbox: the claim comes before it."""
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=1)
    outbox_signal.disconnect(record)  # this worker does not know the listener

    assert run_pending(outbox) == ["refused"]
    assert OutboxEntry.objects.get().claimed_attempt == 1
    make_due()
    assert _relay.relay_once("default").delivered == 0
    assert len(events(logs, "background_refused")) == 1


@pytest.mark.django_db(transaction=True)
def test_the_relay_purges_claimed_entries_past_the_retention_never_unclaimed_ones(
    outbox: DummyBackend, settings: Any
) -> None:
    settings.PATCHBOARD = {
        "BACKGROUND": {"BACKEND": "dummy", "OUTBOX": True, "OUTBOX_RETENTION": 60}
    }
    for n in range(2):
        with transaction.atomic():
            outbox_signal.send_sync(sender=None, n=n)
    assert run_pending(outbox) == ["ok", "ok"]
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=2)  # enqueued, never claimed
    old, recent, unclaimed = entries()
    long_ago = timezone.now() - timedelta(seconds=61)
    OutboxEntry.objects.filter(pk=old.pk).update(delivered_at=long_ago)
    OutboxEntry.objects.filter(pk=unclaimed.pk).update(created_at=long_ago)

    assert _relay.relay_once("default").purged == 1
    assert [e.pk for e in entries()] == [unclaimed.pk, recent.pk]


# -- the setting ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["auto", True, False])
def test_outbox_setting_accepts_auto_true_false(value: object) -> None:
    settings, errors = parse({"BACKGROUND": {"OUTBOX": value}})
    assert errors == []
    assert settings.background.outbox == value


@pytest.mark.parametrize("value", [1, 0, "on", None, "AUTO"])
def test_outbox_setting_refuses_anything_else_naming_the_key(value: object) -> None:
    _, [error] = parse({"BACKGROUND": {"OUTBOX": value}})
    assert isinstance(error, SettingError)
    assert error.key == "BACKGROUND.OUTBOX"
    assert f"OUTBOX must be 'auto', True or False, got {value!r}" in str(error)


@pytest.mark.parametrize(
    ("key", "value"), [("OUTBOX_GRACE", -1), ("OUTBOX_RETENTION", 0), ("OUTBOX_GRACE", "5")]
)
def test_outbox_durations_are_validated(key: str, value: object) -> None:
    _, [error] = parse({"BACKGROUND": {key: value}})
    assert error.key == f"BACKGROUND.{key}"


class BrokerBackend(BaseTaskBackend):  # type: ignore[misc]
    """A backend outside the database, as RQ's and Celery's are."""

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        raise NotImplementedError


class OwnDummy(DummyBackend):  # type: ignore[misc]
    """A project's subclass of an in-process backend."""


def test_auto_is_on_for_a_backend_outside_the_database_by_class() -> None:
    from django_tasks_db import DatabaseBackend

    options: dict[str, Any] = {"QUEUES": [], "OPTIONS": {}}
    assert outside_database(BrokerBackend("broker", options)) is True
    assert outside_database(task_backends["dummy"]) is False
    assert outside_database(OwnDummy("own", options)) is False
    assert outside_database(ImmediateBackend("immediate", options)) is False
    assert outside_database(DatabaseBackend("db", options)) is False


def test_auto_is_off_for_the_test_backends(settings: Any) -> None:
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy"}}
    assert _outbox.enabled("dummy") is False
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy", "OUTBOX": True}}
    assert _outbox.enabled("dummy") is True


# -- the payload --------------------------------------------------------------------------


def test_a_payload_without_key_and_db_still_runs(outbox: DummyBackend) -> None:
    outbox_signal.send_sync(sender=None, n=4)  # enqueued at once: no entry, no key
    [result] = outbox.results
    assert "key" not in result.args[0]

    assert run_pending(outbox) == ["ok"]
    assert ran == [{"n": 4}]


@pytest.mark.parametrize(
    "fields",
    [{"key": "not-a-uuid", "db": "default"}, {"key": str(uuid.uuid4())}, {"db": "default"}],
)
def test_a_payload_with_a_bad_key_is_refused(outbox: DummyBackend, fields: dict[str, Any]) -> None:
    outbox_signal.send_sync(sender=None, n=5)
    [result] = outbox.results
    outbox.clear()
    _relay.task_for("dummy", "default", 0).enqueue({**result.args[0], **fields})

    assert run_pending(outbox) == ["refused"]
    assert ran == []


def test_a_payload_naming_an_unknown_database_is_refused(outbox: DummyBackend) -> None:
    outbox_signal.send_sync(sender=None, n=5)
    [result] = outbox.results
    outbox.clear()
    fields = {"key": str(uuid.uuid4()), "db": "elsewhere"}
    _relay.task_for("dummy", "default", 0).enqueue({**result.args[0], **fields})

    assert run_pending(outbox) == ["refused"]


# -- the system check and the command ----------------------------------------------------

FORCED_ON = """
TASKS = {{"default": {{"BACKEND": "{immediate}"}}}}
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": "{path}"}}}}
PATCHBOARD = {{"BACKGROUND": {{"OUTBOX": True}}}}
"""


def test_check_warns_when_the_outbox_table_is_missing(tmp_path: Path) -> None:
    immediate = f"{type(task_backends['default']).__module__}.ImmediateBackend"
    tasks = FORCED_ON.format(immediate=immediate, path=tmp_path / "db.sqlite3")

    done = manage_check(tmp_path, tasks)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    warning = outbox_table_warning("default")
    assert f"({W023_ID}) {warning.msg}" in done.stdout + done.stderr
    assert "migrate patchboard --database default" in done.stdout + done.stderr


@pytest.mark.django_db
def test_check_is_quiet_once_the_table_exists() -> None:
    from patchboard._background._checks import check_outbox_tables

    assert check_outbox_tables(["default"]) == []


@pytest.mark.django_db(transaction=True)
def test_outbox_command_lists_redelivers_and_purges(
    outbox: DummyBackend, broker: BrokerDown
) -> None:
    broker.down = True
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=1)
    broker.down = False
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=2)
    out = StringIO()

    call_command("patchboard", "outbox", "--database", "default", stdout=out)

    # Both unclaimed: the refused one, and the one enqueued that no worker ran yet.
    assert "default: unclaimed 2 (oldest 0 s), failed deliveries 1" in out.getvalue()
    assert "relayed again and not yet claimed 0, claimed by a worker 0" in out.getvalue()
    assert "last error: ConnectionError: broker down" in out.getvalue()
    out = StringIO()
    call_command("patchboard", "outbox", "--database", "default", "--redeliver-failed", stdout=out)
    assert "default: 1 failed deliveries due now." in out.getvalue()
    out = StringIO()
    call_command("patchboard", "relay", "--once", "--database", "default", stdout=out)
    assert "default: delivered 1, failed 0" in out.getvalue()
    out = StringIO()
    call_command("patchboard", "outbox", "--database", "default", stdout=out)
    assert "relayed again and not yet claimed 1, claimed by a worker 0" in out.getvalue()
    assert run_pending(outbox) == ["ok", "ok"]
    assert OutboxEntry.objects.filter(delivered_at__isnull=True).count() == 0

    out = StringIO()
    call_command(
        "patchboard", "outbox", "--database", "default", "--purge-delivered", "0", stdout=out
    )
    assert "default: purged 2 claimed entries." in out.getvalue()
    assert "default: unclaimed 0 (oldest -)" in out.getvalue()
    assert entries() == []


@pytest.mark.django_db(transaction=True)
def test_redelivering_a_claimed_entry_runs_it_again(outbox: DummyBackend) -> None:
    with transaction.atomic():
        outbox_signal.send_sync(sender=None, n=1)
    assert run_pending(outbox) == ["ok"]
    [entry] = entries()

    call_command(
        "patchboard",
        "outbox",
        "--database",
        "default",
        "--redeliver",
        str(entry.id),
        stdout=StringIO(),
    )
    entry.refresh_from_db()
    assert (entry.delivered_at, entry.claimed_attempt, entry.deliveries) == (None, 0, 0)
    call_command("patchboard", "relay", "--once", "--database", "default", stdout=StringIO())

    assert run_pending(outbox) == ["ok"]
    assert ran == [{"n": 1}, {"n": 1}]
    assert OutboxEntry.objects.get().claimed_attempt == 1


@pytest.mark.django_db
def test_redelivering_an_unknown_entry_names_it() -> None:
    key = str(uuid.uuid4())
    with pytest.raises(CommandError, match=f"no outbox entry {key} on default"):
        call_command("patchboard", "outbox", "--database", "default", "--redeliver", key)


def test_backoff_doubles_from_one_second_up_to_five_minutes_with_full_jitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_outbox.random, "uniform", lambda low, high: high)
    assert [_outbox.backoff(a) for a in (1, 2, 3, 4, 9, 10, 60)] == [1, 2, 4, 8, 256, 300, 300]
    # The jitter's low end: never sooner than a second.
    monkeypatch.setattr(_outbox.random, "uniform", lambda low, high: low)
    assert {_outbox.backoff(a) for a in (1, 5, 60)} == {_outbox.BACKOFF_MIN}
