"""
Streaming collects: each outcome as its call ends; leaving early cancels and
withdraws the rest, and every call still ends as one counted outcome.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from typing import Any

import anyio
import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchboard import Signal, Stream, outcome_counts, queue_stats
from patchboard.testing import VirtualClock, capture_dispatches, reset


class Gate:
    """An async listener that returns its name once its gate opens."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.open = anyio.Event()
        self.started = False
        self.cancelled = False

    async def __call__(self, sender: Any, **kwargs: Any) -> str:
        self.started = True
        try:
            await self.open.wait()
        except BaseException:
            self.cancelled = True
            raise
        return self.name


def _signal(*gates: Gate, **options: Any) -> Signal:
    signal = Signal(name="tests.stream")
    for gate in gates:
        signal.connect(gate, weak=False, **options)
    return signal


def _balanced() -> bool:
    counts = outcome_counts()
    return counts["submitted"] == sum(n for key, n in counts.items() if key != "submitted")


async def test_outcomes_come_in_the_order_their_calls_end() -> None:
    a, b, c = Gate("a"), Gate("b"), Gate("c")
    stream = _signal(a, b, c).stream_async(sender=None)
    assert isinstance(stream, Stream)
    seen: list[str] = []
    with anyio.fail_after(5):
        async with stream:
            b.open.set()
            async for outcome in stream:
                seen.append(outcome.value)
                if outcome.value == "b":
                    c.open.set()
                elif outcome.value == "c":
                    a.open.set()
    assert seen == ["b", "c", "a"]
    assert outcome_counts()["ok"] == 3 and _balanced()


async def test_leaving_the_stream_early_cancels_everything_pending() -> None:
    """The hedged call: stop at the first ok; the other calls leave with the stream."""
    gates = [Gate(name) for name in "abc"]
    gates[1].open.set()
    with anyio.fail_after(5):
        async with _signal(*gates).stream_async(sender=None) as stream:
            async for outcome in stream:
                first = outcome
                break
    assert first.value == "b"
    assert gates[0].cancelled and gates[2].cancelled
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing outlives the stream
    counts = outcome_counts()
    assert (counts["submitted"], counts["ok"], counts["cancelled"]) == (3, 1, 2)


async def test_a_plain_async_for_left_by_break_cancels_as_the_stream_is_dropped() -> None:
    gates = [Gate(name) for name in "ab"]
    gates[0].open.set()
    with anyio.fail_after(5):
        async for outcome in _signal(*gates).stream_async(sender=None):
            assert outcome.value == "a"
            break
    # Dropped at the end of the loop: its pending calls are cancelled at once,
    # and finish unwinding at the next turn of the loop.
    await anyio.wait_all_tasks_blocked()
    assert gates[1].cancelled
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert _balanced()


async def test_an_exception_in_the_loop_leaves_nothing_behind() -> None:
    gates = [Gate(name) for name in "ab"]
    gates[0].open.set()
    with pytest.raises(LookupError), anyio.fail_after(5):
        async with _signal(*gates).stream_async(sender=None) as stream:
            async for _ in stream:
                raise LookupError("the caller's own error")
    assert gates[1].cancelled
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert _balanced()


async def test_a_cancelled_request_takes_its_calls_with_it() -> None:
    gates = [Gate(name) for name in "ab"]

    async def request() -> None:
        async for _ in _signal(*gates).stream_async(sender=None):
            pass

    task = asyncio.ensure_future(request())
    await anyio.wait_all_tasks_blocked()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(gate.cancelled for gate in gates)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    counts = outcome_counts()
    assert (counts["submitted"], counts["cancelled"]) == (2, 2)


async def test_an_error_that_must_propagate_ends_the_stream() -> None:
    signal = Signal(name="tests.stream.raise")
    waiting = Gate("waiting")

    async def broken(sender: Any, **kwargs: Any) -> None:
        raise KeyError("carrier")

    signal.connect(waiting, weak=False)
    signal.connect(broken, weak=False, on_error="raise")
    with pytest.raises(KeyError), anyio.fail_after(5):
        async for _ in signal.stream_async(sender=None):
            pass
    assert waiting.cancelled
    assert _balanced()


async def test_a_deadline_ends_what_is_still_running() -> None:
    late = Gate("late")
    quick = Gate("quick")
    quick.open.set()
    seen = []
    with VirtualClock(), anyio.fail_after(5):
        async with _signal(late, quick, on_error="log").stream_async(
            sender=None, deadline=2
        ) as stream:
            async for outcome in stream:
                seen.append((outcome.value, outcome.status))
    assert seen == [("quick", "ok"), (None, "timeout")]
    assert _balanced()


