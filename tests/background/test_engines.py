"""
The real Tasks engines, end to end (part of ``make stress``): RQ through
django-tasks-rq with its real ``rqworker``, and Celery through
django-tasks-celery with a real ``celery worker``, beside django-tasks-db's
``db_worker`` (tests/background/test_e2e.py runs the same scenario on it),
and a worker killed in the middle of a background call on each.

RQ and Celery run on a private ``redis-server`` (the queue's keys and the
worker's registrations stay out of the shared Redis; Celery keeps its results
there too); the project's rows live in an SQLite file (RQ, Celery) or in a
PostgreSQL database of the test's own (django-tasks-db).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench.stress.services import rq_busy
from tests.background.test_e2e import ROOT, Project, Run, fresh_postgres_database
from tests.services import RedisServer, require_module, require_redis_server

pytestmark = [pytest.mark.stress, pytest.mark.redis]

IDLE_DEADLINE_S = 40.0
RQ_WORKER = (
    *("-m", "django", "rqworker", "default"),
    *("--job-class", "django_tasks_rq.Job", "--with-scheduler"),
)
DB_WORKER = ("-m", "django", "db_worker", "--no-reload", "--no-startup-delay", "--interval", "0.1")
# Prefork, Celery's default pool and the one deployments run, with one process: tasks run
# one at a time, in a child of the worker, as they do in production (the solo pool runs
# them in the worker itself). No gossip, mingle or heartbeat: one worker, no waiting at start.
CELERY_WORKER = (
    *("-m", "celery", "-A", "tests.e2e.celery", "worker", "--loglevel", "INFO"),
    *("--pool", "prefork", "--concurrency", "1"),
    *("--without-gossip", "--without-mingle", "--without-heartbeat"),
)
CELERY_QUEUE = "celery"  # Celery's default queue: django-tasks-celery routes "default" there
CELERY_UNACKED = "unacked"  # kombu's Redis transport: messages taken and not yet acknowledged
CELERY_READY_STATES = {"SUCCESS", "FAILURE", "REVOKED"}


class Worker:
    """A Tasks worker of the e2e project, in a process group of its own, logging to a file."""

    def __init__(self, project: Project, command: tuple[str, ...], log: Path) -> None:
        """``command``: the worker's arguments to the Python interpreter."""
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *command],
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
    return log_lines(log.read_text(errors="replace"))


def log_lines(output: str) -> list[dict[str, Any]]:
    """
    The structlog events of a process's output (one JSON object per line; a
    Celery worker also prints the Python repr of a message it discards).
    """
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
    return found


def sent(project: Project, command: str, *args: str) -> tuple[Any, list[dict[str, Any]]]:
    """Run one of the scenario's sending commands: its result and the sender's log events."""
    output = project.run("-m", "tests.e2e.scenario", command, *args)
    [line] = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT ")), log_lines(output)


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
        wait_for(lambda: rq_busy(server.url) == 0, worker, "an idle RQ queue")
    finally:
        worker.stop()
    return worker


# -- the scenario of tests/background/test_e2e.py, on RQ -------------------------------------


@pytest.fixture(scope="module")
def rq_run(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("rq")
    project = rq_project(redis_server, workdir)
    ids = project.scenario("send")
    worker = Worker(project, RQ_WORKER, workdir / "worker.log")
    return worked(project, ids, worker, lambda: rq_busy(redis_server.url) == 0, "an idle RQ queue")


def worked(
    project: Project, ids: dict[str, Any], worker: Worker, idle: Callable[[], bool], what: str
) -> Run:
    """Let ``worker`` run until ``idle()``, stop it: what the scenario left behind."""
    try:
        wait_for(idle, worker, what)
    finally:
        worker.stop()
    report = project.scenario("report")
    return Run(
        ids=ids,
        evidence=report["evidence"],
        tasks=report["tasks"],
        worker_events=events(worker.log),
    )


# -- the same scenario, on Celery -----------------------------------------------------------


def celery_project(server: RedisServer, workdir: Path, *, acks_late: bool = False) -> Project:
    """The e2e project on Celery: broker and results on ``server``, rows in an SQLite file."""
    require_module("django_tasks_celery", "the stress group: pip install --group stress")
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(workdir / "celery.sqlite3")}
    project = Project(database, workdir)
    project.env["PATCHBOARD_E2E_CELERY_URL"] = server.url
    if acks_late:
        project.env["PATCHBOARD_E2E_CELERY_ACKS_LATE"] = "1"
    project.run("-m", "django", "migrate", "--run-syncdb", "--verbosity", "0")
    return project


