"""
An answer from each of uvicorn's worker processes, which share one listening
socket.

Whichever worker calls ``accept()`` first takes a new connection, and asyncio
accepts every connection waiting at once. On an idle machine the kernel wakes
the workers in the same order each time, so one of them can win nearly every
race: two idle workers of a bare ASGI app, asked four connections at a time,
and one of them answered all four in 177 rounds of 200 (on this project's
2-core machine); a CI run of the stress once waited 20 s for the other in
vain. So once
a worker has answered it is paused (SIGSTOP, then SIGCONT) while the next
connection is made: only the others can take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection

from bench.stress.services import alive, state

STOPPED_WITHIN = 1.0
"""Seconds a paused process has to show as stopped in ``/proc`` (it takes a moment)."""


async def ask_each[T](
    wanted: Collection[int],
    ask: Callable[[], Awaitable[tuple[int, T]]],
    *,
    within: float,
    pause: bool,
) -> dict[int, T]:
    """
    Call ``ask`` (one request on a fresh connection, which tells the pid that
    answered) until each process of ``wanted`` has answered, ``within``
    seconds at most; what was found by then.

    A few requests at once first. Then, with ``pause``, the processes that
    answered are paused while one more request is made, which only the others
    can take: a process that still does not answer within the time left is
    stuck (or gone). Without ``pause`` (under load, where a pause would show
    in the latencies), rounds of a few requests go on until the time is up.
    """
    wanted = set(wanted)
    found: dict[int, T] = {}
    deadline = time.monotonic() + within
    while (missing := wanted - found.keys()) and (left := deadline - time.monotonic()) > 0:
        if pause and (answered := found.keys() & wanted):
            if not any(alive(pid) for pid in missing):
                break  # nobody left to take the connection
            try:
                async with paused(answered), asyncio.timeout(left):
                    found.update([await ask()])
            except TimeoutError:
                break
            continue
        found.update(await asyncio.gather(*(ask() for _ in range(4))))
        if not pause:
            await asyncio.sleep(0.1)  # a busy worker loses every race: give it a moment
    return found


@contextlib.asynccontextmanager
async def paused(pids: Collection[int]) -> AsyncIterator[None]:
    """
    The processes ``pids`` stopped (SIGSTOP) inside the block, each seen
    stopped before it starts, and continued (SIGCONT) after it.
    """
    stopped: list[int] = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile: nothing to pause
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        deadline = time.monotonic() + STOPPED_WITHIN
        while not all(state(pid) in {"T", "Z", ""} for pid in stopped):
            if time.monotonic() > deadline:
                break  # the block then only races the others, as without a pause
            await asyncio.sleep(0.001)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
