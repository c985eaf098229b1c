"""send_async / send_sync: fire and forget, with a report of every call."""

from __future__ import annotations

import asyncio

import pytest

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


async def test_queue_argument_is_validated() -> None:
    paid = Signal()

    @receiver(paid)
    async def listener(sender, **kwargs):
        return 1

    with pytest.raises(ValueError, match="queue must be 'auto', True or False, got 'yes'"):
        await paid.send_async(sender=None, queue="yes")