def celery_unfinished(url: str, task_ids: Iterable[str]) -> set[str]:
    """
    The tasks among ``task_ids`` without a final result. (Celery's queue and
    its unacknowledged messages can both be empty while a task runs: a
    worker acknowledges a task before it starts, by default.)
    """
    from redis import Redis

    ids = sorted(task_ids)
    with Redis.from_url(url) as connection:
        metas = connection.mget([f"celery-task-meta-{task_id}" for task_id in ids])
    return {
        task_id
        for task_id, meta in zip(ids, metas, strict=True)
        if meta is None or json.loads(meta)["status"] not in CELERY_READY_STATES
    }


def celery_broker(url: str) -> tuple[int, int]:
    """Messages waiting in Celery's queue, and taken by a worker but not acknowledged."""
    from redis import Redis

    with Redis.from_url(url) as connection:
        return connection.llen(CELERY_QUEUE), connection.hlen(CELERY_UNACKED)


@pytest.fixture(scope="module")
def celery_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("celery")
    with require_redis_server() as server:
        project = celery_project(server, workdir)
        ids, sender = sent(project, "send")
        enqueued = {e["task_id"] for e in sender if e["event"] == "background_enqueued"}
        enqueued |= {ids["forged"], *ids["hostile"].values()}
        worker = Worker(project, CELERY_WORKER, workdir / "worker.log")

        def every_task_finished() -> bool:
            # The tasks sent, and those the worker enqueued when it rescheduled one.
            again = {e["next_task_id"] for e in events(worker.log) if "next_task_id" in e}
            return not celery_unfinished(server.url, enqueued | again)

        yield worked(project, ids, worker, every_task_finished, "every Celery task finishing")


# -- what both runs show ---------------------------------------------------------------------


@pytest.fixture(params=["rq", "celery"])
def engine_run(request: pytest.FixtureRequest) -> Run:
    """The scenario's run on each engine (``rq_run``, ``celery_run``)."""
    run: Run = request.getfixturevalue(f"{request.param}_run")
    return run


def test_enqueues_on_commit_only(engine_run: Run) -> None:
    assert engine_run.evidence_of("post_save", "COMMITTED")
    assert [e for e in engine_run.evidence if e["reference"] == "ROLLBACK"] == []
    assert len(engine_run.tasks_of("tests.e2e.listeners.order_saved")) == 2  # E2E-1, COMMITTED


def test_delivers_typed_arguments(engine_run: Run) -> None:
    [evidence] = engine_run.evidence_of("receipt", "E2E-1")
    detail = evidence["detail"]
    assert (detail["paid_at_type"], detail["amount_type"], detail["amount"]) == (
        "datetime",
        "Decimal",
        "19.90",
    )
    assert detail["order_type"] == "Order" and detail["sender"] == "testapp.Order"


def rescheduled_then_ran(run: Run) -> tuple[dict[str, Any], datetime]:
    """
    Assert the charge's chain: the first task rescheduled (once or twice, for
    the same ``retry_at``), each next task is the one the previous enqueued,
    the last ran to ``"ok"`` after ``retry_at`` by the listener's own clock.
    Returns the last task and ``retry_at``.
    """
    *rescheduled_tasks, last = run.tasks_of("tests.e2e.listeners.charge")
    [opened] = run.evidence_of("circuit_opened", "FLAKY")
    [charged] = run.evidence_of("charged", "FLAKY")
    retry_at = datetime.fromisoformat(opened["detail"]["retry_at"])
    assert rescheduled_tasks[0]["id"] == run.ids["charge"]
    assert 1 <= len(rescheduled_tasks) <= 2
    assert {t["return_value"] for t in rescheduled_tasks} == {"rescheduled"}
    assert (last["return_value"], last["payload"]["attempt"]) == ("ok", len(rescheduled_tasks) + 1)
    events = run.events("background_rescheduled")
    following = [*rescheduled_tasks[1:], last]
    chain = [(t["id"], n["id"]) for t, n in zip(rescheduled_tasks, following, strict=True)]
    assert [(e["task_id"], e["next_task_id"]) for e in events] == chain
    assert {datetime.fromisoformat(e["run_after"]) for e in events} == {retry_at}
    assert datetime.fromisoformat(charged["detail"]["ran_at"]) >= retry_at
    return last, retry_at


