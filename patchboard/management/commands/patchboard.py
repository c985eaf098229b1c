"""
``manage.py patchboard``: look at patchboard's moving parts and steer them.

``manage.py patchboard breakers``
    Lists every circuit breaker (declared in ``PATCHBOARD["BREAKERS"]`` or
    registered in this process) with its state and counters. Breakers with a
    Redis store show the shared state; the others show this process's, which
    is fresh (a management command is a process of its own). The counters
    (``rejected``, ``successes``, ``failures_total``) are always this
    process's own: their headers are starred, and a line under the table
    says so.
``manage.py patchboard breakers --open NAME | --close NAME | --reset NAME``
    Forces the circuit open (until reset), forces it closed (failures not
    counted until reset), or resets it to a clean closed state, then lists.
``manage.py patchboard relay [--once] [--interval S] [--database ALIAS]``
    Delivers the outbox entries no worker has claimed once they are due
    (failed deliveries after their backoff; entries a dead process left
    behind, or whose task the broker lost or no worker took, after
    ``OUTBOX_GRACE`` and then after a wait doubling up to an hour), and
    purges claimed ones past ``OUTBOX_RETENTION``; loops until SIGTERM or
    SIGINT (it stops between batches), or makes one pass with ``--once``.
``manage.py patchboard outbox [--database ALIAS]``
    Lists the outbox per database: unclaimed entries (no worker started
    them: queued in the broker, lost, or not delivered yet), the oldest
    one's age, failed deliveries and the last error, unclaimed entries the
    relay delivered again, and the entries a worker claimed (delivered).
``manage.py patchboard outbox --redeliver ID | --redeliver-failed | --purge-delivered S``
    Makes one entry due now (a claimed one runs again: its claim is
    cleared), makes every failed delivery due now, or deletes the entries
    a worker claimed more than S seconds ago; then lists.
"""

from __future__ import annotations

import math
import signal
import threading
import uuid
from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from patchboard._background import _outbox, _relay
from patchboard._breaker import (
    BreakerStatistics,
    CircuitBreaker,
    get_breaker,
    listed_breakers,
    listed_circuits,
)
from patchboard._config import get_settings

COLUMNS = (
    "name",
    "state",
    "failures",
    "retry_at",
    "rejected",
    "successes",
    "failures_total",
    "store",
)
PER_PROCESS = frozenset({"rejected", "successes", "failures_total"})
"""Columns counted by each process on its own, never shared through the store."""
DATABASE_HELP = "A database the outbox is on (repeatable; default: every one it may be on)."
PER_PROCESS_NOTE = (
    "* counted by this process only (a management command starts from zero); "
    "the other columns are the store's, shared by every process with a Redis store."
)


def _cell(stats: BreakerStatistics, column: str) -> str:
    if column == "state":
        state: str = stats.state
        if stats.forced is not None:
            state = f"{state} (forced)"
        return state + (" (fallback)" if stats.fallback else "")
    if column == "retry_at":
        return stats.retry_at.isoformat(timespec="seconds") if stats.retry_at else "-"
    return str(getattr(stats, column))


