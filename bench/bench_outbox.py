"""
What the outbox costs a send: a signal with one background listener, sent
inside ``transaction.atomic()``, with and without the outbox, on SQLite and
PostgreSQL, in the same run.

Each transaction writes one row (the data a signal is sent about: an order)
and sends the signal. Without the outbox the call is enqueued by
``transaction.on_commit``; with it (``BACKGROUND.OUTBOX: True``) the call is
also one row INSERTed in the transaction, and the on-commit delivery
enqueues it and writes nothing more (the worker's claim marks the entry
delivered, off the request path; a worker is not part of this bench). The Tasks backend
is Django's ``DummyBackend``, which keeps the task in memory and runs
nothing: the difference is the outbox's database work, not a broker's. A
third mode, no outbox and one more INSERT of a row of the payload's size in
the same transaction, is the "one INSERT" the outbox is compared with.

Each database is measured in a process of its own (``--child``: the bench's
own process has no database and no ``patchboard`` app): an SQLite file with
WAL in a temporary directory, and a PostgreSQL database created for the run
and dropped after it (at ``PATCHBOARD_BENCH_PG_URL``, as
:mod:`bench.bench_connections`; skipped without it). The modes are
interleaved over ``ROUNDS`` rounds of ``SENDS`` sends; the table gives the
median round in microseconds per transaction and the ratio to the mode
without the outbox.

Run ``python -m bench --only outbox`` or ``python -m bench.bench_outbox [--quick]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bench_connections import PG_URL, database_settings, reachable

ROOT = Path(__file__).resolve().parent.parent
SENDS = 300
"""Transactions per mode and round (``QUICK_SENDS`` with ``--quick``)."""
QUICK_SENDS = 100
ROUNDS = 7
QUICK_ROUNDS = 3
MODES = {
    "no_outbox": "on_commit enqueue (no outbox)",
    "outbox": "outbox: INSERT, then on-commit enqueue",
    "one_insert": "no outbox, one more INSERT of the payload's size (reference)",
}
TABLE = "bench_outbox_row"
"""The rows each transaction writes: its data, and the reference mode's extra one."""


def noted(sender: Any, **kwargs: Any) -> None:
    """The background listener: the DummyBackend never runs it."""


# -- the child: one database, every mode -------------------------------------------------


def child(database: dict[str, Any], sends: int, rounds: int) -> dict[str, list[float]]:
    """Configure Django on ``database``, migrate, and time each mode: µs per transaction."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        INSTALLED_APPS=["patchboard"],
        DATABASES={"default": database},
        TASKS={"default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}},
        PATCHBOARD={"BACKGROUND": {"OUTBOX": False}},
    )
    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.tasks import task_backends
    from django.tasks.backends.dummy import DummyBackend
    from django.test import override_settings

    import patchboard
    from bench.bench_outbox import noted as listener  # by its module's name, not __main__'s

    call_command("migrate", "patchboard", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {TABLE} (id varchar(36) PRIMARY KEY, payload text NOT NULL)")
    signal = patchboard.Signal(name="bench.outbox")
    signal.connect(listener, weak=False, mode="background")
    backend = task_backends["default"]
    assert isinstance(backend, DummyBackend)
    payload = ""

    def insert(text: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {TABLE} (id, payload) VALUES (%s, %s)", [str(uuid.uuid4()), text]
            )

    def send(n: int, *, one_more: bool) -> None:
        for number in range(n):
            with transaction.atomic():
                insert("an order")
                signal.send_sync(sender=None, order=number)
                if one_more:
                    insert(payload)

    with override_settings(PATCHBOARD={"BACKGROUND": {"OUTBOX": True}}):
        send(1, one_more=False)  # the outbox's row: its payload's size is the reference's
        from patchboard.models import OutboxEntry

        payload = OutboxEntry.objects.get().payload
    runs: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            outbox = mode == "outbox"
            with override_settings(PATCHBOARD={"BACKGROUND": {"OUTBOX": outbox}}):
                send(10, one_more=mode == "one_insert")  # warm
                backend.clear()
                started = time.perf_counter_ns()
                send(sends, one_more=mode == "one_insert")
                elapsed = time.perf_counter_ns() - started
            runs[mode].append(elapsed / sends / 1000)
            backend.clear()
    return runs


# -- the parent: a child per database, and the table -------------------------------------


def measure(database: dict[str, Any], sends: int, rounds: int) -> dict[str, list[float]]:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.bench_outbox", "--child", json.dumps(database)),
            *(str(sends), str(rounds)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the outbox bench's child failed:\n{done.stdout}{done.stderr}")
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    runs: dict[str, list[float]] = json.loads(line.removeprefix("RESULT "))
    return runs


def postgres_database() -> tuple[dict[str, Any], str] | str:
    """A new PostgreSQL database's parameters and its name, or why there is none."""
    params = database_settings(PG_URL)
    why = reachable(params)
    if why is not None:
        return f"no PostgreSQL at {PG_URL} ({why})"
    import psycopg

    name = f"pb_b_bench_outbox_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**admin(params), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return {**params, "NAME": name}, name


