"""
The threads that run sync listener calls off the caller's thread.

A sync listener leaves the caller's thread when it has a ``timeout`` (a
thread can be waited for with a limit; a running function cannot be
interrupted), when it is connected with ``thread_sensitive=False``, and when
it goes through the short-term queue. Such a call runs in a worker thread of
its own, and each thread closes the Django database connections it opened,
so a listener never leaks one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import Any, Final

import anyio.to_thread
from django.db import connections

from patchboard._state import state

IDLE_THREAD_TIMEOUT: Final = 30.0
"""Seconds a worker thread waits for another call before it exits."""


def closing_connections(call: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap ``call`` so the Django DB connections its thread opened are closed after it."""

    def run() -> Any:
        try:
            return call()
        finally:
            for conn in connections.all(initialized_only=True):
                conn.close()

    return run


async def run_in_worker_thread(call: Callable[[], Any]) -> Any:
    """
    Run a sync call in one of anyio's worker threads.

    If the caller is cancelled (a ``timeout``), the thread cannot be stopped:
    it is abandoned, runs to its end, and closes the DB connections it opened.
    """
    return await anyio.to_thread.run_sync(closing_connections(call), abandon_on_cancel=True)


class WorkerThreads:
    """
    Daemon threads that run sync listener calls, reused from call to call.

    A thread goes back to the pool after each call and exits after
    :data:`IDLE_THREAD_TIMEOUT` without work. How many calls run at once is
    bounded by the callers (the short-term queue's workers), not here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[SimpleQueue[Callable[[], None]]] = []
        self._started = 0

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` in an idle thread, or in a new one."""
        with self._lock:
            if self._idle:
                self._idle.pop().put(job)
                return
            self._started += 1
            number = self._started
        inbox: SimpleQueue[Callable[[], None]] = SimpleQueue()
        threading.Thread(
            target=self._work, args=(inbox, job), name=f"patchboard-{number}", daemon=True
        ).start()

    def _work(self, inbox: SimpleQueue[Callable[[], None]], job: Callable[[], None]) -> None:
        while True:
            job()
            with self._lock:
                self._idle.append(inbox)
            try:
                job = inbox.get(timeout=IDLE_THREAD_TIMEOUT)
            except Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                # submit() took this thread just before the timeout: its job is in.
                job = inbox.get()


def worker_threads() -> WorkerThreads:
    """The process's worker threads."""
    threads = state.threads
    if threads is None:
        with state.lock:
            if state.threads is None:
                state.threads = WorkerThreads()
            threads = state.threads
    return threads  # type: ignore[no-any-return]
