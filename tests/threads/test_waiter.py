"""
The cross-thread wake-up (``patchboard._waiter.Waiter``), tested on purpose as
an internal: the listener threads' bound and the short-term queue both wake
their waiters with it, from any thread, whatever loop the waiter is on.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from patchboard._waiter import Waiter


async def test_a_waiter_on_a_loop_is_woken_from_another_thread() -> None:
    waiter = Waiter(asyncio.get_running_loop())
    waker = threading.Thread(target=waiter.wake)
    waker.start()
    await asyncio.wait_for(waiter.wait(), timeout=10)
    waker.join()
    assert waiter.woken


async def test_a_waiter_on_a_loop_is_woken_from_its_own_thread() -> None:
    waiter = Waiter(asyncio.get_running_loop())
    waiter.wake()
    await asyncio.wait_for(waiter.wait(), timeout=10)
    assert waiter.woken


async def test_a_cancelled_wait_loses_a_later_wake_up_and_rearm_makes_a_fresh_one() -> None:
    waiter = Waiter(asyncio.get_running_loop())
    task = asyncio.ensure_future(waiter.wait())
    await asyncio.sleep(0)  # the task waits on the future
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    waiter.wake()  # the cancelled future stays cancelled
    assert waiter.woken
    waiter.rearm()
    assert not waiter.woken
    woken = asyncio.ensure_future(waiter.wait())
    await asyncio.sleep(0)
    assert not woken.done()
    threading.Thread(target=waiter.wake).start()
    await asyncio.wait_for(woken, timeout=10)


def test_a_blocking_waiter_is_woken_by_another_thread_or_times_out() -> None:
    waiter = Waiter(None)
    assert not waiter.wait_blocking(0.0)
    assert not waiter.woken
    waker = threading.Thread(target=waiter.wake)
    waker.start()
    assert waiter.wait_blocking(10)
    waker.join()
    assert waiter.woken


def test_waking_a_waiter_whose_loop_is_closed_is_harmless() -> None:
    loop = asyncio.new_event_loop()
    waiter = Waiter(loop)
    loop.close()
    raised: list[BaseException] = []

    def wake() -> None:
        try:
            waiter.wake()
        except BaseException as exc:
            raised.append(exc)

    waker = threading.Thread(target=wake)
    waker.start()
    waker.join()
    assert raised == []
    assert waiter.woken
