"""
A background call joins the request's trace on the real workers (part of
``make stress``): RQ's ``rqworker`` (django-tasks-rq, on a private
redis-server) and django-tasks-db's ``db_worker`` (on a PostgreSQL database
of the test's own), with OpenTelemetry's SDK in the sender and the worker.

Both processes append every span they end to one file, as JSON lines
(``PATCHBOARD_E2E_SPANS``, see tests/e2e/settings.py); the test reads the
worker's ``process <listener>`` span there and checks it against the
sender's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.background.test_e2e import Project, fresh_postgres_database
from tests.background.test_engines import rq_project, work_rq
from tests.services import RedisServer

pytestmark = pytest.mark.stress

RECEIPT = "process tests.e2e.listeners.receipt"


def spans_in(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def returned(report: dict[str, Any], sent: dict[str, Any]) -> Any:
    """What the traced call's task returned (the order's post_save enqueued one too)."""
    [task] = [task for task in report["tasks"] if task["id"] == sent["task_id"]]
    return task["return_value"]


def check_joined(spans: list[dict[str, Any]], sent: dict[str, Any]) -> None:
    """The worker's span of the call: the request's trace, the enqueued call its parent and link."""
    calls = [span for span in spans if span["name"] == RECEIPT]
    status = {id(span): span["attributes"]["patchboard.status"] for span in calls}
    [enqueued] = [span for span in calls if status[id(span)] == "enqueued"]
    [ran] = [span for span in calls if status[id(span)] != "enqueued"]
    [request] = [span for span in spans if span["name"] == "request"]
    assert request["context"]["trace_id"] == f"0x{sent['trace_id']}"
    assert status[id(ran)] == "ok"
    assert ran["context"]["trace_id"] == enqueued["context"]["trace_id"] == f"0x{sent['trace_id']}"
    assert ran["parent_id"] == enqueued["context"]["span_id"]
    assert [link["context"]["span_id"] for link in ran["links"]] == [enqueued["context"]["span_id"]]


@pytest.mark.redis
def test_on_rqworker_the_listeners_span_joins_the_request_trace(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    project = rq_project(private_redis, tmp_path)
    project.env["PATCHBOARD_E2E_SPANS"] = str(tmp_path / "spans.jsonl")
    sent = project.scenario("traced")
    work_rq(project, private_redis, tmp_path / "worker.log")
    assert returned(project.scenario("report"), sent) == "ok"
    check_joined(spans_in(tmp_path / "spans.jsonl"), sent)


@pytest.mark.postgres
def test_on_db_worker_the_listeners_span_joins_the_request_trace(tmp_path: Path) -> None:
    with fresh_postgres_database("pb_a_trace") as database:
        project = Project(database, tmp_path)
        project.run("-m", "django", "migrate", "--run-syncdb", "--verbosity", "0")
        project.env["PATCHBOARD_E2E_SPANS"] = str(tmp_path / "spans.jsonl")
        sent = project.scenario("traced")
        project.work()
        assert returned(project.scenario("report"), sent) == "ok"
    check_joined(spans_in(tmp_path / "spans.jsonl"), sent)