async def test_calls_through_the_queue_stream_too() -> None:
    gates = [Gate(name) for name in "ab"]
    gates[1].open.set()  # b would end at once, but waits in line behind a
    with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": {"MIN_WORKERS": 1, "MAX_WORKERS": 1}}):
        signal = _signal(*gates)
        values = []
        stream = signal.stream_async(sender=None, queue=True)

        async def read() -> None:
            values.extend([outcome.value async for outcome in stream])

        with anyio.fail_after(5):
            async with stream, anyio.create_task_group() as tg:
                tg.start_soon(read)
                await anyio.wait_all_tasks_blocked()
                assert gates[0].started and not gates[1].started  # one worker: b waits
                gates[0].open.set()
        stats = queue_stats()
    assert values == ["a", "b"]
    assert (stats.submitted, stats.completed) == (2, 2)


async def test_an_ordered_signal_streams_in_priority_order() -> None:
    signal = Signal(ordered=True, name="tests.stream.ordered")
    calls: list[str] = []

    def make(name: str) -> Any:
        async def listener(sender: Any, **kwargs: Any) -> str:
            calls.append(name)
            return name

        return listener

    for name, priority in (("low", 1), ("high", 3), ("middle", 2)):
        signal.connect(make(name), weak=False, priority=priority)
    with anyio.fail_after(5):
        async with signal.stream_async(sender=None) as stream:
            values = [outcome.value async for outcome in stream]
    assert values == calls == ["high", "middle", "low"]


async def test_a_stream_left_before_it_started_runs_nothing() -> None:
    gate = Gate("never")
    stream = _signal(gate).stream_async(sender=None)
    await stream.aclose()
    assert [outcome async for outcome in stream] == []
    assert outcome_counts()["submitted"] == 0


# -- the invariant, under random listeners, deadlines and early exits ----------------------

listener_specs = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.001, 0.005, None]),  # how long it takes; None: forever
        st.booleans(),  # it fails
        st.booleans(),  # it is sync (a listener thread under a deadline)
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=listener_specs,
    deadline=st.sampled_from([None, 0.002, 0.01]),
    leave_after=st.sampled_from([None, 0, 1, 2]),
)
def test_every_streamed_call_ends_as_one_counted_outcome(
    specs: list[tuple[float | None, bool, bool]], deadline: float | None, leave_after: int | None
) -> None:
    if deadline is None and any(duration is None for duration, _, _ in specs):
        deadline = 0.01  # a listener that never returns needs something to end it
    reset()
    signal = Signal(name="tests.stream.property")
    release = threading.Event()

    def make(duration: float | None, fails: bool, sync: bool) -> Any:
        if sync:

            def blocking(sender: Any, **kwargs: Any) -> str:
                release.wait(duration if duration is not None else 5)
                if fails:
                    raise ValueError("failed")
                return "ok"

            return blocking

        async def waiting(sender: Any, **kwargs: Any) -> str:
            await (asyncio.sleep(duration) if duration is not None else asyncio.Event().wait())
            if fails:
                raise ValueError("failed")
            return "ok"

        return waiting

    for spec in specs:
        signal.connect(make(*spec), weak=False, on_error="log")

    async def scenario() -> int:
        seen = 0
        with anyio.fail_after(10):
            async with signal.stream_async(sender=None, deadline=deadline) as stream:
                async for _ in stream:
                    seen += 1
                    if leave_after is not None and seen > leave_after:
                        break
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return seen

    seen = asyncio.run(scenario())
    release.set()
    counts = outcome_counts()
    assert counts["submitted"] == len(specs)
    assert counts["submitted"] == sum(n for key, n in counts.items() if key != "submitted")
    # The calls the loop did not see had ended unseen, or were cancelled when it left.
    assert counts["cancelled"] <= len(specs) - seen
    if leave_after is None:
        assert counts["cancelled"] == 0 and seen == len(specs)


# -- ordered signals and observers ---------------------------------------------------------


def _ordered(*gates: Gate, **options: Any) -> Signal:
    signal = Signal(ordered=True, name="tests.stream.ordered_gates")
    for priority, gate in enumerate(reversed(gates)):
        signal.connect(gate, weak=False, priority=priority, **options)
    return signal


async def test_leaving_an_ordered_stream_early_counts_the_calls_it_never_started() -> None:
    gates = [Gate(name) for name in "abc"]
    gates[0].open.set()
    with anyio.fail_after(5):
        async with _ordered(*gates).stream_async(sender=None) as stream:
            async for outcome in stream:
                first = outcome
                break
    assert first.value == "a"
    assert gates[1].cancelled and not gates[2].cancelled  # c never started
    assert asyncio.all_tasks() == {asyncio.current_task()}
    counts = outcome_counts()
    assert (counts["submitted"], counts["ok"], counts["cancelled"]) == (3, 1, 2)
    assert _balanced()


async def test_an_error_that_must_propagate_ends_an_ordered_stream_counting_the_rest() -> None:
    signal = Signal(ordered=True, name="tests.stream.ordered_raise")
    after = Gate("after")
    after.open.set()

    async def broken(sender: Any, **kwargs: Any) -> None:
        raise KeyError("carrier")

    signal.connect(broken, weak=False, priority=2, on_error="raise")
    signal.connect(after, weak=False, priority=1)
    seen = []
    with pytest.raises(KeyError), anyio.fail_after(5):
        async for outcome in signal.stream_async(sender=None):
            seen.append(outcome)
    assert seen == []
    counts = outcome_counts()
    assert (counts["submitted"], counts["error"], counts["cancelled"]) == (2, 1, 1)
    assert _balanced()


