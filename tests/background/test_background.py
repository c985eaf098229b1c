"""
Background listeners with the in-memory Tasks backends: ``default`` is the
ImmediateBackend (the task runs inside ``enqueue``), ``dummy`` the
DummyBackend (tasks wait in memory until :func:`run_pending` runs them, as a
worker would).

Internals on purpose: the worker's entry (``_tasks.run``, ``run_listener``),
the payload encoder, the registry and the background checks: a worker and
a forged payload reach them without the public API.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import Signal as DjangoSignal

try:
    from django.tasks import TaskContext, task_backends
    from django.tasks.backends.dummy import DummyBackend
except ImportError:  # Django 5.2, with the django-tasks backport
    from django_tasks import TaskContext, task_backends  # type: ignore[no-redef]
    from django_tasks.backends.dummy import DummyBackend  # type: ignore[no-redef]
from structlog.testing import LogCapture

from patchboard import CircuitOpen, ListenerTimeout, NotSerializable, Signal, receiver
from patchboard._background._checks import (
    E020_ID,
    W022,
    check_background,
    defer_warning,
    priority_error,
    queue_error,
    signal_warning,
)
from patchboard._background._payload import MAX_DEPTH, TAG, Job, encode
from patchboard._background._registry import is_process_local, signal_key
from patchboard._background._tasks import run, run_listener
from tests.testapp.models import Order

ROOT = Path(__file__).resolve().parents[2]

order_paid = Signal(name="tests.background.order_paid")
plain_signal = DjangoSignal()

seen: list[dict[str, Any]] = []
RETRY_AT: list[datetime | None] = [None]


def record(signal: Any, sender: Any, **kwargs: Any) -> str:
    seen.append({"signal": signal, "sender": sender, **kwargs})
    return "recorded"


async def record_async(signal: Any, sender: Any, **kwargs: Any) -> str:
    seen.append({"signal": signal, "sender": sender, **kwargs})
    return "recorded"


def never_connected(sender: Any, **kwargs: Any) -> None:
    seen.append({"forged": True})


def circuit_is_open(sender: Any, **kwargs: Any) -> None:
    raise CircuitOpen("payments", RETRY_AT[0])


def broken(sender: Any, **kwargs: Any) -> None:
    raise ConnectionError("mail server down")


async def slow(sender: Any, **kwargs: Any) -> None:
    await asyncio.sleep(5)


def run_pending() -> list[Any]:
    """Run what waits in the DummyBackend, as a worker would; return the tasks' results."""
    backend = task_backends["dummy"]
    assert isinstance(backend, DummyBackend)
    pending = list(backend.results)
    backend.clear()
    return [
        result.task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
        for result in pending
    ]


def events(logs: LogCapture, name: str) -> list[Any]:
    return [entry for entry in logs.entries if entry["event"] == name]


def forged(listener: str, signal: str = "tests.background.order_paid", **fields: Any) -> Any:
    job = Job(
        listener=listener,
        signal=signal,
        sender=None,
        kwargs={},
        first_enqueued_at=datetime.now(UTC),
    )
    return {**job.to_json(), **fields}


@pytest.fixture(autouse=True)
def calls() -> Iterator[list[dict[str, Any]]]:
    seen.clear()
    RETRY_AT[0] = None
    yield seen
    seen.clear()


@pytest.fixture
def connect() -> Iterator[Callable[..., None]]:
    """Connect a module-level listener with options; disconnected after the test."""
    made: list[tuple[Any, Callable[..., Any], Any]] = []

    def connect_(signal: Any, func: Callable[..., Any], sender: Any = None, **options: Any) -> None:
        receiver(signal, sender=sender, **options)(func)
        for each in signal if isinstance(signal, list) else [signal]:
            made.append((each, func, sender))

    yield connect_
    for signal, func, sender in made:
        signal.disconnect(func, sender=sender)


# -- sending -----------------------------------------------------------------------


