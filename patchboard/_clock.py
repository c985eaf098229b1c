"""
The one clock patchboard reads.

Everything patchboard times reads :func:`now`: a dispatch's deadline, the
short-term queue's waits and expiry, an outcome's ``elapsed``, the in-process
circuit breakers. It is ``time.monotonic()``, the clock asyncio's event loop
runs on (``loop.time()``), so a deadline read here and a cancel scope set on
the loop agree. ``patchboard.testing.VirtualClock`` replaces it in tests.
(The Redis store decides on the Redis server's clock: one clock for every
process that shares a circuit.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

now: Callable[[], float] = time.monotonic
"""Seconds on a monotonic clock. Read it as ``_clock.now()`` (never imported by
name): a virtual clock replaces this attribute."""