def test_rq_reschedules_an_open_circuit_with_run_after(rq_run: Run) -> None:
    """
    RQ's scheduler keeps whole seconds (``ScheduledJobRegistry.schedule()``
    truncates ``run_after``), so a rescheduled task may start up to a second
    early: it then finds the circuit still open and reschedules once more,
    for the same ``retry_at``. The task that ran is the one started after it.
    """
    last, retry_at = rescheduled_then_ran(rq_run)
    assert datetime.fromisoformat(last["started_at"]) >= retry_at


def test_celery_reschedules_an_open_circuit_with_eta(celery_run: Run) -> None:
    """
    django-tasks-celery turns ``run_after`` into Celery's ``eta``: the worker
    takes the message at once and holds it until then (no scheduler process).
    Celery keeps no start time: the listener's clock (above) and the finish
    time say when it ran.
    """
    last, retry_at = rescheduled_then_ran(celery_run)
    assert datetime.fromisoformat(last["finished_at"]) >= retry_at


def test_refuses_forged_and_tampered_payloads(engine_run: Run) -> None:
    refused = {t["id"] for t in engine_run.tasks if t["return_value"] == "refused"}
    assert refused == {engine_run.ids["forged"], *engine_run.ids["hostile"].values()}
    assert engine_run.evidence_of("forged", "FORGED") == []
    logged = {e["task_id"] for e in engine_run.events("background_refused")}
    assert logged == refused
    assert len(engine_run.evidence_of("receipt", "E2E-1")) == 1


def test_runs_every_task_to_success(engine_run: Run) -> None:
    assert {t["status"] for t in engine_run.tasks} == {"SUCCESSFUL"}
    # 11 sent (2 post_save, 2 receipts, the charge, the forged, 5 tampered) and the reschedules.
    assert len(engine_run.tasks) == 11 + len(engine_run.events("background_rescheduled"))
    assert len(engine_run.events("background_finished")) == 4


# -- a worker killed mid-task ----------------------------------------------------------------


def killed_mid_task(
    project: Project,
    command: tuple[str, ...],
    workdir: Path,
    rerun: Callable[[], bool] | None = None,
    *,
    in_transaction: bool = False,
) -> dict[str, Any]:
    """
    Send one slow background call (``in_transaction``: inside
    ``atomic()``, so through the outbox), kill its worker (SIGKILL) while the
    listener runs, start a worker again and let it run for a while: what
    happened, from the sender's and the workers' logs and the evidence.
    With ``rerun``, the restarted worker is expected to take the call again:
    it runs until ``rerun()`` is true, and is killed in its turn.
    """
    _, sender_events = sent(project, "slow", *(["in_transaction"] if in_transaction else []))
    # Enqueued at once, or after the commit by the outbox's delivery: the event names the task.
    sent_as = "background_outbox_delivered" if in_transaction else "background_enqueued"
    [enqueued] = named(sender_events, sent_as)
    task_id = enqueued["task_id"]
    first = Worker(project, command, workdir / "first.log")
    try:
        wait_for(lambda: started(project), first, "the listener starting")
    finally:
        first.kill()
    second = Worker(project, command, workdir / "second.log")
    if rerun is not None:
        try:
            wait_for(rerun, second, "the listener starting again")
        finally:
            second.kill()
    else:
        try:
            # Long enough for the restarted worker to pick up anything it would run again.
            time.sleep(3.0)
            second.alive()
        finally:
            second.stop()
    return {
        "task_id": task_id,
        "sent_as": sent_as,
        "sender": sender_events,
        "first": events(first.log),
        "second": events(second.log),
    }


