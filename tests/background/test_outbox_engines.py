"""
The outbox on a real broker (part of ``make stress``): RQ through
django-tasks-rq, its real ``rqworker`` and the real relay
(``manage.py patchboard relay``), on a private ``redis-server`` that the test
stops and starts, with the project's rows in PostgreSQL (a database of the
test's own) and in an SQLite file.

One run per database: a burst of committed transactions with the broker up,
then down; a call sent from async code while it is down; the broker back; a
sender killed by its own commit before it could deliver; the relay until
the outbox is empty; one delivery repeated on purpose; the worker until the
queue is idle. Then what the listeners wrote: each order's evidence exactly once.
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

from tests.background.test_e2e import ROOT, Project, fresh_postgres_database
from tests.background.test_engines import RQ_WORKER, Worker, events, rq_pending
from tests.services import RedisServer, require_redis_server

pytestmark = [pytest.mark.stress, pytest.mark.redis]

UP, DOWN = 6, 6
"""Transactions committed with the broker up, then down."""
DEADLINE_S = 40.0


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxRun:
    """What one run left behind."""

    while_down: list[dict[str, Any]]
    """The outbox's rows right after the broker went down and the burst was sent."""
    async_outcomes: list[list[Any]]
    before_relay: list[dict[str, Any]]
    after_relay: list[dict[str, Any]]
    final: list[dict[str, Any]]
    """The outbox's rows once the worker is idle."""
    duplicate: dict[str, Any]
    evidence: list[dict[str, Any]]
    relay_log: str
    relay_returncode: int
    worker_events: list[dict[str, Any]]

    def evidence_of(self, kind: str) -> list[str]:
        return sorted(e["reference"] for e in self.evidence if e["kind"] == kind)


def pending(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if not row["delivered"]]


def wait_until(condition: Any, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"{what}: the process exited early:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {DEADLINE_S:g} s:\n{log.read_text()}")
        time.sleep(0.2)


def relay_until_empty(project: Project, log: Path) -> tuple[int, str]:
    """The real relay, in a loop, until every entry is delivered; then SIGTERM."""
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
                lambda: not pending(project.scenario("outbox")["entries"]),
                "the relay delivering every entry",
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


def work(project: Project, server: RedisServer, log: Path) -> list[dict[str, Any]]:
    """The real ``rqworker`` until the queue is idle; its log events."""
    worker = Worker(project, RQ_WORKER, log)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while rq_pending(server.url):
            worker.alive()
            assert time.monotonic() < deadline, f"the RQ queue is not idle:\n{worker.tail()}"
            time.sleep(0.1)
    finally:
        worker.stop()
    return events(log)


def outbox_run(project: Project, server: RedisServer, workdir: Path) -> OutboxRun:
    project.scenario("burst", "0", str(UP))
    # Run before the broker stops: this Redis keeps nothing across a restart, and
    # what it lost once delivered is the broker's durability, not the outbox's.
    first = work(project, server, workdir / "worker-first.log")
    server.stop()
    project.scenario("burst", str(UP), str(UP + DOWN))
    while_down = project.scenario("outbox")["entries"]
    async_outcomes = project.scenario("send_async")["outcomes"]
    server.start()
    project.run("-m", "tests.e2e.scenario", "die")  # exits from its own commit
    before_relay = project.scenario("outbox")["entries"]
    returncode, relay_log = relay_until_empty(project, workdir / "relay.log")
    after_relay = project.scenario("outbox")["entries"]
    duplicate = project.scenario("duplicate")
    then = work(project, server, workdir / "worker-then.log")
    return OutboxRun(
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


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> OutboxRun:
    pytest.importorskip("django_tasks_rq", reason="the stress group is not installed")
    workdir = tmp_path_factory.mktemp(f"outbox-{request.param}")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(require_redis_server())
        if request.param == "sqlite":
            database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(workdir / "db.sqlite3")}
        else:
            database = stack.enter_context(fresh_postgres_database("pb_c_outbox"))
        project = Project(database, workdir)
        project.env["PATCHBOARD_E2E_RQ_URL"] = server.url
        project.run("-m", "django", "migrate", "--run-syncdb", "--verbosity", "0")
        return outbox_run(project, server, workdir)


def test_while_the_broker_is_down_committed_calls_wait_in_the_outbox(run: OutboxRun) -> None:
    waiting = pending(run.while_down)
    assert len(waiting) == DOWN
    assert {row["attempts"] for row in waiting} == {1}
    assert {row["last_error"].split(":")[0] for row in waiting} == {"ConnectionError"}
    assert len(run.while_down) - len(waiting) == UP  # delivered on commit while it was up


def test_an_async_send_while_the_broker_is_down_is_written_not_lost(run: OutboxRun) -> None:
    assert run.async_outcomes == [["enqueued", None]]
    [written] = [r for r in run.before_relay if r["listener"] == "tests.e2e.listeners.receipt"]
    assert (written["delivered"], written["attempts"]) == (False, 1)


def test_a_sender_killed_by_its_commit_left_its_call_for_the_relay(run: OutboxRun) -> None:
    never_tried = [row for row in pending(run.before_relay) if row["attempts"] == 0]
    assert len(never_tried) == 1  # DIED: committed, its delivery never ran
    assert "DIED" in run.evidence_of("post_save")


def test_the_relay_delivers_everything_and_stops_cleanly_on_sigterm(run: OutboxRun) -> None:
    assert pending(run.after_relay) == []
    assert len(run.after_relay) == UP + DOWN + 2  # the burst, the async send, DIED
    assert run.relay_returncode == 0
    assert "Relay stopped." in run.relay_log
    relayed = [json.loads(line) for line in run.relay_log.splitlines() if line.startswith("{")]
    delivered = [e for e in relayed if e["event"] == "background_outbox_delivered"]
    assert len(delivered) == DOWN + 2
    assert {e["by"] for e in delivered} == {"relay"}


def test_nothing_lost_and_nothing_run_twice(run: OutboxRun) -> None:
    burst = [f"B-{n}" for n in range(UP + DOWN)]
    assert run.evidence_of("post_save") == sorted([*burst, "DIED"])  # each exactly once
    assert run.evidence_of("receipt") == ["ASYNC"]
    # Every call claimed by a worker, on its first attempt, the repeated one included.
    assert [row["claimed_attempt"] for row in run.final] == [1] * (UP + DOWN + 2)


def test_a_repeated_delivery_is_a_logged_duplicate(run: OutboxRun) -> None:
    [duplicate] = [e for e in run.worker_events if e.get("event") == "background_duplicate"]
    assert duplicate["entry"] == run.duplicate["entry"]
    assert duplicate["task_id"] == run.duplicate["task_id"]
    finished = [e for e in run.worker_events if e.get("event") == "background_finished"]
    assert len(finished) == UP + DOWN + 2
