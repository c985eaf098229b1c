"""
The real Tasks engines, end to end (part of ``make stress``): RQ through
django-tasks-rq with its real ``rqworker``, beside django-tasks-db's
``db_worker`` (tests/background/test_e2e.py runs the same scenario on it),
and a worker killed in the middle of a background call on both.

RQ runs on a private ``redis-server`` (the queue's keys and the worker's
registrations stay out of the shared Redis); the project's rows live in an
SQLite file (RQ) or in a PostgreSQL database of the test's own (django-tasks-db).

Celery is not tested: no Celery backend for ``django.tasks`` is pinned here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.background.test_e2e import ROOT, Project, Run, fresh_postgres_database
from tests.services import RedisServer, require_redis_server

pytestmark = [pytest.mark.stress, pytest.mark.redis]

IDLE_DEADLINE_S = 40.0
RQ_WORKER = ("rqworker", "default", "--job-class", "django_tasks_rq.Job", "--with-scheduler")
DB_WORKER = ("db_worker", "--no-reload", "--no-startup-delay", "--interval", "0.1")


class Worker:
    """A Tasks worker of the e2e project, in a process group of its own, logging to a file."""

    def __init__(self, project: Project, command: tuple[str, ...], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "django", *command],
                cwd=ROOT,
                env=project.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """
        SIGKILL to the worker and everything it forked: no clean-up at all. (RQ's
        work horse runs in a session of its own: the worker's group is not enough.)
        """
        doomed = descendants(self.process.pid)
        os.killpg(self.process.pid, signal.SIGKILL)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"the worker exited ({self.process.returncode}):\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *descendants(child)]
    return found


def events(log: Path) -> list[dict[str, Any]]:
    import json

    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def rq_pending(url: str) -> int:
    """Jobs queued, scheduled, being taken or running in the RQ queue."""
    from redis import Redis
    from rq import Queue
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    with Redis.from_url(url) as connection:
        queue = Queue("default", connection=connection)
        return (
            len(queue)
            + ScheduledJobRegistry(queue=queue).count
            # A worker moves a job it takes from the queue to this list, then to the
            # started registry: counted, or a job in between looks like nothing pending.
            + connection.llen(queue.intermediate_queue_key)
            + StartedJobRegistry(queue=queue).count
        )


def wait_for(
    condition: Any, worker: Worker, what: str, deadline_s: float = IDLE_DEADLINE_S
) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        worker.alive()
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {deadline_s:g} s:\n{worker.tail()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with require_redis_server() as server:
        yield server


def rq_project(server: RedisServer, workdir: Path) -> Project:
    pytest.importorskip("django_tasks_rq", reason="the stress group is not installed")
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(workdir / "rq.sqlite3")}
    project = Project(database, workdir)
    project.env["PATCHBOARD_E2E_RQ_URL"] = server.url
    project.run("-m", "django", "migrate", "--run-syncdb", "--verbosity", "0")
    return project


def work_rq(project: Project, server: RedisServer, log: Path) -> Worker:
    """Run the real ``rqworker`` until nothing is pending in the queue; the stopped worker."""
    worker = Worker(project, RQ_WORKER, log)
    try:
        wait_for(lambda: rq_pending(server.url) == 0, worker, "an idle RQ queue")
    finally:
        worker.stop()
    return worker


# -- the scenario of tests/background/test_e2e.py, on RQ ----------------------------------


@pytest.fixture(scope="module")
def rq_run(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("rq")
    project = rq_project(redis_server, workdir)
    ids = project.scenario("send")
    worker = work_rq(project, redis_server, workdir / "worker.log")
    report = project.scenario("report")
    return Run(
        ids=ids,
        evidence=report["evidence"],
        tasks=report["tasks"],
        worker_events=events(worker.log),
    )


def test_rq_enqueues_on_commit_only(rq_run: Run) -> None:
    assert rq_run.evidence_of("post_save", "COMMITTED")
    assert [e for e in rq_run.evidence if e["reference"] == "ROLLBACK"] == []
    assert len(rq_run.tasks_of("tests.e2e.listeners.order_saved")) == 2  # E2E-1, COMMITTED


def test_rq_delivers_typed_arguments(rq_run: Run) -> None:
    [evidence] = rq_run.evidence_of("receipt", "E2E-1")
    detail = evidence["detail"]
    assert (detail["paid_at_type"], detail["amount_type"], detail["amount"]) == (
        "datetime",
        "Decimal",
        "19.90",
    )
    assert detail["order_type"] == "Order" and detail["sender"] == "testapp.Order"


def test_rq_reschedules_an_open_circuit_with_run_after(rq_run: Run) -> None:
    """
    RQ's scheduler keeps whole seconds (``ScheduledJobRegistry.schedule()``
    truncates ``run_after``), so a rescheduled task may start up to a second
    early: it then finds the circuit still open and reschedules once more,
    for the same ``retry_at``. The task that ran is the one started after it.
    """
    *rescheduled_tasks, last = rq_run.tasks_of("tests.e2e.listeners.charge")
    [opened] = rq_run.evidence_of("circuit_opened", "FLAKY")
    [charged] = rq_run.evidence_of("charged", "FLAKY")
    retry_at = datetime.fromisoformat(opened["detail"]["retry_at"])
    assert rescheduled_tasks[0]["id"] == rq_run.ids["charge"]
    assert 1 <= len(rescheduled_tasks) <= 2
    assert {t["return_value"] for t in rescheduled_tasks} == {"rescheduled"}
    assert (last["return_value"], last["payload"]["attempt"]) == ("ok", len(rescheduled_tasks) + 1)
    events = rq_run.events("background_rescheduled")
    following = [*rescheduled_tasks[1:], last]
    chain = [(t["id"], n["id"]) for t, n in zip(rescheduled_tasks, following, strict=True)]
    assert [(e["task_id"], e["next_task_id"]) for e in events] == chain
    assert {datetime.fromisoformat(e["run_after"]) for e in events} == {retry_at}
    assert datetime.fromisoformat(last["started_at"]) >= retry_at
    assert datetime.fromisoformat(charged["detail"]["ran_at"]) >= retry_at


def test_rq_refuses_forged_and_tampered_payloads(rq_run: Run) -> None:
    refused = {t["id"] for t in rq_run.tasks if t["return_value"] == "refused"}
    assert refused == {rq_run.ids["forged"], *rq_run.ids["hostile"].values()}
    assert rq_run.evidence_of("forged", "FORGED") == []
    logged = {e["task_id"] for e in rq_run.events("background_refused")}
    assert logged == refused
    assert len(rq_run.evidence_of("receipt", "E2E-1")) == 1


def test_rq_runs_every_task_to_success(rq_run: Run) -> None:
    assert {t["status"] for t in rq_run.tasks} == {"SUCCESSFUL"}
    assert len(rq_run.events("background_finished")) == 4


# -- a worker killed mid-task ----------------------------------------------------------------


def killed_mid_task(project: Project, command: tuple[str, ...], workdir: Path) -> dict[str, Any]:
    """
    Send one slow background call, kill its worker (SIGKILL) while the
    listener runs, start a worker again and let it run for a while: what
    happened, from the sender's and the workers' logs and the evidence.
    """
    sent = project.run("-m", "tests.e2e.scenario", "slow")
    [line] = [line for line in sent.splitlines() if line.startswith("RESULT ")]
    import json

    task_id = json.loads(line.removeprefix("RESULT "))["slow"]
    sender_events = [json.loads(x) for x in sent.splitlines() if x.startswith("{")]
    first = Worker(project, command, workdir / "first.log")
    try:
        wait_for(lambda: started(project), first, "the listener starting")
    finally:
        first.kill()
    second = Worker(project, command, workdir / "second.log")
    try:
        # Long enough for the restarted worker to pick up anything it would run again.
        time.sleep(3.0)
        second.alive()
    finally:
        second.stop()
    return {
        "task_id": task_id,
        "sender": sender_events,
        "first": events(first.log),
        "second": events(second.log),
    }


def started(project: Project) -> bool:
    report = project.scenario("report")
    return any(e["kind"] == "slow_started" for e in report["evidence"])


def named(found: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in found if e.get("event") == name]


def assert_enqueued_once_and_logged(seen: dict[str, Any]) -> None:
    task_id = seen["task_id"]
    [enqueued] = named(seen["sender"], "background_enqueued")
    assert enqueued["task_id"] == task_id  # patchboard enqueued it once, and said so
    [began] = named(seen["first"], "background_started")
    assert began["task_id"] == task_id  # the killed worker said it started ...
    assert named(seen["first"], "background_finished") == []  # ... and never that it ended
    assert named(seen["second"], "background_enqueued") == []  # nothing enqueued it again


def test_rq_worker_killed_mid_task(
    private_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """
    RQ's documented fate: a job whose worker died is *abandoned*; once its
    heartbeat lapses (the job's timeout plus 60 s), a worker's maintenance
    moves it to the failed registry (``AbandonedJobError``), and it is not run
    again (no retries configured). The test runs that maintenance step with
    the clock two minutes ahead instead of waiting for it.
    """
    workdir = tmp_path_factory.mktemp("rq-kill")
    project = rq_project(private_redis, workdir)  # a Redis of its own: the queue starts empty
    seen = killed_mid_task(project, RQ_WORKER, workdir)
    assert_enqueued_once_and_logged(seen)
    [task] = project.scenario("report")["tasks"]
    assert (task["id"], task["status"]) == (seen["task_id"], "RUNNING")

    assert project.scenario("abandon") == {"abandoned": [seen["task_id"]]}
    report = project.scenario("report")
    [task] = report["tasks"]
    assert task["status"] == "FAILED"
    assert task["exception"] == ["rq.exceptions.AbandonedJobError"]
    assert [e["kind"] for e in report["evidence"]] == ["slow_started"]  # never re-run


@pytest.mark.postgres
def test_db_worker_killed_mid_task(tmp_path_factory: pytest.TempPathFactory) -> None:
    """
    django-tasks-db's fate: a worker claims a task by marking it RUNNING; a
    worker that dies leaves it RUNNING, and a restarted worker takes only
    READY tasks, so the task is never run again nor marked failed (there is no
    lease to expire). Re-running it is the operator's decision.
    """
    workdir = tmp_path_factory.mktemp("db-kill")
    with fresh_postgres_database("patchboard_kill") as database:
        project = Project(database, workdir)
        project.run("-m", "django", "migrate", "--run-syncdb", "--verbosity", "0")
        seen = killed_mid_task(project, DB_WORKER, workdir)
        report = project.scenario("report")
    assert_enqueued_once_and_logged(seen)
    assert named(seen["second"], "background_started") == []
    [task] = report["tasks"]
    assert (task["id"], task["status"]) == (seen["task_id"], "RUNNING")
    assert [e["kind"] for e in report["evidence"]] == ["slow_started"]
