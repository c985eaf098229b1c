"""Sync twins: collect() and send_sync() for WSGI views and management commands."""

from __future__ import annotations

import asyncio
import threading

import pytest

from patchboard import Signal, SyncCallInEventLoop, receiver


def test_collect_from_sync_code_runs_sync_listeners_in_the_calling_thread() -> None:
    quote = Signal()
    threads = []

    @receiver(quote)
    def listener(sender, **kwargs):
        threads.append(threading.get_ident())
        return 3

    assert quote.collect(sender=None).values() == [3]
    assert threads == [threading.get_ident()]


def test_sync_twins_run_async_listeners_too() -> None:
    quote = Signal()
    threads = []

    @receiver(quote)
    async def remote(sender, **kwargs):
        await asyncio.sleep(0.01)
        return "async"

    @receiver(quote)
    def local(sender, **kwargs):
        threads.append(threading.get_ident())
        return "sync"

    assert quote.collect(sender=None).values() == ["async", "sync"]
    assert [o.status for o in quote.send_sync(sender=None)] == ["ok", "ok"]
    assert threads == [threading.get_ident()] * 2


@pytest.mark.parametrize("verb", ["collect", "send_sync"])
async def test_sync_twin_inside_a_running_loop_fails_clearly(verb) -> None:
    quote = Signal()

    @receiver(quote)
    def listener(sender, **kwargs): ...

    twin = {"collect": "collect_async", "send_sync": "send_async"}[verb]
    message = (
        rf"^Signal\.{verb}\(\) cannot be called from a running event loop; "
        rf"use 'await signal\.{twin}\(\.\.\.\)' instead$"
    )
    with pytest.raises(SyncCallInEventLoop, match=message) as raised:
        getattr(quote, verb)(sender=None)
    assert raised.value.method == verb


def test_sync_twin_error_policies() -> None:
    quote = Signal()

    @receiver(quote, on_error="log", default=-1)
    def broken(sender, **kwargs):
        raise ValueError("x")

    @receiver(quote, on_error="raise")
    def strict(sender, **kwargs):
        raise KeyError("y")

    with pytest.raises(KeyError):
        quote.collect(sender=None)
    quote.disconnect(strict)
    assert quote.collect(sender=None).values() == [-1]
