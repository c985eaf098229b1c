"""What the queue's tests share: a blocker, a Listener factory, waits on threads and timers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import patchboard._queue
from patchboard import Listener, ListenerOptions


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


def listener(func: Callable[..., Any], **options: Any) -> Listener:
    """A strongly held Listener for ``func``, for calling ``queue._run`` directly."""
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


def record_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """
    The list of the delays the queue's waiters sleep for (their
    ``anyio.move_on_after`` timers), in order, filled as the test runs.
    """
    waits: list[float] = []
    real = anyio.move_on_after

    def recorded(delay: float, *args: Any, **kwargs: Any) -> anyio.CancelScope:
        waits.append(delay)
        return real(delay, *args, **kwargs)

    monkeypatch.setattr(patchboard._queue.anyio, "move_on_after", recorded)
    return waits