@pytest.mark.parametrize("ordered", [False, True], ids=["concurrent", "ordered"])
async def test_observers_see_a_streamed_dispatch_once_with_its_outcomes(ordered: bool) -> None:
    gates = [Gate(name) for name in "ab"]
    for gate in gates:
        gate.open.set()
    signal = _ordered(*gates) if ordered else _signal(*gates)
    with capture_dispatches() as dispatches, anyio.fail_after(5):
        async with signal.stream_async(sender="cart") as stream:
            values = [outcome.value async for outcome in stream]
    assert sorted(values) == ["a", "b"]
    [dispatch] = dispatches
    assert (dispatch.signal, dispatch.sender) == (signal, "cart")
    assert [outcome.value for outcome in dispatch.outcomes] == values


async def test_observers_see_a_stream_left_early_with_the_outcomes_it_gave() -> None:
    gates = [Gate(name) for name in "ab"]
    gates[1].open.set()
    with capture_dispatches() as dispatches, anyio.fail_after(5):
        async with _signal(*gates).stream_async(sender=None) as stream:
            async for _ in stream:
                break
    [dispatch] = dispatches
    assert [outcome.value for outcome in dispatch.outcomes] == ["b"]


# -- what each call gets, and what the stream counts ------------------------------------------

RECEIPTS: list[Any] = []


def send_receipt(sender: Any, **kwargs: Any) -> str:
    """A background listener (module level, so a worker can find it)."""
    RECEIPTS.append(sender)
    return "sent"


@pytest.mark.parametrize("queue", [False, True], ids=["direct", "queued"])
async def test_each_streamed_call_gets_the_signal_sender_and_arguments(queue: bool) -> None:
    signal = Signal(name="tests.stream.inputs")
    received: list[tuple[Any, Any, dict[str, Any]]] = []

    async def listener(sender: Any, signal: Any, **kwargs: Any) -> None:
        received.append((signal, sender, kwargs))

    signal.connect(listener, weak=False)
    with anyio.fail_after(5):
        async with signal.stream_async(sender="cart", queue=queue, total=3) as stream:
            [outcome] = [outcome async for outcome in stream]
    assert outcome.status == "ok"
    assert received == [(signal, "cart", {"total": 3})]


async def test_a_background_listener_in_a_queued_stream_is_enqueued_not_queued() -> None:
    signal = Signal(name="tests.stream.background")
    inline = Gate("inline")
    inline.open.set()
    signal.connect(send_receipt, weak=False, mode="background")
    signal.connect(inline, weak=False)
    RECEIPTS.clear()
    try:
        with anyio.fail_after(5):
            async with signal.stream_async(sender="cart", queue=True) as stream:
                statuses = sorted([outcome.status async for outcome in stream])
    finally:
        signal.disconnect(send_receipt)
    assert statuses == ["enqueued", "ok"]
    assert RECEIPTS == ["cart"]
    assert queue_stats().submitted == 1  # only the inline listener went through the queue


class Halt(BaseException):
    """Not an Exception: it must leave the listener's call, as KeyboardInterrupt would."""


async def test_a_base_exception_of_a_listener_ends_the_stream() -> None:
    signal = Signal(name="tests.stream.halt")
    waiting = Gate("waiting")

    async def halts(sender: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        raise Halt()

    signal.connect(waiting, weak=False)
    signal.connect(halts, weak=False)
    with pytest.raises(Halt), anyio.fail_after(5):
        async for _ in signal.stream_async(sender=None):
            pass
    assert waiting.cancelled
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert _balanced()


async def test_every_stream_adds_its_calls_to_the_counts() -> None:
    for _ in range(2):
        gates = [Gate(name) for name in "ab"]
        for gate in gates:
            gate.open.set()
        with anyio.fail_after(5):
            async with _signal(*gates).stream_async(sender=None) as stream:
                assert len([outcome async for outcome in stream]) == 2
    counts = outcome_counts()
    assert (counts["submitted"], counts["ok"]) == (4, 4)


async def test_a_streams_repr_says_how_many_calls_are_pending() -> None:
    gates = [Gate(name) for name in "ab"]
    gates[0].open.set()
    stream = _signal(*gates).stream_async(sender=None)
    assert repr(stream) == "<Stream of 2 listeners, not started>"
    with anyio.fail_after(5):
        async with stream:
            first = await anext(stream)
            assert first.value == "a"
            assert repr(stream) == "<Stream of 2 listeners, 1 pending>"


def test_a_stream_is_made_by_stream_async_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Stream()`` is refused by name, and the half-made object goes away quietly."""
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(TypeError, match=r"^a Stream is made by Signal\.stream_async\(\)$"):
        Stream()
    gc.collect()  # its __del__ has run: it had nothing pending to cancel
    assert unraisable == []
