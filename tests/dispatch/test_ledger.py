"""
The ledger: every listener call counted once submitted and once ended, on
every path, and seen by the ledger's observers as it ends.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest

import patchboard
from patchboard import Signal
from patchboard._ledger import Ended, ledger


class Boom(Exception):
    pass


@pytest.fixture
def ended() -> Any:
    seen: list[Ended] = []
    ledger.observe(seen.append)
    yield seen
    ledger.unobserve(seen.append)


def _signal(name: str) -> Signal:
    signal = Signal(name=name)

    def sync_ok(sender: Any, **kwargs: Any) -> int:
        return 1

    async def async_ok(sender: Any, **kwargs: Any) -> int:
        return 2

    async def async_fails(sender: Any, **kwargs: Any) -> None:
        raise Boom

    for func in (sync_ok, async_ok, async_fails):
        signal.connect(func, weak=False, on_error="log")
    return signal


@pytest.mark.parametrize("verb", ["collect", "collect_async", "send_sync", "send_async"])
def test_an_observer_sees_every_call_end_once(ended: list[Ended], verb: str) -> None:
    signal = _signal(f"tests.ledger.{verb}")
    run = getattr(signal, verb)
    collected = run(sender="shop") if "async" not in verb else asyncio.run(run(sender="shop"))

    by_listener = {e.listener.rsplit(".", 1)[-1]: e for e in ended}
    assert sorted(by_listener) == ["async_fails", "async_ok", "sync_ok"]
    assert [by_listener[name].status for name in ("sync_ok", "async_ok", "async_fails")] == [
        "ok",
        "ok",
        "error",
    ]
    assert all(e.signal is signal and e.sender == "shop" for e in ended)
    assert isinstance(by_listener["async_fails"].error, Boom)
    # The elapsed the observer sees is the outcome's.
    assert sorted(e.elapsed for e in ended) == sorted(o.elapsed for o in collected)


async def test_plain_async_listeners_are_observed_also_when_they_suspend(
    ended: list[Ended],
) -> None:
    signal = Signal(name="tests.ledger.suspend")
    go = anyio.Event()

    async def releases(**kwargs: Any) -> None:
        go.set()

    async def waits(**kwargs: Any) -> str:
        await go.wait()  # suspends: settled in its task's done callback
        return "late"

    signal.connect(waits, weak=False)  # first: it suspends before releases runs
    signal.connect(releases, weak=False)
    await signal.collect_async(sender=None)
    assert sorted(e.listener.rsplit(".", 1)[-1] for e in ended) == ["releases", "waits"]
    assert {e.status for e in ended} == {"ok"}


async def test_a_cancelled_call_is_observed_as_cancelled(ended: list[Ended]) -> None:
    signal = Signal(name="tests.ledger.cancelled")
    started = anyio.Event()

    async def hangs(sender: Any, **kwargs: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    signal.connect(hangs, weak=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(signal.collect_async, None)
        await started.wait()
        tg.cancel_scope.cancel()
    [call] = ended
    assert (call.status, call.elapsed, call.error) == ("cancelled", None, None)


def test_unobserve_stops_the_calls_and_the_counts_go_on(ended: list[Ended]) -> None:
    signal = _signal("tests.ledger.unobserve")
    ledger.unobserve(ended.append)
    before = patchboard.outcome_counts()
    signal.collect(sender=None)
    after = patchboard.outcome_counts()
    assert ended == []
    assert after["submitted"] - before["submitted"] == 3
    assert (after["ok"] - before["ok"], after["error"] - before["error"]) == (2, 1)


def test_counts_from_many_threads_at_once_are_never_lost() -> None:
    """
    The counters are atomic: threads bumping them together lose no count,
    while another reads them (a read folds the batches the others append).
    """
    signal = Signal(name="tests.ledger.threads")

    def ok(sender: Any, **kwargs: Any) -> None:
        pass

    signal.connect(ok, weak=False)
    before = patchboard.outcome_counts()
    barrier = threading.Barrier(8)

    def dispatch() -> None:
        barrier.wait()
        for _ in range(500):
            signal.collect(sender=None)

    done = threading.Event()
    reads: list[dict[str, int]] = []

    def read() -> None:
        while not done.is_set():
            reads.append(patchboard.outcome_counts())

    threads = [threading.Thread(target=dispatch) for _ in range(8)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    after = patchboard.outcome_counts()
    assert after["submitted"] - before["submitted"] == 4000
    assert after["ok"] - before["ok"] == 4000
    # Each read saw a call submitted before it ended.
    assert reads
    assert all(counts["submitted"] >= counts["ok"] for counts in reads)


def _returns(sender: Any, **kwargs: Any) -> str:
    return "v"


async def _returns_async(sender: Any, **kwargs: Any) -> str:
    return "v"


def test_the_fast_outcome_constructions_agree_with_outcome() -> None:
    """``ok_outcome`` and the hot paths' inlined ``new_outcome`` list every field in order."""
    from patchboard._outcomes import Outcome, ok_outcome

    made = ok_outcome(_returns, "v", 0.5)
    assert made == Outcome(receiver=_returns, status="ok", value="v", elapsed=0.5)
    assert type(made) is Outcome
    for func, verb in ((_returns, "collect"), (_returns_async, "collect_async")):
        signal = Signal(name=f"tests.ledger.fields.{verb}")
        signal.connect(func, weak=False)
        run = getattr(signal, verb)
        [outcome] = run(sender=None) if verb == "collect" else asyncio.run(run(sender=None))
        assert type(outcome) is Outcome
        assert outcome == Outcome(receiver=func, status="ok", value="v", elapsed=outcome.elapsed)
        assert outcome.elapsed >= 0.0


