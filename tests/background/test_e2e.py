"""
End to end: django-tasks-db's real ``db_worker`` runs background listeners
sent by another process, on a real database: PostgreSQL (a database of its
own, created and dropped here) and an SQLite file.

The scenario runs once per database (``tests/e2e/scenario.py send``), the
worker runs until no task is left, then each test reads what happened: the
evidence the listeners wrote, the task rows and the worker's log lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.scenario import PAID_AT
from tests.services import require_postgres

pytestmark = pytest.mark.stress  # part of `make stress` too

ROOT = Path(__file__).resolve().parents[2]
TASKS_TABLE = "django_tasks_database_dbtaskresult"
IDLE_DEADLINE_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """What one run of the scenario left behind."""

    ids: dict[str, Any]
    evidence: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    worker_events: list[dict[str, Any]]

    def evidence_of(self, kind: str, reference: str) -> list[dict[str, Any]]:
        return [e for e in self.evidence if (e["kind"], e["reference"]) == (kind, reference)]

    def tasks_of(self, listener: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks if t["payload"]["listener"] == listener]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.worker_events if e.get("event") == name]


class Project:
    """The e2e Django project on one database, driven through subprocesses."""

    def __init__(self, database: dict[str, Any], workdir: Path) -> None:
        self.database = database
        self.workdir = workdir
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.e2e.settings",
            "PATCHBOARD_E2E_DATABASE": json.dumps(database),
            "PYTHONPATH": str(ROOT),
        }

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
        return done.stdout

    def scenario(self, command: str, *args: str) -> Any:
        output = self.run("-m", "tests.e2e.scenario", command, *args)
        [line] = [line for line in output.splitlines() if line.startswith("RESULT ")]
        return json.loads(line.removeprefix("RESULT "))

    def work(self) -> list[dict[str, Any]]:
        """Run the real worker until no task is left; return its log events."""
        log = self.workdir / "worker.log"
        with log.open("w") as out:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "django", "db_worker", "--no-reload", "--no-startup-delay"),
                    *("--interval", "0.1"),
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                self.wait_until_idle(worker)
            finally:
                worker.terminate()  # db_worker shuts down gracefully on SIGTERM
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        events = []
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def wait_until_idle(self, worker: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + IDLE_DEADLINE_S
        while self.unfinished() and time.monotonic() < deadline:
            if worker.poll() is not None:
                pytest.fail(f"db_worker exited early: {worker.returncode}", pytrace=False)
            time.sleep(0.1)
        assert self.unfinished() == 0, "tasks still unfinished at the deadline"

    def unfinished(self) -> int:
        query = f"SELECT count(*) FROM {TASKS_TABLE} WHERE status IN ('READY', 'RUNNING')"
        if self.database["ENGINE"].endswith("sqlite3"):
            with sqlite3.connect(self.database["NAME"], timeout=20) as conn:
                return int(conn.execute(query).fetchone()[0])
        import psycopg

        with psycopg.connect(**_psycopg_params(self.database)) as conn:
            row = conn.execute(query).fetchone()
            assert row is not None
            return int(row[0])


def _psycopg_params(database: dict[str, Any]) -> dict[str, Any]:
    return {
        "host": database["HOST"],
        "port": database["PORT"],
        "user": database["USER"],
        "dbname": database["NAME"],
    }


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A fresh, empty database of each kind, dropped afterwards."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("e2e-sqlite") / "e2e.sqlite3"
        yield {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}
        return
    with fresh_postgres_database("patchboard_e2e") as params:
        yield params


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[dict[str, Any]]:
    """
    ``DATABASES`` parameters of a new PostgreSQL database, dropped afterwards
    (what the ``postgres`` fixture does, for any scope: skip, or fail under CI=true).
    """
    server = require_postgres()
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    params = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": server["HOST"],
        "PORT": server["PORT"],
        "USER": server["USER"],
        "NAME": name,
    }
    admin_params = {**_psycopg_params(params), "dbname": server["NAME"]}
    with psycopg.connect(**admin_params, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield params
    finally:
        with psycopg.connect(**admin_params, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def run(database: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Run:
    project = Project(database, tmp_path_factory.mktemp("e2e"))
    project.run("-m", "django", "migrate", "--run-syncdb", "--verbosity", "0")
    ids = project.scenario("send")
    events = project.work()
    report = project.scenario("report")
    return Run(ids=ids, evidence=report["evidence"], tasks=report["tasks"], worker_events=events)


def test_post_save_runs_in_the_worker_with_the_instance_fetched_again(run: Run) -> None:
    [evidence] = run.evidence_of("post_save", "E2E-1")
    assert evidence["detail"] == {
        "signal_is_post_save": True,
        "sender": "testapp.Order",
        "instance_type": "Order",
        "paid_at": PAID_AT.astimezone(UTC).isoformat(),
        "created": True,
        "update_fields": None,
        "raw": False,
        "using": "default",
    }


def test_datetime_and_decimal_arguments_arrive_with_their_types(run: Run) -> None:
    [evidence] = run.evidence_of("receipt", "E2E-1")
    assert evidence["detail"] == {
        "order_type": "Order",
        "paid_at": PAID_AT.isoformat(),
        "paid_at_type": "datetime",
        "amount": "19.90",
        "amount_type": "Decimal",
        "sender": "testapp.Order",
    }
    assert datetime.fromisoformat(evidence["detail"]["paid_at"]) == PAID_AT


def test_rolled_back_transaction_enqueued_nothing(run: Run) -> None:
    assert [e for e in run.evidence if e["reference"] == "ROLLBACK"] == []
    # E2E-1 and COMMITTED (enqueued when its transaction committed); not ROLLBACK.
    assert len(run.tasks_of("tests.e2e.listeners.order_saved")) == 2
    assert run.evidence_of("post_save", "COMMITTED")
    receipts = run.tasks_of("tests.e2e.listeners.receipt")
    sent = [t for t in receipts if t["id"] not in run.ids["hostile"].values()]
    assert len(sent) == 2  # E2E-1 and GONE


def test_open_circuit_reschedules_and_runs_after_the_circuit_closes(run: Run) -> None:
    first, second = run.tasks_of("tests.e2e.listeners.charge")
    [opened] = run.evidence_of("circuit_opened", "FLAKY")
    [charged] = run.evidence_of("charged", "FLAKY")
    retry_at = datetime.fromisoformat(opened["detail"]["retry_at"])

    assert (first["id"], first["return_value"]) == (run.ids["charge"], "rescheduled")
    assert (second["return_value"], second["payload"]["attempt"]) == ("ok", 2)
    assert datetime.fromisoformat(second["run_after"]) == retry_at
    assert datetime.fromisoformat(second["started_at"]) >= retry_at
    assert datetime.fromisoformat(charged["detail"]["ran_at"]) >= retry_at
    [rescheduled] = run.events("background_rescheduled")
    assert (rescheduled["task_id"], rescheduled["next_task_id"]) == (first["id"], second["id"])
    assert rescheduled["breaker"] == "e2e-payments"


def test_forged_payload_is_refused(run: Run) -> None:
    [task] = run.tasks_of("tests.e2e.listeners.never_connected")
    assert (task["id"], task["status"], task["return_value"]) == (
        run.ids["forged"],
        "SUCCESSFUL",
        "refused",
    )
    assert run.evidence_of("forged", "FORGED") == []
    [refused] = [e for e in run.events("background_refused") if e["task_id"] == run.ids["forged"]]
    assert refused["listener"] == "tests.e2e.listeners.never_connected"


def test_tampered_payloads_are_refused_and_no_listener_blamed(run: Run) -> None:
    hostile = run.ids["hostile"]
    tasks = {t["id"]: t for t in run.tasks}
    for task_id in hostile.values():
        assert (tasks[task_id]["status"], tasks[task_id]["return_value"]) == (
            "SUCCESSFUL",
            "refused",
        )
    refused = [e for e in run.events("background_refused") if e["task_id"] in hostile.values()]
    assert sorted(e["task_id"] for e in refused) == sorted(hostile.values())
    assert {e["listener"] for e in refused} == {"tests.e2e.listeners.receipt"}
    blamed = run.events("listener_failed") + run.events("background_failed")
    assert [e for e in blamed if e.get("task_id") in hostile.values()] == []
    # Each tampered payload names order E2E-1: its receipt was written once, by its real task.
    assert len(run.evidence_of("receipt", "E2E-1")) == 1


def test_deleted_instance_is_reported(run: Run) -> None:
    [task] = [t for t in run.tasks if t["id"] == run.ids["gone"]]
    assert task["return_value"] == "instance_missing"
    assert run.evidence_of("receipt", "GONE") == []
    [missing] = run.events("background_instance_missing")
    assert missing["task_id"] == run.ids["gone"]
    assert (missing["argument"], missing["model"]) == ("kwargs['order']", "testapp.Order")


def test_every_task_finished_and_was_logged(run: Run) -> None:
    assert {t["status"] for t in run.tasks} == {"SUCCESSFUL"}
    started = {e["task_id"] for e in run.events("background_started")}
    refused = {t["id"] for t in run.tasks if t["return_value"] == "refused"}
    assert started >= {t["id"] for t in run.tasks} - refused
    assert run.ids["forged"] not in started
    finished = run.events("background_finished")
    assert len(finished) == 4  # E2E-1 twice, COMMITTED, charge once its circuit closed
    assert all(e["elapsed_s"] >= 0 for e in finished)
