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
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from patchboard import _deadline
from patchboard._call import Call
from patchboard._dispatch import wait_through_cancellation
from patchboard._listeners import InOwnContext, Listener
from patchboard._outcomes import Outcome
from patchboard._queue import ShortTermQueue
from patchboard._state import state

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal


class Stream:
    """
    The outcomes of one dispatch, in the order the calls end (see the module
    docstring). Made by :meth:`patchboard.Signal.stream_async`.
    """

    def __init__(
        self,
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
        listeners: Sequence[Listener],
        *,
        queue: ShortTermQueue | None,
        deadline: float | None,
        ordered: bool = False,
    ) -> None:
        self._signal = signal
        self._sender = sender
        self._kwargs = kwargs
        self._listeners = listeners
        self._queue = queue
        self._deadline = deadline
        self._ordered = ordered
        self._started = False
        self._pending: set[asyncio.Task[Any]] = set()
        self._ended: deque[Outcome] = deque()
        self._failure: BaseException | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._seen: list[Outcome] = []
        self._observed = False

    def __repr__(self) -> str:
        started = f"{len(self._pending)} pending" if self._started else "not started"
        return f"<Stream of {len(self._listeners)} listeners, {started}>"

    # -- iterating -------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Outcome:
        """
        The next outcome, as soon as a call ends.

        Raises:
            StopAsyncIteration: every call has ended (or the stream was closed).
            Exception: the error of a listener whose ``on_error`` is
                ``"raise"``, after the other calls were cancelled.
        """
        if not self._started:
            self._start()
        try:
            while not self._ended and self._failure is None:
                if not self._pending:
                    self._observe()
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
        for task in self._pending:
            task.cancel()

    # -- running ---------------------------------------------------------------

    def _start(self) -> None:
        # The tasks hold the stream only weakly: a plain ``async for`` left
        # by break drops the last reference to it, and __del__ cancels them.
        self._started = True
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        context.run(_deadline.enter, self._deadline)
        state.counts["submitted"] += len(self._listeners)
        me = weakref.ref(self)
        calls = [
            functools.partial(
                _call, listener, self._signal, self._sender, self._kwargs, self._queue
            )
            for listener in self._listeners
        ]
        coros = [_in_order(calls, me)] if self._ordered else [call() for call in calls]
        ended = functools.partial(_ended, me)
        for coro in coros:
            # A copy per task: listener calls share no context (see patchboard._listeners).
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
        elif not self._ordered:
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
            for observer in state.observers:
                observer(self._signal, self._sender, self._seen)


def _call(
    listener: Listener,
    signal: DjangoSignal,
    sender: Any,
    kwargs: dict[str, Any],
    queue: ShortTermQueue | None,
) -> Coroutine[Any, Any, Outcome]:
    if queue is not None and listener.options.mode != "background":
        return queue._run(Call(listener, signal, sender, kwargs))
    return listener._run_async(signal, sender, kwargs)


def _ended(stream: weakref.ReferenceType[Stream], task: asyncio.Task[Any]) -> None:
    found = stream()
    if found is not None:
        found._ended_task(task)


async def _in_order(
    calls: Sequence[Callable[[], Coroutine[Any, Any, Outcome]]],
    stream: weakref.ReferenceType[Stream],
) -> None:
    """An ordered signal's listeners, one at a time: each outcome goes out as it ends."""
    done = 0
    try:
        for call in calls:
            done += 1  # a call that is cancelled counts itself
            outcome = await InOwnContext(call())
            found = stream()
            if found is None:
                break
            found._deliver(outcome)
            if outcome.propagate:
                break
    finally:
        state.counts["cancelled"] += len(calls) - done
