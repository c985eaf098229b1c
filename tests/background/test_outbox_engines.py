"""
The outbox on a real broker (part of ``make stress``): RQ through
django-tasks-rq and its real ``rqworker``, and Celery through
django-tasks-celery and a real ``celery worker``, with the real relay
(``manage.py patchboard relay``), on a private ``redis-server`` that the test
stops and starts, with the project's rows in PostgreSQL (a database of the
test's own) and, on RQ, in an SQLite file too.

One run per engine and database: a burst of committed transactions with the
broker up, run by the worker; a second one with the broker up and no worker,
whose tasks the broker then loses (this Redis keeps nothing across a
restart); a third with the broker down; a call sent from async code while
it is down; the broker back; a sender killed by its own commit before it
could deliver; the relay until it has delivered every unclaimed entry; one
delivery repeated on purpose; the worker until every entry is claimed and
the queue is idle. Then what the listeners wrote: each order's evidence
exactly once.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.stress.services import rq_busy
from tests.background.test_e2e import ROOT, Project, fresh_postgres_database
from tests.background.test_engines import (
    CELERY_WORKER,
    RQ_WORKER,
    Worker,
    celery_broker,
    celery_unfinished,
    events,
)
from tests.services import RedisServer, require_module, require_redis_server

pytestmark = [pytest.mark.stress, pytest.mark.redis]

UP, LOST, DOWN = 6, 3, 6
"""Transactions committed with the broker up (run), up (then lost with it), then down."""
ALL = UP + LOST + DOWN + 2
"""Every entry: the three bursts, the async send, DIED."""
DEADLINE_S = 40.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Engine:
    """A Tasks engine on the private Redis: how to run its worker and to tell it is idle."""

    name: str
    module: str
    url_variable: str
    """The variable that makes this engine the Tasks backend (tests/e2e/settings.py)."""
    worker: tuple[str, ...]
    refused_by: str
    """The exception class a delivery to a stopped broker fails with, as the entry records it."""

    def idle(self, url: str, task_ids: set[str]) -> bool:
        """Nothing queued or running; on Celery, every task of ``task_ids`` finished too."""
        if self.name == "rq":
            return rq_busy(url) == 0
        # A Celery worker acknowledges a message as the task starts: an empty queue and
        # no unacknowledged message still leave a task that runs; its result says.
        return celery_broker(url) == (0, 0) and not celery_unfinished(url, task_ids)


RQ = Engine(
    name="rq",
    module="django_tasks_rq",
    url_variable="PATCHBOARD_E2E_RQ_URL",
    worker=RQ_WORKER,
    refused_by="ConnectionError",  # redis-py's, from django-rq's connection
)
CELERY = Engine(
    name="celery",
    module="django_tasks_celery",
    url_variable="PATCHBOARD_E2E_CELERY_URL",
    worker=CELERY_WORKER,
    # Celery subscribes to the result first: its Redis result backend gives up so.
    refused_by="RuntimeError",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRun:
    """What one run left behind."""

    while_down: list[dict[str, Any]]
    """The outbox's rows right after the broker went down and the last burst was sent."""
    async_outcomes: list[list[Any]]
    before_relay: list[dict[str, Any]]
    after_relay: list[dict[str, Any]]
    final: list[dict[str, Any]]
    """The outbox's rows once every entry is claimed and the worker is idle."""
    engine: Engine
    duplicate: dict[str, Any]
    evidence: list[dict[str, Any]]
    relay_log: str
    relay_returncode: int
    worker_events: list[dict[str, Any]]

    def evidence_of(self, kind: str) -> list[str]:
        return sorted(e["reference"] for e in self.evidence if e["kind"] == kind)


