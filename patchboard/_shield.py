"""
Work that must end even when its caller is cancelled.

An anyio shield (``CancelScope(shield=True)``) holds off the cancellation of
anyio's cancel scopes only: on asyncio, a task's ``cancel()`` goes through
it, and that is how Django cancels a view whose client went away, how
``asyncio.timeout`` ends, and how a dispatch cuts the calls its deadline
caught. :func:`finish` runs the work in a task of its own and waits for it
through both kinds, then lets the cancellation go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import anyio


async def finish[T](
    work: Coroutine[Any, Any, T], *, undo: Callable[[T], Coroutine[Any, Any, None]] | None = None
) -> T:
    """
    ``work``'s result, awaited to its end even if the caller is cancelled
    meanwhile; a cancellation that came meanwhile is raised once it ended
    (its result, or error, is then dropped: the caller is gone). With
    ``undo``, a result dropped so is handed to it first, awaited the same
    way: say, a probe slot granted to a caller that is gone, given back.
    """
    # Started at once, up to its first wait (a Redis command: sent), as the caller
    # would have run it: no loop turn before it starts.
    task = asyncio.Task(work, loop=asyncio.get_running_loop(), eager_start=True)
    if not task.done():
        try:
            await asyncio.wait((task,))  # never cancels the task
        except asyncio.CancelledError as cancelled:
            await _outlive(task, cancelled, undo)
    return task.result()


async def _outlive[T](
    task: asyncio.Task[T],
    cancelled: asyncio.CancelledError,
    undo: Callable[[T], Coroutine[Any, Any, None]] | None,
) -> NoReturn:
    """The rest of :func:`finish` once its caller was cancelled: wait, undo, raise."""
    with anyio.CancelScope(shield=True):  # an anyio scope would cancel every wait again
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((task,))
    if not task.cancelled() and task.exception() is None and undo is not None:
        with contextlib.suppress(asyncio.CancelledError):  # the caller's is raised below
            await finish(undo(task.result()))
    raise cancelled  # (an error of the work's is dropped with the caller)
