"""send_async / send_sync: fire and forget, with a report of every call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from patchboard import Collected, Signal, receiver


async def test_send_async_returns_a_report_when_inline_listeners_are_done() -> None:
    paid = Signal()
    done = []

    @receiver(paid)
    async def receipt(sender, *, order, **kwargs):
        await asyncio.sleep(0.01)
        done.append(order)

    @receiver(paid, on_error="log")
    def audit(sender, *, order, **kwargs):
        raise RuntimeError("audit down")

    report = await paid.send_async(sender=None, order=7)

    assert done == [7]
    assert isinstance(report, Collected)
    assert [o.status for o in report] == ["ok", "error"]


async def test_send_async_propagates_a_raise_policy_error() -> None:
    paid = Signal()

    @receiver(paid)
    async def broken(sender, **kwargs):
        raise KeyError("order")

    with pytest.raises(KeyError):
        await paid.send_async(sender=None)


@pytest.mark.parametrize(
    ("queue", "error", "message"),
    [
        (True, ImproperlyConfigured, r"^queue=True: an ordered signal runs its"),
        ("yes", ValueError, r"^queue must be 'auto', True or False, got 'yes'$"),
    ],
)
@pytest.mark.parametrize(
    "verb", ["collect", "send_sync", "collect_async", "send_async", "stream_async"]
)
async def test_every_verb_refuses_a_bad_queue_even_without_listeners(
    verb: str, queue: Any, error: type[Exception], message: str
) -> None:
    # Refused whether or not a listener is connected yet: not first in production.
    # (A stream is refused as it is made, before anything is awaited.)
    signal = Signal(ordered=True)
    call = getattr(signal, verb)
    with pytest.raises(error, match=message):
        result = call(sender=None, queue=queue)
        if verb in ("collect_async", "send_async"):
            await result


async def test_queue_argument_is_validated() -> None:
    paid = Signal()

    @receiver(paid)
    async def listener(sender, **kwargs):
        return 1

    with pytest.raises(ValueError, match="queue must be 'auto', True or False, got 'yes'"):
        await paid.send_async(sender=None, queue="yes")