def started(project: Project, times: int = 1) -> bool:
    report = project.scenario("report")
    return [e["kind"] for e in report["evidence"]].count("slow_started") >= times


def named(found: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in found if e.get("event") == name]


def assert_enqueued_once_and_logged(seen: dict[str, Any]) -> None:
    task_id = seen["task_id"]
    [enqueued] = named(seen["sender"], seen["sent_as"])
    assert enqueued["task_id"] == task_id  # patchboard enqueued it once, and said so
    [began] = named(seen["first"], "background_started")
    assert began["task_id"] == task_id  # the killed worker said it started ...
    assert named(seen["first"], "background_finished") == []  # ... and never that it ended
    for name in ("background_enqueued", "background_outbox_delivered"):
        assert named(seen["second"], name) == []  # nothing enqueued it again


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


def test_celery_worker_killed_mid_task(
    private_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """
    Celery's fate with its default settings: a worker acknowledges a task's
    message when it starts the task (acks early), so a worker killed
    mid-task takes the message with it: the broker holds nothing, a restarted
    worker runs nothing, and the result stays STARTED (RUNNING) for good,
    since nothing marks it failed. At most once.
    """
    workdir = tmp_path_factory.mktemp("celery-kill")
    project = celery_project(private_redis, workdir)
    seen = killed_mid_task(project, CELERY_WORKER, workdir)
    assert_enqueued_once_and_logged(seen)
    assert named(seen["second"], "background_started") == []
    assert celery_broker(private_redis.url) == (0, 0)  # the message is gone
    report = project.scenario("report")
    [task] = report["tasks"]
    assert (task["id"], task["status"]) == (seen["task_id"], "RUNNING")
    assert [e["kind"] for e in report["evidence"]] == ["slow_started"]  # never re-run


def test_celery_acks_late_worker_killed_mid_task(
    private_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """
    With ``task_acks_late`` (and ``task_reject_on_worker_lost``, which only
    matters when a pool child dies under a living worker), the message is
    acknowledged when the task ends; a worker killed mid-task leaves it
    unacknowledged, and once the transport's ``visibility_timeout`` passes
    (an hour by default on Redis; 2 s here) a worker delivers it again:
    at least once. A call enqueued at once (outside a transaction) carries
    no idempotency key, so the listener runs a second time, with the same
    task id.
    """
    workdir = tmp_path_factory.mktemp("celery-acks-late")
    project = celery_project(private_redis, workdir, acks_late=True)
    seen = killed_mid_task(project, CELERY_WORKER, workdir, rerun=lambda: started(project, times=2))
    assert_enqueued_once_and_logged(seen)
    [again] = named(seen["second"], "background_started")
    assert again["task_id"] == seen["task_id"]
    report = project.scenario("report")
    assert [e["kind"] for e in report["evidence"]] == ["slow_started", "slow_started"]


def test_celery_acks_late_redelivered_outbox_call_is_a_duplicate(
    private_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """
    The same redelivery, of a call sent inside a transaction: it went through
    the outbox and carries its entry's id as its key, which the killed worker
    claimed before the listener started. The redelivered message finds that
    attempt claimed: ``"duplicate"``, logged, and the listener is not run again.
    """
    workdir = tmp_path_factory.mktemp("celery-acks-late-outbox")
    project = celery_project(private_redis, workdir, acks_late=True)

    def redelivered() -> bool:
        return bool(named(events(workdir / "second.log"), "background_duplicate"))

    seen = killed_mid_task(project, CELERY_WORKER, workdir, rerun=redelivered, in_transaction=True)
    assert_enqueued_once_and_logged(seen)
    [duplicate] = named(seen["second"], "background_duplicate")
    assert duplicate["task_id"] == seen["task_id"]
    [entry] = project.scenario("outbox")["entries"]
    assert (duplicate["entry"], entry["task_id"], entry["claimed_attempt"]) == (
        entry["id"],
        seen["task_id"],
        1,
    )
    assert named(seen["second"], "background_finished") == []
    report = project.scenario("report")
    assert [e["kind"] for e in report["evidence"]] == ["slow_started"]  # run once