def test_the_batches_counted_at_once_are_folded_without_a_read() -> None:
    """A process that never reads its counts does not keep every dispatch's batch."""
    signal = Signal(name="tests.ledger.fold")
    signal.connect(_returns, weak=False)
    before = patchboard.outcome_counts()
    for _ in range(1500):  # two batches each (submitted, ok): past the fold at 1024
        signal.collect(sender=None)
    assert len(ledger._batches) < 1024
    after = patchboard.outcome_counts()
    assert (after["submitted"] - before["submitted"], after["ok"] - before["ok"]) == (1500, 1500)


@pytest.mark.parametrize("verb", ["collect", "collect_async"])
def test_an_observer_that_raises_is_logged_and_fails_no_call(
    ended: list[Ended], logs: Any, verb: str
) -> None:
    """Regression: an observer's exception went up through the listener call."""

    def broken(event: Ended) -> None:
        raise RuntimeError("exporter down")

    ledger.observe(broken)
    try:
        signal = _signal(f"tests.ledger.broken.{verb}")
        run = getattr(signal, verb)
        collected = run(sender="shop") if "async" not in verb else asyncio.run(run(sender="shop"))
    finally:
        ledger.unobserve(broken)

    assert [o.status for o in collected] == ["ok", "ok", "error"]
    assert len(ended) == 3, "every other observer still hears of every call"
    failed = [e for e in logs.entries if e["event"] == "ledger_observer_failed"]
    assert failed and failed[0]["observer"].endswith("broken")


async def test_a_call_cancelled_before_it_started_is_observed_under_its_listener(
    ended: list[Ended],
) -> None:
    """An ordered dispatch cancelled in its first call: the calls after it never
    started, and each is observed as "cancelled" under its own listener."""
    signal = Signal(name="tests.ledger.never_started", ordered=True)
    started = asyncio.Event()

    async def first(sender: Any, **kwargs: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    async def second(sender: Any, **kwargs: Any) -> None:
        raise AssertionError("never runs")

    signal.connect(first, weak=False, priority=2)
    signal.connect(second, weak=False, priority=1)
    task = asyncio.create_task(signal.collect_async(sender="shop"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    by_listener = {e.listener.rsplit(".", 1)[-1]: e.status for e in ended}
    assert by_listener == {"first": "cancelled", "second": "cancelled"}
    assert all(e.signal is signal and e.sender == "shop" for e in ended)