class Command(BaseCommand):
    help = (
        "Inspect and control patchboard: 'patchboard breakers' lists circuit breakers, "
        "'patchboard outbox' the outbox, 'patchboard relay' delivers it."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True)
        breakers = subcommands.add_parser(
            "breakers", help="List circuit breakers; open, close or reset one."
        )
        action = breakers.add_mutually_exclusive_group()
        action.add_argument("--open", metavar="NAME", help="Force the circuit open until --reset.")
        action.add_argument(
            "--close", metavar="NAME", help="Force the circuit closed until --reset."
        )
        action.add_argument(
            "--reset", metavar="NAME", help="Reset the circuit: closed, no failures, not forced."
        )

        relay = subcommands.add_parser(
            "relay", help="Deliver the outbox's due entries to the Tasks backend, in a loop."
        )
        relay.add_argument("--once", action="store_true", help="Make one pass, then exit.")
        relay.add_argument(
            "--interval",
            type=float,
            default=1.0,
            metavar="S",
            help="Seconds between two passes (default 1).",
        )
        relay.add_argument("--database", action="append", metavar="ALIAS", help=DATABASE_HELP)
        outbox = subcommands.add_parser(
            "outbox", help="List the outbox; redeliver entries or purge claimed (delivered) ones."
        )
        outbox.add_argument("--database", action="append", metavar="ALIAS", help=DATABASE_HELP)
        act = outbox.add_mutually_exclusive_group()
        act.add_argument("--redeliver", metavar="ID", help="Make one entry due now (runs again).")
        act.add_argument(
            "--redeliver-failed", action="store_true", help="Make every failed delivery due now."
        )
        act.add_argument(
            "--purge-delivered",
            type=float,
            metavar="OLDER_THAN_S",
            help="Delete entries a worker claimed more than this many seconds ago.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        handler = getattr(self, f"handle_{options['subcommand']}")
        handler(**options)

    def handle_breakers(self, **options: Any) -> None:
        for flag, method, done in (
            ("open", "force_open", "Forced circuit {!r} open."),
            ("close", "force_closed", "Forced circuit {!r} closed."),
            ("reset", "reset", "Reset circuit {!r}."),
        ):
            name = options.get(flag)
            if name:
                breaker = self._breaker(name)
                try:
                    getattr(breaker, method)()
                except Exception as exc:
                    raise CommandError(
                        f"could not change circuit {name!r} in {breaker.statistics().store}: {exc}"
                    ) from exc
                self.stdout.write(done.format(name))
                if breaker.statistics().store == "memory":
                    self.stderr.write(
                        f"Note: {name!r} uses the in-process memory store; the change "
                        "applies to this process only."
                    )
        self._list()

    def _breaker(self, name: str) -> CircuitBreaker:
        try:
            return get_breaker(name)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc

    def _list(self) -> None:
        for name in get_settings().breakers:
            self._breaker(name)
        rows = []
        breakers, notes = listed_breakers()  # with a keyed breaker's circuits in Redis
        for breaker in breakers:
            breaker.get_state_sync()  # a fresh view of a Redis store's shared state
        for breaker in listed_circuits(breakers):  # keyed: not closed, or forced
            stats = breaker.statistics()
            rows.append([_cell(stats, column) for column in COLUMNS])
        if not rows:
            self.stdout.write('No circuit breakers (declare them in PATCHBOARD["BREAKERS"]).')
            return
        header = [f"{column}*" if column in PER_PROCESS else column for column in COLUMNS]
        widths = [max(len(title), *(len(row[i]) for row in rows)) for i, title in enumerate(header)]
        for row in [header, *rows]:
            line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            self.stdout.write(line.rstrip())
        for note in notes:
            self.stdout.write(f"Note: {note}.")
        self.stdout.write(PER_PROCESS_NOTE)

    # -- the outbox ---------------------------------------------------------------------

    def handle_relay(self, **options: Any) -> None:
        databases = self._outbox_databases(options.get("database"))
        if options["once"]:
            for alias in databases:
                done = _relay.relay_once(alias)
                self.stdout.write(
                    f"{alias}: delivered {done.delivered}, failed {done.failed}, "
                    f"purged {done.purged}"
                )
            return
        interval = options["interval"]
        if not (math.isfinite(interval) and interval > 0):
            raise CommandError(f"--interval must be a number of seconds > 0, got {interval!r}")
        stop = threading.Event()

        def stopping(signum: int, frame: object) -> None:
            stop.set()  # The loop stops between batches.

        previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
        self.stdout.write(f"Relaying the outbox of {', '.join(databases)} (SIGTERM stops).")
        try:
            _relay.relay_forever(databases, interval=interval, stop=stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.stdout.write("Relay stopped.")

    def handle_outbox(self, **options: Any) -> None:
        databases = self._outbox_databases(options.get("database"))
        key = options.get("redeliver")
        if key:
            try:
                key = str(uuid.UUID(key))
            except ValueError:
                raise CommandError(f"--redeliver needs an entry id (a UUID), got {key!r}") from None
            found = [alias for alias in databases if _outbox.redeliver(key, alias)]
            if not found:
                raise CommandError(f"no outbox entry {key} on {', '.join(databases)}")
            self.stdout.write(f"Entry {key} is due now on {found[0]}: the relay delivers it.")
        if options.get("redeliver_failed"):
            for alias in databases:
                count = _outbox.redeliver_failed(alias)
                self.stdout.write(f"{alias}: {count} failed deliveries due now.")
        older_than = options.get("purge_delivered")
        if older_than is not None:
            if not (math.isfinite(older_than) and older_than >= 0):
                raise CommandError(
                    f"--purge-delivered must be a number of seconds >= 0, got {older_than!r}"
                )
            for alias in databases:
                count = _outbox.purge_delivered(alias, older_than)
                self.stdout.write(f"{alias}: purged {count} claimed entries.")
        for alias in databases:
            self._outbox_summary(_outbox.statistics(alias))

    def _outbox_summary(self, stats: _outbox.OutboxStatistics) -> None:
        oldest = "-"
        if stats.oldest_pending_at is not None:
            age = max(0, math.floor((timezone.now() - stats.oldest_pending_at).total_seconds()))
            oldest = f"{age} s"
        self.stdout.write(
            f"{stats.database}: unclaimed {stats.pending} (oldest {oldest}), "
            f"failed deliveries {stats.failed}, relayed again and not yet claimed "
            f"{stats.awaiting_worker}, claimed by a worker {stats.claimed}"
        )
        if stats.last_error:
            self.stdout.write(f"  last error: {stats.last_error}")

    def _outbox_databases(self, asked: list[str] | None) -> list[str]:
        try:
            known = _outbox.databases()
        except LookupError:
            raise CommandError(
                'the outbox needs "patchboard" in INSTALLED_APPS (and its migration applied)'
            ) from None
        databases = asked or known
        for alias in databases:
            if alias not in known:
                raise CommandError(
                    f"--database {alias!r}: the outbox is not on it "
                    f"(its databases: {', '.join(known)})"
                )
            try:
                present = _outbox.has_table(alias)
            except DatabaseError as exc:
                raise CommandError(f"database {alias!r} cannot be reached: {exc}") from exc
            if not present:
                raise CommandError(
                    f"database {alias!r} has no outbox table: "
                    f"run python manage.py migrate patchboard --database {alias}"
                )
        return databases