def test_send_enqueues_a_task_and_returns_before_the_listener_runs(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background")

    report = order_paid.send_sync(sender=None, amount=Decimal("9.99"))

    [outcome] = report
    assert outcome.status == "enqueued"
    assert outcome.receiver is record
    assert [result.id for result in dummy.results] == [outcome.task_id]
    assert report.values() == []
    assert seen == []

    assert run_pending() == ["ok"]
    assert seen == [{"signal": order_paid, "sender": None, "amount": Decimal("9.99")}]


async def test_send_async_report_shows_task_ids(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background")
    connect(order_paid, record_async, mode="background")

    report = await order_paid.send_async(sender=None, when=datetime(2031, 1, 1, tzinfo=UTC))

    assert [o.status for o in report] == ["enqueued", "enqueued"]
    assert {o.task_id for o in report} == {result.id for result in dummy.results}
    assert None not in {o.task_id for o in report}


async def test_async_listener_under_django_asend_enqueues_through_aenqueue(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(plain_signal, record_async, mode="background")

    [(_, response)] = await plain_signal.asend(sender=None, n=1)

    assert response is None
    assert len(dummy.results) == 1
    assert seen == []


def test_one_task_per_background_listener_and_signal(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect([order_paid, plain_signal], record, mode="background")

    plain_signal.send(sender=None, n=2)
    assert run_pending() == ["ok"]

    assert seen == [{"signal": plain_signal, "sender": None, "n": 2}]


def test_priority_and_queue_name_become_the_tasks(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background", priority=7, queue_name="emails")

    order_paid.send_sync(sender=None)

    [result] = dummy.results
    assert (result.task.priority, result.task.queue_name, result.backend) == (7, "emails", "dummy")


def test_unencodable_argument_raises_at_send_and_enqueues_nothing(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background")

    with pytest.raises(NotSerializable) as caught:
        order_paid.send_sync(sender=None, cart=object())

    assert caught.value.listener == "tests.background.test_background.record"
    assert caught.value.argument == "kwargs['cart']"
    assert dummy.results == []


@pytest.mark.parametrize(("on_error", "status"), [("log", "error")])
def test_a_failing_backend_is_the_listeners_error(
    dummy: DummyBackend,
    connect: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    logs: LogCapture,
    on_error: str,
    status: str,
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(dummy, "enqueue", refuse)
    connect(order_paid, record, mode="background", on_error=on_error)

    [outcome] = order_paid.send_sync(sender=None)

    assert outcome.status == status
    assert isinstance(outcome.error, ConnectionError)
    assert events(logs, "listener_failed")


def test_a_failing_backend_raises_with_on_error_raise(
    dummy: DummyBackend, connect: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(dummy, "enqueue", refuse)
    connect(order_paid, record, mode="background", on_error="raise")

    with pytest.raises(ConnectionError):
        order_paid.send_sync(sender=None)


# -- Django's own signals ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_post_save_runs_a_background_listener_with_the_instance_fetched_again(
    connect: Callable[..., None],
) -> None:
    paid_at = datetime(2031, 5, 4, 12, 30, tzinfo=UTC)
    connect(post_save, record, sender=Order, mode="background")

    order = Order.objects.create(reference="A-1", paid_at=paid_at)
    order.reference = "A-1b"
    order.save(update_fields=["reference"])

    first, second = seen
    assert first["signal"] is post_save
    assert first["sender"] is Order
    assert first["instance"] is not order
    assert (first["instance"].pk, first["instance"].paid_at) == (order.pk, paid_at)
    assert (first["created"], first["update_fields"], first["raw"]) == (True, None, False)
    assert first["using"] == "default"
    assert second["created"] is False
    assert second["update_fields"] == frozenset({"reference"})
    assert second["instance"].reference == "A-1b"


# -- transactions --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_enqueues_nothing(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background")

    with pytest.raises(RuntimeError), transaction.atomic():
        [outcome] = order_paid.send_sync(sender=None)
        raise RuntimeError("payment declined")

    assert (outcome.status, outcome.task_id) == ("enqueued", None)
    assert dummy.results == []


@pytest.mark.django_db(transaction=True)
def test_inside_atomic_the_task_is_enqueued_on_commit(
    dummy: DummyBackend, connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, record, mode="background")

    with transaction.atomic():
        [outcome] = order_paid.send_sync(sender=None)
        assert dummy.results == []

    [result] = dummy.results
    assert outcome.task_id is None
    [enqueued] = events(logs, "background_enqueued")
    assert (enqueued["task_id"], enqueued["on_commit"]) == (result.id, True)


@pytest.mark.django_db(transaction=True)
def test_on_commit_false_enqueues_immediately(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background", on_commit=False)

    with pytest.raises(RuntimeError), transaction.atomic():
        [outcome] = order_paid.send_sync(sender=None)
        assert [result.id for result in dummy.results] == [outcome.task_id]
        raise RuntimeError("rolled back, but the task was already enqueued")

    assert len(dummy.results) == 1


# -- the worker ----------------------------------------------------------------------


def test_worker_logs_start_and_finish_without_argument_values(
    dummy: DummyBackend, connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, record, mode="background")
    [outcome] = order_paid.send_sync(sender=None, password="hunter2")

    run_pending()

    [started] = events(logs, "background_started")
    [finished] = events(logs, "background_finished")
    for event in (started, finished):
        assert event["listener"] == "tests.background.test_background.record"
        assert event["signal"] == "tests.background.order_paid"
        assert event["task_id"] == outcome.task_id
        assert event["attempt"] == 1
    assert finished["elapsed_s"] >= 0
    assert "hunter2" not in repr(logs.entries)


def test_timeout_applies_in_the_worker(
    dummy: DummyBackend, connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, slow, mode="background", timeout=0.05, on_error="log")
    order_paid.send_sync(sender=None)

    assert run_pending() == ["timeout"]
    [failed] = events(logs, "background_failed")
    assert (failed["status"], failed["error"]) == ("timeout", "ListenerTimeout")


def test_on_error_raise_fails_the_task_not_the_sender(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, slow, mode="background", timeout=0.05, on_error="raise")

    [outcome] = order_paid.send_sync(sender=None)

    assert outcome.status == "enqueued"
    with pytest.raises(ListenerTimeout):
        run_pending()


def test_error_under_the_immediate_backend_is_recorded_on_the_task(
    connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, broken, mode="background")

    [outcome] = order_paid.send_sync(sender=None)

    assert outcome.status == "enqueued"
    [failed] = events(logs, "background_failed")
    assert (failed["status"], failed["error"]) == ("error", "ConnectionError")


@pytest.mark.django_db
def test_deleted_instance_is_reported_and_the_listener_not_called(
    dummy: DummyBackend, connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, record, mode="background", on_commit=False)
    order = Order.objects.create(reference="gone")
    order_paid.send_sync(sender=Order, order=order)
    order.delete()

    assert run_pending() == ["instance_missing"]

    assert seen == []
    [missing] = events(logs, "background_instance_missing")
    assert missing["argument"] == "kwargs['order']"
    assert missing["model"] == "testapp.Order"
    assert missing["listener"] == "tests.background.test_background.record"


@pytest.mark.django_db
def test_deleted_instance_arrives_as_none_with_missing_instance_none(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background", on_commit=False, missing_instance="none")
    order = Order.objects.create(reference="gone")
    order_paid.send_sync(sender=Order, order=order)
    order.delete()

    assert run_pending() == ["ok"]
    assert seen == [{"signal": order_paid, "sender": Order, "order": None}]


# -- refusing what is not a connected background listener ------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        forged("tests.background.test_background.never_connected"),
        forged("os.system"),
        forged(f"{__name__}.record", v=99),
        "not a payload",
    ],
    ids=["not-connected", "anything", "bad-version", "not-json-object"],
)
def test_forged_payload_is_refused_and_nothing_called(payload: Any, logs: LogCapture) -> None:
    result = run_listener.enqueue(payload)

    assert result.return_value == "refused"
    assert seen == []
    [refused] = events(logs, "background_refused")
    assert refused["task_id"] == result.id
    assert refused["reason"]


def test_inline_listener_is_refused(connect: Callable[..., None], logs: LogCapture) -> None:
    connect(order_paid, record, timeout=1.0)

    result = run_listener.enqueue(forged(f"{__name__}.record"))

    assert result.return_value == "refused"
    assert seen == []


def test_disconnected_listener_is_refused(
    dummy: DummyBackend, connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, record, mode="background")
    order_paid.send_sync(sender=None)
    order_paid.disconnect(record)

    assert run_pending() == ["refused"]
    assert seen == []
    [refused] = events(logs, "background_refused")
    assert "not connected" in refused["reason"]


def test_payload_naming_another_sender_is_refused(connect: Callable[..., None]) -> None:
    connect(post_save, record, sender=Order, mode="background")
    payload = forged(
        "tests.background.test_background.record",
        signal="django.db.models.signals.post_save",
        sender=encode(User, listener="x", argument="sender"),
    )

    assert run_listener.enqueue(payload).return_value == "refused"
    assert seen == []


def deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


class LazyModule:
    """Stands for a module with a lazy ``__getattr__``: it would import on demand."""


HOSTILE: dict[str, dict[str, Any]] = {
    "kwargs-deeper-than-the-recursion-limit": {
        "kwargs": {"cart": deep(sys.getrecursionlimit() + 10)}
    },
    "sender-deeper-than-max-depth": {"sender": deep(MAX_DEPTH + 1)},
    "kwarg-named-sender": {"kwargs": {"sender": 1}},
    "kwarg-named-signal": {"kwargs": {"signal": "tests.background.order_paid"}},
    "version-true": {"v": True},
    "version-huge": {"v": 10**5000},
    "unknown-database": {
        "kwargs": {"order": {TAG: "instance", "model": "testapp.Order", "pk": 1, "db": "nope"}}
    },
    "class-of-a-lazy-module": {
        "sender": {TAG: "class", "module": "concurrent.futures", "qualname": "ThreadPoolExecutor"}
    },
    "class-no-listener-is-connected-for": {
        "kwargs": {"kind": {TAG: "class", "module": "decimal", "qualname": "Decimal"}}
    },
}


@pytest.mark.parametrize("fields", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_payload_is_refused_and_no_listener_blamed(
    fields: dict[str, Any], connect: Callable[..., None], logs: LogCapture
) -> None:
    """Fed to the worker's entry directly: Django's own enqueue cannot take it all."""
    connect(order_paid, record, mode="background", on_error="log")

    status = run(forged(f"{__name__}.record", **fields), SimpleNamespace(id="t-1"))

    assert status == "refused"
    assert seen == []
    [refused] = events(logs, "background_refused")
    assert refused["task_id"] == "t-1"
    assert len(refused["reason"]) <= 500
    assert events(logs, "listener_failed") == events(logs, "background_failed") == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "pk"), [("testapp.Order", "abc"), ("testapp.Order", True), ("testapp.Coupon", "abc")]
)
def test_primary_key_of_another_type_is_refused(
    model: str, pk: Any, connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, record, mode="background", on_error="log")
    Order.objects.create(pk=1, reference="A-1")  # What True would fetch.
    reference = {TAG: "instance", "model": model, "pk": pk, "db": "default"}

    result = run_listener.enqueue(forged(f"{__name__}.record", kwargs={"x": reference}))

    assert result.return_value == "refused"
    assert seen == []
    assert len(events(logs, "background_refused")) == 1


class Checkout:
    """A sender class (not a model)."""


def test_sender_class_a_listener_is_connected_for_crosses(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, sender=Checkout, mode="background")

    order_paid.send_sync(sender=Checkout, n=1)

    assert dummy.results[0].args[0]["sender"] == {
        TAG: "class",
        "module": __name__,
        "qualname": "Checkout",
    }
    assert run_pending() == ["ok"]
    assert seen == [{"signal": order_paid, "sender": Checkout, "n": 1}]


def test_sender_instance_filter_lets_no_class_cross(connect: Callable[..., None]) -> None:
    connect(order_paid, record, sender=Checkout(), mode="background")
    reference = {TAG: "class", "module": __name__, "qualname": "Checkout"}

    result = run_listener.enqueue(forged(f"{__name__}.record", sender=reference))

    assert result.return_value == "refused"
    assert seen == []


def test_class_no_listener_is_connected_for_is_refused_at_send(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background")

    with pytest.raises(NotSerializable) as caught:
        order_paid.send_sync(sender=Checkout)

    assert caught.value.argument == "sender"
    assert dummy.results == []


def test_sending_never_writes_sender_or_signal_as_arguments(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background")

    order_paid.send_sync(sender=None, signal="not this one", n=1)

    [result] = dummy.results
    assert result.args[0]["kwargs"] == {"n": 1}
    assert run_pending() == ["ok"]
    assert seen == [{"signal": order_paid, "sender": None, "n": 1}]


# -- open circuits -----------------------------------------------------------------------


def test_open_circuit_reschedules_the_task_for_its_retry_time(
    dummy: DummyBackend, connect: Callable[..., None], logs: LogCapture
) -> None:
    retry_at = RETRY_AT[0] = datetime.now(UTC) + timedelta(minutes=5)
    connect(order_paid, circuit_is_open, mode="background", on_error="log", priority=3)
    [outcome] = order_paid.send_sync(sender=None, n=1)
    [first] = dummy.results

    assert run_pending() == ["rescheduled"]

    [second] = dummy.results
    assert second.task.run_after == retry_at
    assert (second.task.priority, second.backend) == (3, "dummy")
    assert second.args[0]["attempt"] == 2
    assert second.args[0]["first_enqueued_at"] == first.args[0]["first_enqueued_at"]
    assert second.args[0]["kwargs"] == first.args[0]["kwargs"]
    [rescheduled] = events(logs, "background_rescheduled")
    assert rescheduled["task_id"] == outcome.task_id
    assert rescheduled["next_task_id"] == second.id
    assert rescheduled["breaker"] == "payments"
    assert rescheduled["run_after"] == retry_at.isoformat()


def test_listener_whose_breaker_opened_in_the_worker_is_rescheduled_for_its_retry_time(
    dummy: DummyBackend, connect: Callable[..., None], logs: LogCapture
) -> None:
    from patchboard import CircuitBreaker

    smtp = CircuitBreaker(f"tests.background.smtp.{uuid.uuid4().hex}", failure_threshold=1)
    connect(order_paid, broken, mode="background", breaker=smtp, on_error="log")
    order_paid.send_sync(sender=None, n=1)
    order_paid.send_sync(sender=None, n=2)

    # The first call fails and opens the circuit; the second finds it open.
    assert run_pending() == ["error", "rescheduled"]

    [later] = dummy.results
    assert smtp.retry_at is not None
    assert later.task.run_after == smtp.retry_at
    assert later.args[0]["kwargs"] == {"n": 2}
    [rescheduled] = events(logs, "background_rescheduled")
    assert rescheduled["breaker"] == smtp.name


def test_circuit_without_retry_time_waits_retry_delay(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, circuit_is_open, mode="background", on_error="log")
    order_paid.send_sync(sender=None)
    before = datetime.now(UTC)

    run_pending()

    [second] = dummy.results
    assert second.task.run_after is not None
    assert before + timedelta(seconds=60) <= second.task.run_after
    assert second.task.run_after <= datetime.now(UTC) + timedelta(seconds=60)


def test_gives_up_after_max_reschedules(
    settings: Any, dummy: DummyBackend, connect: Callable[..., None], logs: LogCapture
) -> None:
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy", "MAX_RESCHEDULES": 1}}
    RETRY_AT[0] = datetime.now(UTC) + timedelta(minutes=5)
    connect(order_paid, circuit_is_open, mode="background", on_error="log")
    order_paid.send_sync(sender=None)

    assert run_pending() == ["rescheduled"]
    assert run_pending() == ["gave_up"]

    assert dummy.results == []
    [gave_up] = events(logs, "background_gave_up")
    assert (gave_up["reason"], gave_up["reschedules"], gave_up["attempt"]) == (
        "max_reschedules",
        1,
        2,
    )


def test_giving_up_fails_the_task_with_on_error_raise(
    settings: Any, dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy", "MAX_RESCHEDULES": 0}}
    connect(order_paid, circuit_is_open, mode="background", on_error="raise")
    order_paid.send_sync(sender=None)

    with pytest.raises(CircuitOpen):
        run_pending()


def test_gives_up_after_give_up_after_seconds(
    settings: Any, dummy: DummyBackend, connect: Callable[..., None], logs: LogCapture
) -> None:
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy", "GIVE_UP_AFTER": 3600}}
    connect(order_paid, circuit_is_open, mode="background", on_error="log")
    payload = forged(
        "tests.background.test_background.circuit_is_open",
        first_enqueued_at=(datetime.now(UTC) - timedelta(hours=2)).isoformat(),
    )
    run_listener.using(backend="dummy").enqueue(payload)

    assert run_pending() == ["gave_up"]
    [gave_up] = events(logs, "background_gave_up")
    assert gave_up["reason"] == "give_up_after"


def test_gives_up_when_the_backend_cannot_defer(
    connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, circuit_is_open, mode="background", on_error="log")

    order_paid.send_sync(sender=None)

    [gave_up] = events(logs, "background_gave_up")
    assert gave_up["reason"] == "backend_cannot_defer"


# -- connecting ----------------------------------------------------------------------------


class Handlers:
    def on_paid(self, sender: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        pass


def test_listener_a_worker_cannot_find_is_rejected_at_connect() -> None:
    def nested(sender: Any, **kwargs: Any) -> None:
        pass

    handlers = Handlers()
    for func in (nested, lambda sender, **kwargs: None, handlers.on_paid, handlers):
        with pytest.raises(TypeError, match="must be a function defined at module level"):
            order_paid.connect(func, mode="background")
    assert not order_paid.has_listeners()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 101}, "must be between -100 and 100, got 101"),
        ({"fallback": record}, "fallback does not apply to a background listener"),
    ],
)
def test_background_options_are_validated_at_connect(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        order_paid.connect(record, mode="background", **options)
    assert "tests.background.test_background.record" in str(caught.value)
    assert not order_paid.has_listeners()


def test_signal_keys() -> None:
    local = DjangoSignal()
    assert signal_key(order_paid) == "tests.background.order_paid"
    assert signal_key(post_save) == "django.db.models.signals.post_save"
    assert signal_key(plain_signal) == "tests.background.test_background.plain_signal"
    assert is_process_local(signal_key(local), local)
    assert not is_process_local(signal_key(plain_signal), plain_signal)


# -- system checks -------------------------------------------------------------------------


def ours(messages: list[Any], label: str) -> list[Any]:
    return [m for m in messages if m.obj == label]


def test_checks_pass_for_a_capable_backend(
    dummy: DummyBackend, connect: Callable[..., None]
) -> None:
    connect(order_paid, record, mode="background", priority=5, queue_name="emails")
    connect(order_paid, circuit_is_open, mode="background", breaker="payments")

    messages = check_background()

    assert ours(messages, "tests.background.test_background.record") == []
    assert ours(messages, "tests.background.test_background.circuit_is_open") == []


def test_check_warns_when_a_breaker_cannot_reschedule(connect: Callable[..., None]) -> None:
    connect(order_paid, circuit_is_open, mode="background", breaker="payments")

    label = "tests.background.test_background.circuit_is_open"
    assert ours(check_background(), label) == [defer_warning(label, "default")]


def test_check_reports_an_unknown_queue(connect: Callable[..., None]) -> None:
    connect(order_paid, record, mode="background", queue_name="emails")

    label = "tests.background.test_background.record"
    assert ours(check_background(), label) == [queue_error(label, "emails", "default", {"default"})]


def test_check_reports_a_priority_the_backend_cannot_honour(
    connect: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_backends["default"], "supports_priority", False)
    connect(order_paid, record, mode="background", priority=3)

    label = "tests.background.test_background.record"
    assert ours(check_background(), label) == [priority_error(label, 3, "default")]


def test_check_reports_an_unknown_backend(settings: Any, connect: Callable[..., None]) -> None:
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "nowhere"}}
    connect(order_paid, record, mode="background")

    [message] = check_background()
    assert message.id == E020_ID
    assert "'nowhere'" in message.msg


def test_check_warns_about_a_signal_a_worker_cannot_name(connect: Callable[..., None]) -> None:
    local = DjangoSignal()
    connect(local, record, mode="background")

    label = "tests.background.test_background.record"
    key = signal_key(local)
    assert ours(check_background(), label) == [signal_warning(label, key)]


def test_check_reports_a_backend_that_fails_to_build(
    settings: Any, connect: Callable[..., None]
) -> None:
    settings.TASKS = {**settings.TASKS, "broken": {}}  # no BACKEND: Django raises KeyError
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "broken"}}
    connect(order_paid, record, mode="background")

    [message] = check_background()
    assert message.id == E020_ID
    assert message.msg.startswith(
        """PATCHBOARD["BACKGROUND"]["BACKEND"] is 'broken', which is not a usable Tasks backend"""
    )
    assert "KeyError" in message.msg


def test_check_is_quiet_about_an_explicit_tasks_setting(connect: Callable[..., None]) -> None:
    connect(order_paid, record, mode="background")

    assert W022 not in check_background()


PROJECT_SETTINGS = """
SECRET_KEY = "tasks-config"
USE_TZ = True
INSTALLED_APPS = ["patchboard", "shop"]
DATABASES = {{}}
{tasks}
"""

SHOP_APP = """
from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self):
        from shop import listeners  # noqa: F401  (connects the background listener)
"""

SHOP_LISTENERS = """
from patchboard import Signal, receiver

order_paid = Signal(name="shop.order_paid")


@receiver(order_paid, mode="background")
def send_receipt(sender, **kwargs):
    pass
"""


def manage_check(tmp_path: Path, tasks: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` in a new project with a background listener and ``tasks`` settings."""
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "apps.py").write_text(SHOP_APP)
    (tmp_path / "shop" / "listeners.py").write_text(SHOP_LISTENERS)
    (tmp_path / "project_settings.py").write_text(PROJECT_SETTINGS.format(tasks=tasks))
    return subprocess.run(
        [sys.executable, "-m", "django", "check"],
        cwd=tmp_path,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "project_settings",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_warns_that_without_tasks_background_listeners_run_in_the_request(
    tmp_path: Path,
) -> None:
    done = manage_check(tmp_path, tasks="")

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert str(W022) in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("tasks", "alias"),
    [
        ("TASKS = {}", "default"),
        (
            textwrap.dedent("""
                TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
                PATCHBOARD = {"BACKGROUND": {"BACKEND": "nowhere"}}
            """),
            "nowhere",
        ),
    ],
    ids=["tasks-empty", "backend-missing"],
)
def test_startup_and_check_name_a_missing_backend_alias(
    tmp_path: Path, tasks: str, alias: str
) -> None:
    if "django.tasks" not in task_backends.__module__:  # Django 5.2: the backport's path
        tasks = tasks.replace("django.tasks.", "django_tasks.")
    done = manage_check(tmp_path, tasks)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert (
        f"""(patchboard.E020) PATCHBOARD["BACKGROUND"]["BACKEND"] is {alias!r}, which is not """
        f"""a usable Tasks backend"""
    ) in done.stderr
    assert "W022" not in done.stderr


# -- a missing backend at run time -------------------------------------------------------


@pytest.fixture(params=["missing-alias", "tasks-empty"])
def missing_backend(request: pytest.FixtureRequest, settings: Any) -> str:
    """A background backend alias that TASKS lacks; the alias."""
    if request.param == "tasks-empty":
        settings.TASKS = {}
        return "default"
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "nowhere"}}
    return "nowhere"


def assert_unusable_backend(outcome: Any, alias: str) -> None:
    assert outcome.status == "error"
    assert isinstance(outcome.error, ImproperlyConfigured)
    assert f"""PATCHBOARD["BACKGROUND"]["BACKEND"] is {alias!r}""" in str(outcome.error)


def test_enqueue_to_a_missing_backend_is_the_listeners_error(
    missing_backend: str, connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, record, mode="background", on_error="log")

    [outcome] = order_paid.send_sync(sender=None)

    assert_unusable_backend(outcome, missing_backend)
    assert len(events(logs, "listener_failed")) == 1


async def test_aenqueue_to_a_missing_backend_is_the_listeners_error(
    missing_backend: str, connect: Callable[..., None], logs: LogCapture
) -> None:
    connect(order_paid, record, mode="background", on_error="log")

    [outcome] = await order_paid.send_async(sender=None)

    assert_unusable_backend(outcome, missing_backend)
    assert len(events(logs, "listener_failed")) == 1


def test_enqueue_to_a_missing_backend_raises_with_on_error_raise(
    settings: Any, connect: Callable[..., None]
) -> None:
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "nowhere"}}
    connect(order_paid, record, mode="background", on_error="raise")

    with pytest.raises(ImproperlyConfigured, match="'nowhere'"):
        order_paid.send_sync(sender=None)


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_to_a_missing_backend_is_logged(
    settings: Any, connect: Callable[..., None], logs: LogCapture
) -> None:
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "nowhere"}}
    connect(order_paid, record, mode="background", on_error="log")

    with transaction.atomic():
        [outcome] = order_paid.send_sync(sender=None)

    assert outcome.status == "enqueued"
    [failed] = events(logs, "background_failed")
    assert failed["phase"] == "enqueue_on_commit"
    assert "'nowhere'" in str(failed["exc_info"])
