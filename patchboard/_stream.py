"""
A streaming collect: each listener call's outcome as soon as the call ends.

``signal.stream_async(sender, deadline=..., **kwargs)`` starts every
listener call at once, each as a task owned by the stream, and yields each
:class:`~patchboard.Outcome` as its call ends, whether it went through the
short-term queue or not. Leaving the stream early — ``break``, an exception
in the loop, the request cancelled — cancels and withdraws every call still
pending: nothing outlives it, and every call still ends as exactly one
counted outcome (the cancelled ones as ``"cancelled"``)::

    async with quote_requested.stream_async(sender=Cart, cart=cart, deadline=1.0) as quotes:
        async for outcome in quotes:
            if outcome.ok:
                return outcome.value  # the first quote wins; the others are cancelled

Used in a plain ``async for`` (no ``async with``), the stream cancels its
pending calls the moment it is dropped; ``async with`` also waits, as it
exits, until they have ended.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import weakref
from collections import deque
from collections.abc import Coroutine
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from patchboard import _deadline
from patchboard._dispatch import end_span, listener_errors, open_span, wait_through_cancellation
from patchboard._ledger import ledger
from patchboard._outcomes import Collected, Outcome
from patchboard._run import QUEUE, Dispatch, InOwnContext, placement, run_async
from patchboard._state import state

if TYPE_CHECKING:
    from patchboard._instrument import Span
    from patchboard._listeners import Listener


class Stream:
    """
    The outcomes of one dispatch, in the order the calls end (see the module
    docstring). Made by :meth:`patchboard.Signal.stream_async`.
    """

    _dispatch: Dispatch
    _started: bool
    _pending: set[asyncio.Task[Any]]
    _ended: deque[Outcome]
    _failure: BaseException | None
    _wakeup: asyncio.Future[None] | None
    _seen: list[Outcome]
    _observed: bool
    _traced: tuple[contextvars.Context, AbstractContextManager[object], Span] | None
    """A traced stream's span, once current: the context it is current in, what
    makes it current there, and the span itself."""

    def __init__(self) -> None:
        raise TypeError("a Stream is made by Signal.stream_async()")

    @classmethod
    def _of(cls, dispatch: Dispatch) -> Stream:
        """The (not yet started) stream of ``dispatch``."""
        self = object.__new__(cls)
        self._dispatch = dispatch
        self._started = False
        self._pending = set()
        self._ended = deque()
        self._failure = None
        self._wakeup = None
        self._seen = []
        self._observed = False
        self._traced = None
        return self

    def __repr__(self) -> str:
        started = f"{len(self._pending)} pending" if self._started else "not started"
        return f"<Stream of {len(self._dispatch.listeners)} listeners, {started}>"

    # -- iterating -------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Outcome:
        """
        The next outcome, as soon as a call ends.

        Raises:
            StopAsyncIteration: every call has ended (or the stream was closed).
            ListenerErrors: every call has ended, and those of the listeners
                whose ``on_error`` is ``"group"`` that failed (each was
                yielded first) are raised together, once.
            Exception: the error of a listener whose ``on_error`` is
                ``"raise"``, after the other calls were cancelled.
        """
        if not self._started:
            self._start()
        try:
            while not self._ended and self._failure is None:
                if not self._pending:
                    self._observe()
                    dispatch = self._dispatch
                    if dispatch.grouped:
                        dispatch.grouped = False  # raised once: the stream is over
                        raise listener_errors(dispatch, Collected(self._seen))
                    raise StopAsyncIteration
                self._wakeup = asyncio.get_running_loop().create_future()
                await self._wakeup
        except asyncio.CancelledError:
            await self.aclose()  # the request went away: take every call with it
            raise
        if self._failure is not None:
            await self.aclose()
            raise self._failure
        outcome = self._ended.popleft()
        self._seen.append(outcome)
        if outcome.propagate:
            await self.aclose()
            assert outcome.error is not None
            raise outcome.error
        return outcome

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel every call still pending, and wait until each has ended."""
        self._started = True  # a stream closed before it started never starts
        pending = list(self._pending)
        for task in pending:
            task.cancel()
        await wait_through_cancellation(pending)
        self._ended.clear()
        self._observe()

    def __del__(self) -> None:
        # Dropped mid-way (a plain ``async for`` left by break or an
        # exception): no call may outlive the stream.
        for task in getattr(self, "_pending", ()):  # not made by _of(): nothing pending
            task.cancel()

    # -- running ---------------------------------------------------------------

    def _start(self) -> None:
        # The tasks hold the stream only weakly: a plain ``async for`` left
        # by break drops the last reference to it, and __del__ cancels them.
        self._started = True
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        dispatch = self._dispatch
        context.run(_deadline.enter, dispatch.deadline)
        dispatch.budgeted = context.run(_deadline.current) is not None
        if dispatch.traced is not None:
            # The stream's span, current in the context its calls' tasks copy; left
            # (in the same context) when the stream ends, in _observe.
            span = context.run(open_span, dispatch)
            current = span.current()
            context.run(current.__enter__)
            self._traced = (context, current, span)
        ledger.submitted(len(dispatch.listeners))
        me = weakref.ref(self)
        coros: list[Coroutine[Any, Any, Any]]
        if dispatch.ordered:
            coros = [_in_order(dispatch, me)]
        else:
            coros = [_call(listener, dispatch) for listener in dispatch.listeners]
        ended = functools.partial(_ended, me)
        for coro in coros:
            # A copy per task: listener calls share no context (see patchboard._run).
            task = asyncio.Task(coro, loop=loop, context=context.copy(), eager_start=True)
            if task.done():
                ended(task)
            else:
                self._pending.add(task)
                task.add_done_callback(ended)

    def _ended_task(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if task.cancelled():
            return  # the stream cancelled it: the call counted itself as cancelled
        failure = task.exception()
        if failure is not None:
            self._failure = failure  # KeyboardInterrupt and the like
        elif not self._dispatch.ordered:
            self._ended.append(task.result())
        self._wake()

    def _deliver(self, outcome: Outcome) -> None:
        self._ended.append(outcome)
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _observe(self) -> None:
        if not self._observed and self._started:
            self._observed = True
            dispatch = self._dispatch
            for observer in state.observers:
                observer(dispatch.signal, dispatch.sender, self._seen)
            if self._traced is not None:
                context, current, span = self._traced
                context.run(current.__exit__, None, None, None)
                seen = self._seen
                error = self._failure or next((o.error for o in seen if o.propagate), None)
                hit = any(getattr(outcome.error, "deadline", False) for outcome in seen)
                collected = None if error is not None else Collected(seen, deadline_hit=hit)
                end_span(span, collected, error)


def _call(listener: Listener, dispatch: Dispatch) -> Coroutine[Any, Any, Outcome]:
    # Every call is a task of the stream's (none runs in a batch): through the
    # queue where its place says so, else on its own.
    queue = dispatch.queue
    if queue is not None and placement(listener, False, True) is QUEUE:
        return queue._run(dispatch.call(listener))
    return run_async(listener, dispatch)


def _ended(stream: weakref.ReferenceType[Stream], task: asyncio.Task[Any]) -> None:
    found = stream()
    if found is not None:
        found._ended_task(task)


async def _in_order(dispatch: Dispatch, stream: weakref.ReferenceType[Stream]) -> None:
    """An ordered signal's listeners, one at a time: each outcome goes out as it ends."""
    listeners = dispatch.listeners
    done = 0
    try:
        for listener in listeners:
            done += 1  # a call that is cancelled counts itself
            outcome = await InOwnContext(_call(listener, dispatch))
            found = stream()
            if found is None:
                break
            found._deliver(outcome)
            if outcome.propagate:
                break
    finally:
        dispatch.cancelled(listeners[done:])
