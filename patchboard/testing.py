"""
Helpers for testing code that uses patchboard: in your suite as in ours.

``capture_dispatches()``
    Records every dispatch of patchboard's verbs (``send_async``,
    ``collect_async`` and their sync twins) with its outcomes.
``reset()``
    Starts patchboard's process state afresh (breakers, the short-term
    queue, counters, settings): call it between tests.
``VirtualClock``
    A clock that moves only when told to, or when the event loop has nothing
    left to do but wait: ``with VirtualClock() as clock:`` makes patchboard
    (deadlines, the short-term queue, ``elapsed``, in-process breakers) and
    the running event loop read it, to test time-based behaviour without
    waiting.
``set_retry_waits(False)``
    Listeners' retries follow their failures at once (no back-off waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.dispatch import Signal as DjangoSignal

from patchboard import _clock
from patchboard._outcomes import Outcome
from patchboard._state import state
from patchboard._threads import ListenerThreads


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One dispatch seen by :func:`capture_dispatches`."""

    signal: DjangoSignal
    sender: Any
    outcomes: tuple[Outcome, ...]

    def statuses(self) -> list[str]:
        return [outcome.status for outcome in self.outcomes]


@contextmanager
def capture_dispatches() -> Iterator[list[Dispatch]]:
    """
    Collect the dispatches made inside the ``with`` block, in order, from any
    thread; a dispatch that raised is recorded too.

    ::

        with capture_dispatches() as dispatches:
            order_paid.send_sync(sender=Order, order=order)
        assert dispatches[0].statuses() == ["ok", "enqueued"]
    """
    seen: list[Dispatch] = []
    lock = threading.Lock()

    def observe(signal: DjangoSignal, sender: Any, outcomes: list[Outcome]) -> None:
        with lock:
            seen.append(Dispatch(signal, sender, tuple(outcomes)))

    state.observers.append(observe)
    try:
        yield seen
    finally:
        if observe in state.observers:  # reset() inside the block removed it already
            state.observers.remove(observe)