def drop(params: dict[str, Any], name: str) -> None:
    import psycopg

    with psycopg.connect(**admin(params), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin(params: dict[str, Any]) -> dict[str, Any]:
    return {
        "host": params["HOST"],
        "port": params["PORT"],
        "user": params["USER"],
        "password": params["PASSWORD"],
        "dbname": database_settings(PG_URL)["NAME"],
    }


def rows(database: str, runs: dict[str, list[float]]) -> list[str]:
    base = statistics.median(runs["no_outbox"])
    lines = []
    for mode, label in MODES.items():
        median = statistics.median(runs[mode])
        extra = "" if mode == "no_outbox" else f"{median - base:+.0f}"
        lines.append(
            f"| {database} | {label} | {min(runs[mode]):.0f} | {median:.0f} | {extra} "
            f"| {median / base:.2f}x |"
        )
    return lines


def main(*, quick: bool = False) -> str:
    """Measure on SQLite and PostgreSQL (or say why not); print and return the markdown."""
    sends, rounds = (QUICK_SENDS, QUICK_ROUNDS) if quick else (SENDS, ROUNDS)
    title = "## The outbox's cost: a background send inside a transaction"
    lines = [
        title,
        "",
        f"One signal, one background listener (`DummyBackend`: nothing runs it), sent inside "
        f"`transaction.atomic()` that also INSERTs one row (the data: an order); "
        f"{sends} transactions per mode and round, {rounds} rounds, "
        "the modes interleaved; µs per transaction (best round, median round), the median's "
        "extra over no outbox and its ratio. SQLite: a file with WAL (Django's defaults "
        "otherwise); PostgreSQL on loopback.",
        "",
        "| database | mode | best µs | median µs | extra µs | vs no outbox |",
        "|---|---|---:|---:|---:|---:|",
    ]
    notes = []
    with tempfile.TemporaryDirectory(prefix="patchboard-bench-outbox-") as directory:
        sqlite = {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(Path(directory) / "outbox.sqlite3"),
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;"},
        }
        lines += rows("SQLite", measure(sqlite, sends, rounds))
    found = postgres_database()
    if isinstance(found, str):
        notes.append(f"PostgreSQL skipped: {found}.")
    else:
        params, name = found
        try:
            lines += rows("PostgreSQL", measure(params, sends, rounds))
        finally:
            drop(params, name)
    lines += [
        "",
        "The outbox's INSERT rides in the sender's transaction and its commit, as the "
        "reference row does; after the commit, a delivery the backend takes writes nothing "
        "(the worker's claim marks the entry delivered, in the worker's own UPDATE). The "
        "rest of the extra over the reference is the entry's two indexes (its key, the "
        "relay's) and the preparation of its values.",
        *notes,
    ]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        database, sends, rounds = json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        print("RESULT " + json.dumps(child(database, sends, rounds)), flush=True)
    else:
        main(quick="--quick" in sys.argv[1:])