def pending(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries no worker has claimed (the outbox's to deliver)."""
    return [row for row in rows if not row["claimed"]]


def wait_until(condition: Any, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"{what}: the process exited early:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {DEADLINE_S:g} s:\n{log.read_text()}")
        time.sleep(0.2)


def relay_until_empty(project: Project, log: Path) -> tuple[int, str]:
    """
    The real relay, in a loop, until it has delivered every unclaimed entry
    (no worker runs: they stay unclaimed, and may be delivered more than once,
    the wait between two deliveries doubling from the 1 s grace); then SIGTERM.
    """
    with log.open("w") as out:
        relay = subprocess.Popen(
            [sys.executable, "-m", "django", "patchboard", "relay", "--interval", "0.2"],
            cwd=ROOT,
            env=project.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: all(
                    row["deliveries"] for row in pending(project.scenario("outbox")["entries"])
                ),
                "the relay delivering every unclaimed entry",
                relay,
                log,
            )
        finally:
            relay.send_signal(signal.SIGTERM)
            try:
                relay.wait(timeout=10)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
    return relay.returncode, log.read_text()


def claimed_tasks(project: Project) -> set[str]:
    """The task ids of the outbox's claimed entries (the tasks that claimed them)."""
    return {row["task_id"] for row in project.scenario("outbox")["entries"] if row["task_id"]}


def work(
    project: Project,
    engine: Engine,
    server: RedisServer,
    log: Path,
    *,
    extra: frozenset[str] = frozenset(),
    before: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """
    The engine's real worker until every outbox entry is claimed and the
    engine is idle, the claiming tasks (but those of ``before``) and
    ``extra`` finished; its log events.
    """
    worker = Worker(project, engine.worker, log)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while pending(project.scenario("outbox")["entries"]):
            worker.alive()
            assert time.monotonic() < deadline, f"entries left unclaimed:\n{worker.tail()}"
            time.sleep(0.2)
        task_ids = claimed_tasks(project) - before | extra
        deadline = time.monotonic() + DEADLINE_S
        while not engine.idle(server.url, task_ids):
            worker.alive()
            assert time.monotonic() < deadline, f"{engine.name} is not idle:\n{worker.tail()}"
            time.sleep(0.1)
    finally:
        worker.stop()
    return events(log)


def outbox_run(project: Project, engine: Engine, server: RedisServer, workdir: Path) -> OutboxRun:
    project.scenario("burst", "0", str(UP))
    first = work(project, engine, server, workdir / "worker-first.log")
    # Their results go with the restarted Redis (Celery keeps them there).
    up = frozenset(claimed_tasks(project))
    # Enqueued on commit, and lost: no worker runs them before the broker stops, and
    # this Redis keeps nothing across a restart (a broker's loss, or a dead worker's job).
    project.scenario("burst", str(UP), str(UP + LOST))
    server.stop()
    project.scenario("burst", str(UP + LOST), str(UP + LOST + DOWN))
    while_down = project.scenario("outbox")["entries"]
    async_outcomes = project.scenario("send_async")["outcomes"]
    server.start()
    project.run("-m", "tests.e2e.scenario", "die")  # exits from its own commit
    before_relay = project.scenario("outbox")["entries"]
    returncode, relay_log = relay_until_empty(project, workdir / "relay.log")
    after_relay = project.scenario("outbox")["entries"]
    duplicate = project.scenario("duplicate")
    repeated = frozenset([duplicate["task_id"]])
    then = work(project, engine, server, workdir / "worker-then.log", extra=repeated, before=up)
    return OutboxRun(
        engine=engine,
        while_down=while_down,
        async_outcomes=async_outcomes,
        before_relay=before_relay,
        after_relay=after_relay,
        final=project.scenario("outbox")["entries"],
        duplicate=duplicate,
        evidence=project.scenario("report")["evidence"],
        relay_log=relay_log,
        relay_returncode=returncode,
        worker_events=first + then,
    )


@pytest.fixture(
    scope="module",
    # Celery on PostgreSQL only: the claim's SQL is the database's, already run on both.
    params=[(RQ, "postgresql"), (RQ, "sqlite"), (CELERY, "postgresql")],
    ids=["rq-postgresql", "rq-sqlite", "celery-postgresql"],
)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> OutboxRun:
    engine, kind = request.param
    require_module(engine.module, "the stress group: pip install --group stress")
    workdir = tmp_path_factory.mktemp(f"outbox-{engine.name}-{kind}")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(require_redis_server())
        if kind == "sqlite":
            database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(workdir / "db.sqlite3")}
        else:
            database = stack.enter_context(fresh_postgres_database("pb_b_outbox"))
        project = Project(database, workdir)
        project.env[engine.url_variable] = server.url
        project.run("-m", "django", "migrate", "--run-syncdb", "--verbosity", "0")
        return outbox_run(project, engine, server, workdir)


def test_while_the_broker_is_down_committed_calls_wait_in_the_outbox(run: OutboxRun) -> None:
    waiting = pending(run.while_down)
    refused = [row for row in waiting if row["attempts"]]
    assert len(refused) == DOWN
    assert {row["attempts"] for row in refused} == {1}
    assert {row["last_error"].split(":")[0] for row in refused} == {run.engine.refused_by}
    # Delivered on commit, never claimed: the outbox cannot tell them from queued ones.
    assert len(waiting) - len(refused) == LOST
    assert len(run.while_down) - len(waiting) == UP  # claimed by the worker


def test_an_async_send_while_the_broker_is_down_is_written_not_lost(run: OutboxRun) -> None:
    assert run.async_outcomes == [["enqueued", None]]
    [written] = [r for r in run.before_relay if r["listener"] == "tests.e2e.listeners.receipt"]
    assert (written["claimed"], written["attempts"]) == (False, 1)


def test_a_sender_killed_by_its_commit_left_its_call_for_the_relay(run: OutboxRun) -> None:
    never_refused = [row for row in pending(run.before_relay) if row["attempts"] == 0]
    assert len(never_refused) == LOST + 1  # the lost ones, and DIED: its delivery never ran
    assert "DIED" in run.evidence_of("post_save")


def test_the_relay_delivers_every_unclaimed_entry_and_stops_cleanly_on_sigterm(
    run: OutboxRun,
) -> None:
    unclaimed = {row["id"] for row in pending(run.before_relay)}
    assert len(unclaimed) == LOST + DOWN + 2  # the lost ones, the refused ones, async, DIED
    assert all(row["deliveries"] for row in pending(run.after_relay))
    assert run.relay_returncode == 0
    assert "Relay stopped." in run.relay_log
    relayed = [json.loads(line) for line in run.relay_log.splitlines() if line.startswith("{")]
    delivered = [e for e in relayed if e["event"] == "background_outbox_delivered"]
    # Each at least once (again after a doubling wait while no worker claims it).
    assert {e["entry"] for e in delivered} == unclaimed
    assert {e["by"] for e in delivered} == {"relay"}


def test_nothing_lost_and_nothing_run_twice(run: OutboxRun) -> None:
    burst = [f"B-{n}" for n in range(UP + LOST + DOWN)]
    assert run.evidence_of("post_save") == sorted([*burst, "DIED"])  # each exactly once
    assert run.evidence_of("receipt") == ["ASYNC"]
    # Every call claimed by a worker, on its first attempt, the repeated ones included.
    assert [row["claimed_attempt"] for row in run.final] == [1] * ALL
    assert pending(run.final) == []


def test_a_repeated_delivery_is_a_logged_duplicate(run: OutboxRun) -> None:
    duplicates = [e for e in run.worker_events if e.get("event") == "background_duplicate"]
    [repeated] = [e for e in duplicates if e["task_id"] == run.duplicate["task_id"]]
    assert repeated["entry"] == run.duplicate["entry"]
    # Any other duplicate is one of the relay's deliveries beyond the first: never run.
    finished = [e for e in run.worker_events if e.get("event") == "background_finished"]
    assert len(finished) == ALL