def set_retry_waits(enabled: bool) -> None:
    """
    Whether listeners' retries wait between attempts (on by default). Off,
    a retry follows its failure at once, with every other rule kept
    (attempts, budget, time limits): a suite testing listeners that retry
    need not wait for their back-off, as with stamina's ``set_testing``.
    Kept across :func:`reset`: a suite sets it once.

    Raises:
        TypeError: ``enabled`` is not a bool.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    state.retry_waits = enabled


def reset() -> None:
    """
    Start patchboard's process-wide state afresh, for a test: every circuit
    breaker is forgotten (names can be reused; shared Redis state is left
    alone, call ``breaker.reset()`` for that) and its Redis clients closed,
    the short-term queue and the parsed settings are rebuilt on next use,
    the outcome counters are zeroed and observers removed. Listeners stay
    connected.
    """
    state.reset()


class VirtualClock:
    """
    A clock for tests that moves only when told to, or, while installed, when
    the event loop has nothing left to do but wait for a timer.

    Picture a stopwatch the test holds. Called, it returns the current virtual
    time in seconds; :meth:`advance` and :meth:`set` move it forward, never
    back. Installed with ``with VirtualClock() as clock:``, it becomes
    patchboard's clock: a dispatch's ``deadline``, the short-term queue's
    waits, expiry and scaling, an outcome's ``elapsed`` and the in-process
    circuit breakers (``retry_at``, ``reset_timeout``) all read it, and so does
    the event loop running the ``with`` (its ``time()``: ``anyio.sleep``,
    ``asyncio.timeout``, the cancel scopes of time limits). The breakers read
    :meth:`wall`, POSIX seconds a fixed offset from the virtual time. (A Redis
    breaker decides on the Redis server's clock, which no test can move.)
    ``wall_start`` is the POSIX time the clock starts at (the real time now,
    by default).

    With ``autojump`` (the default), as trio's ``MockClock(autojump_threshold=0)``:
    when the loop has no callback ready and no I/O event, time jumps to its
    next timer at once, so a test of a one-hour expiry runs in milliseconds
    and times come out exact. Without it, time moves only through
    :meth:`advance` and :meth:`set` (the loop wakes up to run the timers that
    came due).

    ::

        async def test_a_slow_carrier_ends_as_a_timeout():
            with VirtualClock() as clock:
                started = clock()
                [outcome] = await quote_requested.collect_async(sender=Cart, deadline=2)
                assert outcome.status == "timeout"
                assert clock() - started == 2

    A clock not installed is passive: pass it as ``clock=`` to a
    :class:`~patchboard.CircuitBreaker` and :meth:`advance` it by hand.

    What stays on real time, and why:

    * While a listener thread runs a sync listener's call (or a call waits for
      one; an abandoned thread included), the loop may be woken by that thread
      at any moment, so time does not jump: it passes at real speed, as long
      as the loop waits. A sync listener's time limit therefore takes real
      seconds: keep such limits short, or release the thread.
    * Threads the clock does not see: asgiref's ``sync_to_async`` (a sync
      listener with neither a ``timeout`` nor ``thread_sensitive=False``) and
      I/O the loop awaits (a Redis store, a database driver's socket) while a
      timer is set: an idle loop jumps to the timer before their answer. Use
      ``autojump=False`` there, and advance by hand.
    * Event loops other than the one running the ``with``: the sync twins'
      (``collect()``, ``send_sync()``) run theirs in a thread of their own,
      on real time, and a sync listener's limit outside any loop is a real
      wait. Install the clock in an async test.

    Only asyncio's selector event loops can be driven (the default loop on
    every platform but Windows).

    Raises:
        ValueError: ``start`` is negative.
        RuntimeError: on installing, see :meth:`__enter__`.
    """

    __slots__ = (
        "_autojump",
        "_installed",
        "_lock",
        "_loop",
        "_now",
        "_offset",
        "_thread",
    )

    def __init__(
        self, start: float = 1_000_000.0, *, wall_start: float | None = None, autojump: bool = True
    ) -> None:
        if start < 0:
            raise ValueError(f"start must be >= 0 seconds, got {start!r}")
        self._now = float(start)
        self._offset = (time.time() if wall_start is None else wall_start) - self._now
        self._autojump = autojump
        self._lock = threading.Lock()
        self._installed: _Installed | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def __call__(self) -> float:
        return self._now

    def __repr__(self) -> str:
        mode = "autojump" if self._autojump else "manual"
        where = "installed" if self._installed is not None else "passive"
        return f"<VirtualClock {self._now:.3f} {mode}, {where}>"

    def wall(self) -> float:
        """The virtual time as POSIX seconds (what the in-process breakers read)."""
        return self._now + self._offset

    def advance(self, seconds: float) -> None:
        """Move time forward; the loop the clock drives runs the timers that came due.

        Raises:
            ValueError: ``seconds`` is negative (time does not go back).
        """
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._move(self._now + seconds)

    def set(self, now: float) -> None:
        """Jump to ``now``; the loop the clock drives runs the timers that came due.

        Raises:
            ValueError: ``now`` is before the current time.
        """
        if now < self._now:
            raise ValueError(f"now must be >= the current time {self._now!r}, got {now!r}")
        self._move(float(now))

    def _move(self, now: float) -> None:
        with self._lock:
            self._now = max(self._now, now)
        loop = self._loop
        if loop is not None and threading.get_ident() != self._thread:
            # From another thread (a listener's), the loop may be asleep in its
            # selector until a timer that is now due: wake it.
            with contextlib.suppress(RuntimeError):  # its loop is closed
                loop.call_soon_threadsafe(_nothing)

    # -- installing ----------------------------------------------------------------

    def __enter__(self) -> VirtualClock:
        """
        Install the clock as patchboard's, and as the running event loop's if
        the ``with`` runs in one.

        Raises:
            RuntimeError: a virtual clock is installed already, the running
                loop is not a selector event loop, or the clock reads 2**22
                seconds or more (asyncio's timers need a finer float).
        """
        if _clock.now is not time.monotonic or self._installed is not None:
            raise RuntimeError("a VirtualClock is installed already: install one at a time")
        if self._now >= _LOOP_RANGE:
            # asyncio runs a timer due within its clock's resolution (1 ns);
            # past 2**22 s a float's step is coarser, and a timer due now never runs.
            raise RuntimeError(
                f"an installed VirtualClock must read less than {_LOOP_RANGE:.0f} seconds, "
                f"got {self._now!r}: use wall_start= for the dates"
            )
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        selector: Any = getattr(loop, "_selector", None)
        if loop is not None and selector is None:
            raise RuntimeError(f"VirtualClock drives asyncio's selector event loops, not {loop!r}")
        installed = _Installed(loop, selector)
        if loop is not None:
            real_select = selector.select
            loop.time = self  # type: ignore[method-assign]  # the point: the loop reads this clock
            selector.select = functools.partial(self._select, real_select)
        self._loop = loop
        self._thread = threading.get_ident()
        self._installed = installed
        _clock.now, _clock.wall = self, self.wall
        return self

    def __exit__(self, *exc_info: object) -> None:
        installed = self._installed
        if installed is None:
            return
        _clock.now, _clock.wall = time.monotonic, time.time
        if installed.loop is not None:
            # The instance attributes go: the class's methods show through again.
            del installed.loop.time
            del installed.selector.select
        self._installed = None
        self._loop = None

    def _select(self, real_select: Callable[[float | None], Any], timeout: float | None) -> Any:
        """The driven loop's selector: wait for real, or jump to the next timer."""
        if not self._autojump or timeout is None or timeout <= 0:
            # Manual time, or no timer to jump to, or work ready: wait as asked.
            return real_select(timeout)
        if _threads_running():
            # A listener thread may wake the loop at any moment: time passes at
            # real speed while the loop waits for it.
            started = time.monotonic()
            events = real_select(timeout)
            with self._lock:
                self._now += min(timeout, time.monotonic() - started)
            return events
        # A listener thread wakes its caller before it counts as idle
        # (patchboard._threads): no wake-up can still be on its way here.
        events = real_select(0)
        if not events:
            with self._lock:
                self._now += timeout
        return events


_LOOP_RANGE: float = 2**22
"""An installed clock reads less than this: a float then still steps finer than 1 ns."""


@dataclass(frozen=True, slots=True)
class _Installed:
    loop: asyncio.AbstractEventLoop | None
    selector: Any


def _threads_running() -> bool:
    """Whether a listener thread runs a call, or a call waits for one."""
    threads: ListenerThreads | None = state.threads
    if threads is None:
        return False
    stats = threads.statistics()
    return stats.busy > 0 or stats.waiting > 0


def _nothing() -> None:
    pass
