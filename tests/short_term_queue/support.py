"""
What the queue's tests share: a blocker, one call dispatched through the
process's queue, waits on threads, and the timers a waiter sets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from patchboard import Listener, ListenerOptions, Outcome, Signal

SIGNAL_NAME = "tests.queue"
"""The name of the signal every call of :func:`dispatch` goes through."""


class Blocker:
    """``run``: an async listener holding its worker until ``release()``; counts ``started``."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.started = 0

    async def run(self, sender: Any, **kwargs: Any) -> str:
        self.started += 1
        await self.event.wait()
        return "released"

    def release(self) -> None:
        self.event.set()


async def dispatch(
    func: Callable[..., Any], *, sender: Any = None, deadline: float | None = None, **options: Any
) -> Outcome:
    """
    ``func``'s outcome, collected through the process's short-term queue
    (``queue=True``) as the only listener of a signal of its own, connected
    with ``options``. A ``"raise"`` policy raises the listener's error.
    """
    signal = Signal(name=SIGNAL_NAME)
    signal.connect(func, weak=False, **options)
    [outcome] = await signal.collect_async(sender, queue=True, deadline=deadline)
    return outcome


def listener(func: Callable[..., Any], **options: Any) -> Listener:
    """A strongly held Listener for ``func``, for tests calling ``queue._run`` directly."""
    return Listener(func, ListenerOptions(**options), weak=False)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """
    Whether ``condition()`` holds within ``timeout`` (call it in a thread):
    for what only an abandoned listener thread's return can bring about.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@contextmanager
def loop_timers() -> Iterator[list[float]]:
    """
    The delays (on the loop's clock) of the timers set on the running event
    loop inside the block, in order: when the queue's waiters plan to wake
    up. Only for what has no other effect to observe (a wake-up that finds
    nothing to do costs CPU, nothing else).
    """
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    real = loop.call_at

    def call_at(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        delays.append(when - loop.time())
        return real(when, *args, **kwargs)

    loop.call_at = call_at  # type: ignore[method-assign]
    try:
        yield delays
    finally:
        del loop.call_at  # the class's method shows through again


async def all_blocked() -> None:
    """
    Return once every other task of the loop waits on something and no
    callback is ready to run, as ``anyio.wait_all_tasks_blocked()`` does but
    without its 0.1 s sleeps: on an autojumping ``VirtualClock``, those would
    move time. (It reads what anyio reads, asyncio's private ``_fut_waiter``,
    and the loop's ``_ready`` callbacks: a finished task's result is on its
    way to its awaiter there.)

    Raises:
        AssertionError: a task still ran after 10,000 turns of the loop (one
            that never blocks, say a waiter waking up again and again).
    """
    loop = asyncio.get_running_loop()
    this = asyncio.current_task()
    for _ in range(10_000):
        await asyncio.sleep(0)
        if getattr(loop, "_ready", ()):
            continue
        for task in asyncio.all_tasks():
            waiter = getattr(task, "_fut_waiter", None)
            if task is not this and (waiter is None or waiter.done()):
                break
        else:
            return
    raise AssertionError("a task still runs after 10,000 turns of the loop")
