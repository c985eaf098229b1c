"""
Hedging: an async listener connected with ``hedge_after`` gets a second
attempt beside a call still running after that long; the first attempt to
return answers, the other is cancelled, and each attempt ends as one
counted outcome (the call's, and ``"cancelled"`` or its own failure).

On the ``clock`` fixture's virtual time: the attempts' times are exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from patchboard import Signal, outcome_counts, receiver, retry_stats
from patchboard.testing import VirtualClock


def attempts_taking(*plan: tuple[float, object]) -> tuple[Any, list[str]]:
    """
    An async listener whose n-th attempt sleeps ``plan[n][0]`` seconds, then
    returns ``plan[n][1]`` (or raises it, an exception); and the record of
    how each attempt ended ("returned", "raised", "cancelled").
    """
    ended: list[str] = []
    started = [0]

    async def listener(sender: Any, **kwargs: Any) -> object:
        seconds, result = plan[started[0]]
        started[0] += 1
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        if isinstance(result, Exception):
            ended.append("raised")
            raise result
        ended.append("returned")
        return result

    return listener, ended


def counts() -> dict[str, int]:
    return {key: n for key, n in outcome_counts().items() if n}


async def test_a_slow_first_attempt_is_hedged_and_the_first_answer_wins(
    clock: VirtualClock,
) -> None:
    signal = Signal()
    listener, ended = attempts_taking((10.0, "slow"), (0.1, "fast"))
    signal.connect(listener, weak=False, hedge_after=0.2)

    [outcome] = await signal.collect_async(sender=None)

    assert (outcome.status, outcome.value, outcome.attempts) == ("ok", "fast", 2)
    assert outcome.elapsed == pytest.approx(0.3)
    assert ended == ["returned", "cancelled"]
    # Two listener calls in the ledger: the call's outcome and the cancelled attempt.
    assert counts() == {"submitted": 2, "ok": 1, "cancelled": 1}
    stats = retry_stats(signal)
    assert (stats.hedged, stats.hedges_won, stats.hedges_cancelled) == (1, 1, 1)


async def test_an_answer_before_the_delay_is_never_hedged(clock: VirtualClock) -> None:
    signal = Signal()
    listener, ended = attempts_taking((0.1, "quick"))
    signal.connect(listener, weak=False, hedge_after=0.2)

    [outcome] = await signal.collect_async(sender=None)

    assert (outcome.status, outcome.value, outcome.attempts) == ("ok", "quick", 1)
    assert ended == ["returned"]
    assert counts() == {"submitted": 1, "ok": 1}
    assert retry_stats(signal).hedged == 0


async def test_the_first_attempt_may_still_win_once_hedged(clock: VirtualClock) -> None:
    signal = Signal()
    listener, ended = attempts_taking((0.3, "first"), (5.0, "second"))
    signal.connect(listener, weak=False, hedge_after=0.2)

    [outcome] = await signal.collect_async(sender=None)

    assert (outcome.value, outcome.attempts, outcome.elapsed) == ("first", 2, pytest.approx(0.3))
    assert ended == ["returned", "cancelled"]
    stats = retry_stats(signal)
    assert (stats.hedged, stats.hedges_won, stats.hedges_cancelled) == (1, 0, 1)


async def test_a_failed_attempt_waits_for_the_other_and_counts_as_its_failure(
    clock: VirtualClock, logs: Any
) -> None:
    signal = Signal()
    listener, ended = attempts_taking((0.3, ConnectionError("reset")), (0.5, "second"))
    signal.connect(listener, weak=False, hedge_after=0.2)

    [outcome] = await signal.collect_async(sender=None)

    assert (outcome.status, outcome.value) == ("ok", "second")
    assert ended == ["raised", "returned"]
    assert counts() == {"submitted": 2, "ok": 1, "error": 1}
    [failed] = [e for e in logs.entries if e["event"] == "listener_failed"]
    assert isinstance(failed["exc_info"], ConnectionError)


async def test_when_both_attempts_fail_the_last_failure_is_the_outcome(
    clock: VirtualClock,
) -> None:
    signal = Signal()
    first, last = ConnectionError("first"), ConnectionError("last")
    listener, ended = attempts_taking((0.3, first), (0.5, last))
    signal.connect(listener, weak=False, hedge_after=0.2, on_error="log")

    [outcome] = await signal.collect_async(sender=None)

    assert (outcome.status, outcome.error, outcome.attempts) == ("error", last, 2)
    assert ended == ["raised", "raised"]
    assert counts() == {"submitted": 2, "error": 2}


async def test_the_time_limit_cuts_both_attempts(clock: VirtualClock) -> None:
    signal = Signal()
    listener, ended = attempts_taking((60.0, "never"), (60.0, "never"))
    signal.connect(listener, weak=False, hedge_after=0.2, timeout=1.0, on_error="log")

    [outcome] = await signal.collect_async(sender=None)

    assert (outcome.status, outcome.attempts) == ("timeout", 2)
    assert outcome.elapsed == pytest.approx(1.0)
    assert ended == ["cancelled", "cancelled"]
    assert counts() == {"submitted": 2, "timeout": 1, "cancelled": 1}


def test_hedging_needs_an_async_listener() -> None:
    signal = Signal()

    def sync_quote(sender: Any, **kwargs: Any) -> None: ...

    with pytest.raises(ValueError, match=r"receiver .*sync_quote: hedge_after needs an async"):
        receiver(signal, hedge_after=0.2)(sync_quote)
    with pytest.raises(ValueError, match=r"hedge_after must be a finite number of seconds > 0"):
        receiver(signal, hedge_after=0)(sync_quote)
