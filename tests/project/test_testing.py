"""patchboard.testing: the helpers users' suites use."""

from __future__ import annotations

import pytest

from patchboard import Signal, outcome_counts, queue_stats, receiver
from patchboard.testing import VirtualClock, capture_dispatches, reset


def test_capture_dispatches_records_each_dispatch_with_its_outcomes() -> None:
    paid = Signal()

    @receiver(paid, on_error="log")
    def audit(sender, **kwargs):
        raise ValueError("x")

    @receiver(paid)
    def receipt(sender, **kwargs):
        return "sent"

    with capture_dispatches() as dispatches:
        paid.send_sync(sender=int)
        paid.collect(sender=str)
    paid.send_sync(sender=None)

    assert [(d.signal, d.sender) for d in dispatches] == [(paid, int), (paid, str)]
    assert dispatches[0].statuses() == ["error", "ok"]
    assert dispatches[1].outcomes[1].value == "sent"


def test_capture_dispatches_records_a_dispatch_that_raised() -> None:
    paid = Signal()

    @receiver(paid)
    def strict(sender, **kwargs):
        raise KeyError("x")

    with capture_dispatches() as dispatches, pytest.raises(KeyError):
        paid.send_sync(sender=None)

    assert dispatches[0].statuses() == ["error"]


def test_reset_zeroes_counters_and_rebuilds_the_queue() -> None:
    paid = Signal()

    @receiver(paid)
    def ok(sender, **kwargs):
        return 1

    paid.collect(sender=None, queue=True)
    assert outcome_counts()["ok"] >= 1
    assert queue_stats().submitted >= 1

    reset()

    assert sum(outcome_counts().values()) == 0
    assert queue_stats().submitted == 0


def test_virtual_clock_moves_only_forward_when_told() -> None:
    clock = VirtualClock(start=10)
    assert clock() == 10
    clock.advance(2.5)
    assert clock() == 12.5
    clock.set(20)
    assert clock() == 20
    with pytest.raises(ValueError, match="seconds must be >= 0, got -1"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="now must be >= the current time"):
        clock.set(5)
