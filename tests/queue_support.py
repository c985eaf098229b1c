"""What the short-term queue's tests share: a blocking listener and a Listener factory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

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
    """A strongly held Listener for ``func``, for calling ``queue.run`` directly."""
    return Listener(func, ListenerOptions(**options), weak=False)
