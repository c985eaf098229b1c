"""
The one clock patchboard reads.

Everything patchboard times reads :func:`now`: a dispatch's deadline, the
short-term queue's waits and expiry, an outcome's ``elapsed``. It is
``time.monotonic()``, the clock asyncio's event loop runs on (``loop.time()``),
so a deadline read here and a cancel scope set on the loop agree. The
in-process circuit breakers, whose ``opened_at`` and ``retry_at`` are dates,
read :func:`wall`: POSIX seconds. (The Redis store decides on the Redis
server's clock: one clock for every process that shares a circuit.)

``patchboard.testing.VirtualClock`` replaces both, with one virtual time (the
wall reading a fixed offset from it), and the running event loop's
``time()`` with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

now: Callable[[], float] = time.monotonic
"""Seconds on a monotonic clock. Read it as ``_clock.now()`` (never imported by
name): a virtual clock replaces this attribute."""

wall: Callable[[], float] = time.time
"""POSIX seconds (for what is shown as a date). Read it as ``_clock.wall()``: a
virtual clock replaces this attribute."""


def monotonic() -> float:
    """:data:`now`, read at each call: the default of a ``clock=`` that must follow
    a virtual clock installed after it was built."""
    return now()


def posix() -> float:
    """:data:`wall`, read at each call (the in-process breakers' default clock)."""
    return wall()
