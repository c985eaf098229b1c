"""
A wake-up call for one waiter, given from any thread, whatever loop the waiter is on.

The listener threads' bound and the short-term queue are shared by every
event loop of the process (the ASGI server's, and the short-lived ones of
``async_to_sync``) and by plain threads (the sync twins wait without a
loop). Whoever frees a place wakes its next waiter from its own thread,
often under a ``threading.Lock``, so no loop-bound primitive
(``asyncio.Event``, ``asyncio.Condition``) can be shared between them.
Instead each waiter holds a :class:`Waiter` made where it waits, and
:meth:`Waiter.wake` reaches it there: a future resolved on the waiter's own
loop (at once from the loop's own thread, through ``call_soon_threadsafe``
from any other), or a ``threading.Event`` for a waiter without a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Waiter:
    """
    One waiter's wake-up: made in the waiter's thread, on its event loop
    (``loop``) or, with ``loop=None``, for a thread that blocks.

    :meth:`wake` may be called from any thread, even under a lock (it never
    blocks nor runs the waiter's code); a wake-up given before the waiter
    waits is kept. ``woken`` tells whether it was given (read it under the
    lock the waker held). :meth:`rearm` makes it ready for the next one.
    """

    __slots__ = ("_event", "_future", "_loop", "_thread", "woken")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.woken = False
        self._loop = loop
        self._thread = threading.get_ident()
        self._future: asyncio.Future[None] | None = None
        self._event: threading.Event | None = None
        if loop is None:
            self._event = threading.Event()
        else:
            self._future = loop.create_future()

    def __repr__(self) -> str:
        how = "blocking" if self._loop is None else "on its loop"
        return f"<Waiter {how}, {'woken' if self.woken else 'waiting'}>"

    def wake(self) -> None:
        """Wake the waiter, from any thread."""
        self.woken = True
        if self._event is not None:
            self._event.set()
            return
        future = self._future
        assert future is not None and self._loop is not None
        if threading.get_ident() == self._thread:
            _resolve(future)
            return
        # RuntimeError: its loop is closed; the waiter was cancelled and withdrew already.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_resolve, future)

    async def wait(self) -> None:
        """
        Wait on the waiter's loop until woken.

        Raises:
            asyncio.CancelledError: the waiting task was cancelled (a wake-up
                given meanwhile is lost with it: read ``woken``).
        """
        assert self._future is not None, "a blocking Waiter has no loop: use wait_blocking()"
        await self._future

    def wait_blocking(self, timeout: float | None) -> bool:
        """Block this thread until woken (True) or ``timeout`` seconds passed (False)."""
        assert self._event is not None, "this Waiter is on a loop: use wait()"
        return self._event.wait(timeout)

    def rearm(self) -> None:
        """In the waiter's thread, after a wake-up (or a wait given up): ready for the next one."""
        self.woken = False
        if self._event is not None:
            self._event.clear()
        elif self._loop is not None:
            self._future = self._loop.create_future()


def _resolve(future: asyncio.Future[None]) -> None:
    # A future cancelled with its waiting task stays so: the wake-up is lost with it.
    if not future.done():
        future.set_result(None)
