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
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from patchboard._breaker import (
    BreakerStatistics,
    CircuitBreaker,
    all_breakers,
    get_breaker,
    not_closed_circuits,
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
    help = "Inspect and control patchboard: 'patchboard breakers' lists circuit breakers."

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
        breakers = all_breakers(circuits=True)
        for breaker in breakers:
            breaker.get_state_sync()  # a fresh view of a Redis store's shared state
        for breaker in not_closed_circuits(breakers):  # keyed: the circuits not closed
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
        self.stdout.write(PER_PROCESS_NOTE)
