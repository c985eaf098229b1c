"""
The threads that run sync listener calls off the caller's thread, under one
process-wide bound.

A sync listener leaves the caller's thread when it has a ``timeout`` (a
thread can be waited for with a limit; a running function cannot be
interrupted), when it is connected with ``thread_sensitive=False``, and when
it goes through the short-term queue. Such a call runs in a worker thread.

A worker thread treats Django's database connections the way Django's request
cycle treats a request's thread (``close_old_connections()``, connected to
``request_started`` and ``request_finished``, and ``reset_queries()``):
before and after each call, a connection past ``CONN_MAX_AGE`` or left
unusable is closed, and ``CONN_HEALTH_CHECKS`` checks a kept one again before
its next query. So with ``CONN_MAX_AGE=0`` (Django's default) each call
closes what it opened; with more, a thread keeps one connection per database
across calls, and a busy site holds at most ``MAX_THREADS`` of them instead
of opening one per call. A connection left inside a transaction is dropped
after the call. A thread closes its connections when it exits (idle for
``IDLE_THREAD_TIMEOUT``), and an abandoned thread when it returns.

Picture a rack of ``PATCHBOARD["MAX_THREADS"]`` hooks. A call takes a hook
before its thread starts (waiting, within its own time limit, if all are
taken) and the *thread* hangs it back when it returns — not the caller when it
stops waiting. A caller that stops waiting (its ``timeout``, its
cancellation) *abandons* the thread: the thread runs to its end and keeps its
hook meanwhile, and is counted and logged (under the events its caller
names: ``listener_thread_abandoned``, ``listener_thread_returned`` for a
listener's call, ``queue_thread_*`` for the short-term queue's). So live
listener threads, abandoned ones included, never outnumber the hooks,
however long a listener blocks.

The hooks are shared by every event loop of the process (the ASGI server's,
and the short-lived ones of ``async_to_sync``) and by plain threads (the sync
twins wait without a loop), so they are counted under a ``threading.Lock``
and each waiter is woken where it waits (``patchboard._waiter``).

This module knows nothing of signals, listeners or calls: it runs functions,
and a :class:`Job` carries what its logs say of whom it runs them for.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from time import perf_counter
from typing import Any, Final

from django.db import close_old_connections, connections, reset_queries

from patchboard._config import get_settings
from patchboard._log import log_limited
from patchboard._state import state
from patchboard._waiter import Waiter

IDLE_THREAD_TIMEOUT: Final = 30.0
"""Seconds a worker thread waits for another call before it exits."""


def _as_a_request(call: Callable[[], Any], job: Job) -> Callable[[], Any]:
    """
    Wrap ``call`` in what Django's ``request_started`` does to this thread's
    database connections (see the module docstring): the queries logged
    under ``DEBUG`` are cleared, and the connections gone stale while the
    thread waited are closed; after it, see :func:`_call_ended`.
    """

    def run() -> Any:
        reset_queries()
        close_old_connections()
        try:
            return call()
        finally:
            # Read without the lock: a caller that abandons the thread a moment
            # later finds a call that returned normally, whose connections are
            # what a call that returned in time leaves.
            _call_ended(abandoned=job.abandoned)

    return run


def _call_ended(*, abandoned: bool) -> None:
    """
    After a call: what ``request_finished`` does (keep this thread's
    connections for the next call unless past ``CONN_MAX_AGE``, left with
    autocommit off, or made unusable by an error), except that:

    - a connection still inside an atomic block (the listener entered one and
      never left it; an exception inside ``transaction.atomic()`` rolls back
      and leaves it) is closed, so the server rolls its transaction back, and
      its wrapper is dropped: the next call gets a fresh one, where this one
      would still think it is inside the block;
    - an abandoned call's connections are closed. Its caller gave up on it,
      usually because what the listener waited for (often the database
      itself: a lock, a slow statement) held it past its limit. Whatever it
      left on the connection (session settings, locks, a statement its driver
      timed out on while the server still runs it) is the least trustworthy
      state to hand the thread's next caller, and closing it frees a backend
      of a database that may be the one overloaded. Abandonment is rare: one
      reconnection costs little.
    """
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            conn.close()
            del connections[conn.alias]
        elif abandoned:
            conn.close()
        else:
            conn.close_if_unusable_or_obsolete()


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadStatistics:
    """
    A snapshot of the listener threads (see :func:`patchboard.thread_stats`).

    ``limit`` is ``PATCHBOARD["MAX_THREADS"]``; ``busy`` the threads running a
    listener call, abandoned ones included; ``waiting`` the calls waiting for
    a thread. ``abandoned`` counts the calls whose caller stopped waiting
    before their thread returned (since start-up); ``abandoned_running``,
    those still running.
    """

    limit: int
    busy: int
    waiting: int
    abandoned: int
    abandoned_running: int


class Job:
    """
    One sync call running (or about to run) in a worker thread, for a caller
    the threads know only by what their logs say of it: ``key``, the log
    limiter's key (a burst of one caller's abandoned threads is logged once),
    ``fields``, the key/values its log events carry, and ``events``, the
    names of those events (abandoned by its caller, returned after that).
    """

    __slots__ = (
        "abandoned",
        "error",
        "events",
        "fields",
        "finished",
        "key",
        "on_abandon",
        "on_return",
        "result",
        "returned",
        "started",
    )

    def __init__(self, key: Hashable, fields: dict[str, Any], events: tuple[str, str]) -> None:
        self.key = key
        self.fields = fields
        self.events = events
        self.finished: Waiter | None = None
        """Woken when the thread returns (not once its caller abandoned it)."""
        self.on_abandon: Callable[[], None] = _nothing
        self.on_return: Callable[[], None] = _nothing
        """Called when an abandoned thread returns."""
        self.result: Any = None
        self.error: BaseException | None = None
        self.returned = False
        self.abandoned = False
        self.started = 0.0


def _nothing() -> None:
    pass


_Inbox = SimpleQueue[tuple[Job, Callable[[], None]]]
"""Where an idle worker thread waits for its next call."""


class ListenerThreads:
    """The process's listener threads under their bound (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._busy = 0
        self._waiters: deque[Waiter] = deque()
        self._abandoned = 0
        self._abandoned_running = 0
        self._idle: list[_Inbox] = []
        self._started = 0

    def __repr__(self) -> str:
        return (
            f"<ListenerThreads {self._busy}/{self.limit} busy, {len(self._waiters)} waiting, "
            f"{self._abandoned_running} abandoned>"
        )

    def statistics(self) -> ThreadStatistics:
        with self._lock:
            return ThreadStatistics(
                limit=self.limit,
                busy=self._busy,
                waiting=len(self._waiters),
                abandoned=self._abandoned,
                abandoned_running=self._abandoned_running,
            )

    # -- running ----------------------------------------------------------------

    async def run(self, fn: Callable[[], Any], job: Job) -> Any:
        """
        Run ``fn`` in a worker thread from async code, as ``job``; its result.

        Waits for a free thread first. If this call is cancelled (a time
        limit) after the thread started, the thread is abandoned: it runs to
        its end and keeps its place in the bound meanwhile.

        Raises:
            BaseException: whatever ``fn`` raised, or this call's cancellation.
        """
        loop = asyncio.get_running_loop()
        await self._take_async(loop)
        finished = job.finished = Waiter(loop)
        self._start(job, fn)
        try:
            await finished.wait()
        except BaseException:
            self._abandon(job)
            raise
        return _result(job)

    def start(self, fn: Callable[[], Any], job: Job, timeout: float | None) -> bool:
        """
        Start ``fn`` in a worker thread from sync code, as ``job``, waiting at
        most ``timeout`` seconds for a free thread; False if none freed up.
        """
        if not self._take_sync(timeout):
            return False
        job.finished = Waiter(None)
        self._start(job, fn)
        return True

    def wait(self, job: Job, timeout: float | None) -> tuple[bool, Any]:
        """
        Wait at most ``timeout`` seconds for a job :meth:`start` started:
        ``(True, result)``, or ``(False, None)`` and the thread is abandoned.

        Raises:
            BaseException: whatever the job's function raised.
        """
        assert job.finished is not None
        if job.finished.wait_blocking(timeout) or not self._abandon(job):
            return True, _result(job)
        return False, None

    def _start(self, job: Job, fn: Callable[[], Any]) -> None:
        context = contextvars.copy_context()
        run = _as_a_request(fn, job)

        def work() -> None:
            job.started = perf_counter()
            try:
                job.result = context.run(run)
            except BaseException as exc:
                job.error = exc

        self._submit(job, work)

    def _returned(self, job: Job, inbox: _Inbox) -> None:
        with self._lock:
            job.returned = True
            abandoned = job.abandoned
            if abandoned:
                self._abandoned_running -= 1
            # Idle before its place in the bound is free: the call that takes
            # the place takes this thread too, rather than starting another
            # one (with connections of its own) while this one is on its way
            # back. So live threads, and their kept connections, stay within
            # the bound.
            self._idle.append(inbox)
        # The caller is woken before the place is free: whoever sees no busy
        # thread (a VirtualClock about to jump to its next timer) finds the
        # wake-up already on the caller's loop.
        if abandoned:
            job.on_return()
        else:
            assert job.finished is not None
            job.finished.wake()
        with self._lock:
            self._give_back()
        if abandoned:
            ran = round(perf_counter() - job.started, 6)
            log_limited("debug", job.events[1], job.key, **job.fields, ran_s=ran)

    def _abandon(self, job: Job) -> bool:
        """The caller stopped waiting: abandon the thread, unless it returned already (False)."""
        with self._lock:
            if job.returned:
                return False
            job.abandoned = True
            self._abandoned += 1
            self._abandoned_running += 1
            running = self._abandoned_running
        job.on_abandon()
        log_limited("warning", job.events[0], job.key, **job.fields, abandoned_running=running)
        return True

    # -- the bound ----------------------------------------------------------------

    async def _take_async(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._busy < self.limit and not self._waiters:
                self._busy += 1
                return
            waiter = Waiter(loop)
            self._waiters.append(waiter)
        try:
            await waiter.wait()
        except BaseException:
            self._withdraw(waiter)
            raise

    def _take_sync(self, timeout: float | None) -> bool:
        with self._lock:
            if self._busy < self.limit and not self._waiters:
                self._busy += 1
                return True
            waiter = Waiter(None)
            self._waiters.append(waiter)
        if waiter.wait_blocking(timeout):
            return True
        self._withdraw(waiter)
        return False

    def _withdraw(self, waiter: Waiter) -> None:
        """A waiter gave up: leave the line, or hand on the thread it was given meanwhile."""
        with self._lock:
            if waiter.woken:  # woken only to be given a thread
                self._give_back()
            else:
                self._waiters.remove(waiter)

    def _give_back(self) -> None:
        # Under the lock: a thread is free; the oldest waiter takes it.
        if self._waiters:
            self._waiters.popleft().wake()
        else:
            self._busy -= 1

    # -- the OS threads --------------------------------------------------------------

    def _submit(self, job: Job, work: Callable[[], None]) -> None:
        """Run ``work`` (``job``'s call) in an idle worker thread, or in a new one."""
        with self._lock:
            if self._idle:
                self._idle.pop().put((job, work))
                return
            self._started += 1
            number = self._started
        inbox: _Inbox = SimpleQueue()
        threading.Thread(
            target=self._work, args=(inbox, job, work), name=f"patchboard-{number}", daemon=True
        ).start()

    def _work(self, inbox: _Inbox, job: Job, work: Callable[[], None]) -> None:
        while True:
            work()
            self._returned(job, inbox)
            try:
                job, work = inbox.get(timeout=IDLE_THREAD_TIMEOUT)
            except Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        break
                # _submit() took this thread just before the timeout: its job is in.
                job, work = inbox.get()
        # Idle too long: the connections it kept would outlive their use.
        connections.close_all()


def _result(job: Job) -> Any:
    if job.error is not None:
        raise job.error
    return job.result


def listener_threads() -> ListenerThreads:
    """The process's listener threads, bounded by ``PATCHBOARD["MAX_THREADS"]``."""
    threads = state.threads
    if threads is None:
        limit = get_settings().max_threads
        with state.lock:
            if state.threads is None:
                state.threads = ListenerThreads(limit)
            threads = state.threads
    return threads


def thread_stats() -> ThreadStatistics:
    """Statistics of the process's listener threads (see :class:`ThreadStatistics`)."""
    return listener_threads().statistics()
