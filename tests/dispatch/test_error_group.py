"""
``on_error="group"``: every listener runs to its end, then the failures of
the listeners that group reach the caller together, as a ``ListenerErrors``
(an ``ExceptionGroup``) carrying their outcomes and the whole ``Collected``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from django.test import override_settings

from patchboard import (
    Collected,
    ListenerErrors,
    ListenerOptions,
    PatchboardError,
    Rejected,
    Signal,
    outcome_counts,
    receiver,
)


class Boom(Exception):
    pass


class Bust(Exception):
    pass


def listener(kind: str, result: Any) -> Callable[..., Any]:
    """A ``kind`` listener that returns ``result``, or raises it if it is an exception."""

    def answer() -> Any:
        if isinstance(result, BaseException):
            raise result
        return result

    if kind == "sync":

        def sync_listener(sender: Any, **kwargs: Any) -> Any:
            return answer()

        return sync_listener

    async def async_listener(sender: Any, **kwargs: Any) -> Any:
        return answer()

    return async_listener


def three(kind: str, on_error: str | None = "group") -> tuple[Signal, BaseException, BaseException]:
    """A signal whose listeners fail, answer 2, and fail again, in that order."""
    signal = Signal()
    first, last = Boom("first"), Bust("last")
    options = {} if on_error is None else {"on_error": on_error}
    signal.connect(listener(kind, first), weak=False, **options)
    signal.connect(listener(kind, 2), weak=False, **options)
    signal.connect(listener(kind, last), weak=False, **options)
    return signal, first, last


def dispatching(signal: Signal, verb: str) -> Any:
    """Dispatch ``signal`` with ``verb`` from async code (a sync verb in a thread)."""
    if verb.endswith("async"):
        return getattr(signal, verb)(sender=None)
    return asyncio.to_thread(getattr(signal, verb), sender=None)


def assert_grouped(group: ListenerErrors, first: BaseException, last: BaseException) -> None:
    assert isinstance(group, ExceptionGroup) and isinstance(group, PatchboardError)
    assert group.exceptions == (first, last)
    assert [o.error for o in group.outcomes] == [first, last]
    assert all(o.status == "error" and o.grouped and not o.propagate for o in group.outcomes)
    assert isinstance(group.collected, Collected)
    assert [o.status for o in group.collected] == ["error", "ok", "error"]
    assert group.collected.values() == [2]  # a grouped failure has no stand-in value
    assert "2 listeners of" in str(group)


VERBS = ("collect_async", "collect", "send_async", "send_sync")


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", VERBS)
async def test_every_listener_runs_then_the_failures_are_raised_together(
    kind: str, verb: str
) -> None:
    signal, first, last = three(kind)

    with pytest.raises(ListenerErrors) as raised:
        await dispatching(signal, verb)

    assert_grouped(raised.value, first, last)
    assert outcome_counts()["error"] == 2
    assert outcome_counts()["ok"] == 1


@pytest.mark.parametrize("verb", VERBS)
async def test_the_settings_default_groups_listeners_without_a_policy(verb: str) -> None:
    signal, first, last = three("async", on_error=None)

    with (
        override_settings(PATCHBOARD={"ON_ERROR": "group"}),
        pytest.raises(ListenerErrors) as raised,
    ):
        await dispatching(signal, verb)

    assert_grouped(raised.value, first, last)


@pytest.mark.parametrize("verb", VERBS)
async def test_no_failure_no_group(verb: str) -> None:
    signal = Signal()
    signal.connect(listener("async", 1), weak=False, on_error="group")
    signal.connect(listener("sync", 2), weak=False, on_error="group")

    collected = await dispatching(signal, verb)

    assert collected.values() == [1, 2]


async def test_a_grouped_failure_does_not_cancel_a_sibling_still_running() -> None:
    """Under "raise" the slow listener would be cancelled; under "group" it runs to its end."""
    signal = Signal()
    failed, may_finish = asyncio.Event(), asyncio.Event()

    @receiver(signal, on_error="group")
    async def fails(sender: Any, **kwargs: Any) -> None:
        failed.set()
        raise Boom("down")

    @receiver(signal, on_error="group")
    async def slow(sender: Any, **kwargs: Any) -> str:
        await may_finish.wait()
        return "done"

    dispatch = asyncio.create_task(signal.collect_async(sender=None))
    await failed.wait()
    assert not dispatch.done()
    may_finish.set()

    with pytest.raises(ListenerErrors) as raised:
        await dispatch

    assert [o.status for o in raised.value.collected] == ["error", "ok"]
    assert raised.value.collected.values() == ["done"]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_raise_listener_wins_over_the_group(kind: str) -> None:
    """A "raise" failure stops the dispatch and reaches the caller as itself."""
    signal = Signal(ordered=True)
    signal.connect(listener(kind, Boom("grouped")), weak=False, on_error="group", priority=2)
    raised_alone = Bust("alone")
    signal.connect(listener(kind, raised_alone), weak=False, on_error="raise", priority=1)
    after: list[int] = []

    @receiver(signal, on_error="group", priority=0)
    def never_runs(sender: Any, **kwargs: Any) -> None:
        after.append(1)

    with pytest.raises(Bust) as raised:
        await signal.collect_async(sender=None)

    assert raised.value is raised_alone
    assert after == []
    assert outcome_counts()["cancelled"] == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_ordered_signal_runs_every_listener_in_order_then_groups(kind: str) -> None:
    signal = Signal(ordered=True)
    ran: list[str] = []
    for name in ("a", "b", "c"):

        def make(name: str = name) -> Callable[..., Any]:
            def sync_step(sender: Any, **kwargs: Any) -> None:
                ran.append(name)
                raise Boom(name)

            async def async_step(sender: Any, **kwargs: Any) -> None:
                ran.append(name)
                raise Boom(name)

            return sync_step if kind == "sync" else async_step

        signal.connect(make(), weak=False, on_error="group")

    with pytest.raises(ListenerErrors) as raised:
        await dispatching(signal, "collect" if kind == "sync" else "collect_async")

    assert ran == ["a", "b", "c"]
    assert [str(error) for error in raised.value.exceptions] == ["a", "b", "c"]


async def test_except_star_splits_the_group_and_keeps_the_outcomes() -> None:
    signal, first, last = three("async")
    boom: ListenerErrors | None = None
    bust: ListenerErrors | None = None

    try:
        await signal.collect_async(sender=None)
    except* Boom as part:
        boom = part  # type: ignore[assignment]
    except* Bust as part:
        bust = part  # type: ignore[assignment]

    assert isinstance(boom, ListenerErrors) and isinstance(bust, ListenerErrors)
    assert boom.exceptions == (first,) and [o.error for o in boom.outcomes] == [first]
    assert bust.exceptions == (last,) and [o.error for o in bust.outcomes] == [last]
    assert boom.collected is bust.collected is not None


async def test_stream_yields_every_outcome_then_raises_the_group_once() -> None:
    signal, first, last = three("async")
    seen = []

    stream = signal.stream_async(sender=None)
    with pytest.raises(ListenerErrors) as raised:
        async with asyncio.timeout(5):
            async for outcome in stream:
                seen.append(outcome.status)

    assert sorted(seen) == ["error", "error", "ok"]
    assert set(raised.value.exceptions) == {first, last}
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("verb", ["send", "asend"])
async def test_djangos_own_verbs_raise_as_under_raise(kind: str, verb: str) -> None:
    """
    Django's send() and asend() stop at an error (or, for several async
    receivers in Django 6.1, gather them in a TaskGroup's own group): a
    grouped listener's error reaches them as a "raise" one's does.
    """
    grouping, first, _ = three(kind)
    raising, _, _ = three(kind, on_error="raise")

    def dispatch(signal: Signal) -> Any:
        if verb == "asend":
            return signal.asend(sender=None)
        return asyncio.to_thread(signal.send, sender=None)

    with pytest.raises(Exception) as under_raise:
        await dispatch(raising)
    with pytest.raises(Exception) as under_group:
        await dispatch(grouping)

    assert type(under_group.value) is type(under_raise.value)
    assert not isinstance(under_group.value, ListenerErrors)
    if kind == "sync":
        assert under_group.value is first


def test_a_grouped_failure_is_not_logged_as_listener_failed(logs: Any) -> None:
    signal, _, _ = three("sync")

    with pytest.raises(ListenerErrors):
        signal.send_sync(sender=None)

    assert [e for e in logs.entries if e["event"] == "listener_failed"] == []


@pytest.mark.usefixtures("full_queue")
async def test_a_call_the_queue_rejected_joins_the_group() -> None:
    signal = Signal()
    signal.connect(listener("async", 1), weak=False, on_error="group")

    with pytest.raises(ListenerErrors) as raised:
        await signal.collect_async(sender=None, queue=True)

    (outcome,) = raised.value.outcomes
    assert outcome.status == "rejected"
    assert isinstance(raised.value.exceptions[0], Rejected)


@pytest.mark.usefixtures("full_queue")
async def test_a_fallback_that_answers_keeps_the_call_out_of_the_group() -> None:
    signal = Signal()

    @receiver(signal, on_error="group", fallback=lambda sender, **kwargs: "stand-in")
    async def quoted(sender: Any, **kwargs: Any) -> int:
        return 1

    collected = await signal.collect_async(sender=None, queue=True)

    assert [o.status for o in collected] == ["rejected"]
    assert collected.values() == ["stand-in"]


def test_on_error_group_is_a_valid_option_and_setting() -> None:
    assert ListenerOptions(on_error="group").on_error == "group"
    with pytest.raises(ValueError, match="on_error must be 'raise', 'log' or 'group', got 'all'"):
        ListenerOptions(on_error="all")  # type: ignore[arg-type]
