"""
Running the listeners of one dispatch: concurrently, in order, or inline.

Concurrent dispatch starts every listener as an *eagerly started* task owned
by the call. A listener that finishes without suspending (a cache hit, a
no-op) never reaches the event loop, so it costs about a microsecond instead
of the ~10 microseconds of a scheduled task; one that suspends keeps running
as a task that the call waits for, cancels when the call is cancelled or
when a sibling's error must propagate, and never leaves behind. That is the
guarantee of an anyio task group, without its per-task cost (about 100 us for
ten no-op listeners in an anyio task group, 6 us as eager tasks: ``make bench``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from asgiref.sync import sync_to_async

from patchboard._call import Call
from patchboard._listeners import InOwnContext, Listener, run_here
from patchboard._outcomes import Collected, Outcome
from patchboard._queue import ShortTermQueue
from patchboard._state import state

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal


def in_caller(listener: Listener, budgeted: bool) -> bool:
    """
    Whether ``listener`` runs in the dispatching thread (a sync caller's, or
    the thread-sensitive one for an async caller), rather than as a call of
    its own: a background listener (its enqueue sees the caller's
    transaction), or a plain sync one — unless the dispatch has a deadline,
    which a thread that cannot be interrupted could not keep.
    """
    return listener._batchable and (not budgeted or listener.options.mode == "background")


def run_without_loop(
    listeners: Sequence[Listener],
    signal: DjangoSignal,
    sender: Any,
    kwargs: dict[str, Any],
    *,
    budgeted: bool = False,
    ordered: bool = False,
) -> list[Outcome]:
    """
    Run sync listeners from a sync caller without an event loop; their
    outcomes, in listener order.

    The listeners that leave the caller's thread (a ``timeout``,
    ``thread_sensitive=False``, a deadline) start first, each in a listener
    thread; the others run here meanwhile, in order (see ``run_here``: they
    stop after an error that must propagate); then each threaded call is
    waited for until its time limit, and past it abandoned (a ``"timeout"``).
    On an ``ordered`` signal they run one at a time instead, each waited for
    before the next starts.
    """
    if ordered:
        return _one_at_a_time(listeners, signal, sender, kwargs, budgeted=budgeted)
    threaded = {
        index: Call(listener, signal, sender, kwargs)
        for index, listener in enumerate(listeners)
        if not in_caller(listener, budgeted)
    }
    started = {index: call.start_in_thread() for index, call in threaded.items()}
    here_listeners = [lsn for lsn in listeners if in_caller(lsn, budgeted)]
    here = iter(run_here(here_listeners, signal, sender, kwargs))
    outcomes: list[Outcome] = []
    for index in range(len(listeners)):
        job = started.get(index)
        if job is None:
            if (outcome := next(here, None)) is not None:
                outcomes.append(outcome)
        elif isinstance(job, Outcome):
            outcomes.append(job)  # it could not start
        else:
            outcomes.append(threaded[index].finish_in_thread(job))
    return outcomes


def _one_at_a_time(
    listeners: Sequence[Listener],
    signal: DjangoSignal,
    sender: Any,
    kwargs: dict[str, Any],
    *,
    budgeted: bool,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    index = 0
    try:
        for listener in listeners:
            index += 1  # a call that is cancelled counts itself
            if in_caller(listener, budgeted):
                outcome = run_here((listener,), signal, sender, kwargs)[0]
            else:
                call = Call(listener, signal, sender, kwargs)
                job = call.start_in_thread()
                outcome = job if isinstance(job, Outcome) else call.finish_in_thread(job)
            outcomes.append(outcome)
            if outcome.propagate:
                break
    finally:
        state.counts["cancelled"] += len(listeners) - index
    return outcomes


async def run_concurrently(
    listeners: Sequence[Listener],
    signal: DjangoSignal,
    sender: Any,
    kwargs: dict[str, Any],
    queue: ShortTermQueue | None,
    *,
    budgeted: bool = False,
) -> list[Outcome]:
    """
    Run every listener at once; return their outcomes in listener order.

    Sync listeners that run on the thread-sensitive thread go there together,
    in one hop and in priority order, concurrently with the async listeners
    (Django's ``asend`` runs them *before* the async ones). With ``queue``,
    inline listeners go through the short-term queue instead; under a
    deadline (``budgeted``), each sync listener runs in a listener thread of
    its own, so the deadline can abandon it.
    """
    if queue is None:
        for listener in listeners:
            if listener._batchable:
                break
        else:  # all async: the common case, kept lean
            results = await supervise([lsn._run_async(signal, sender, kwargs) for lsn in listeners])
            return [outcome for outcome in results if outcome is not None]
    batch = [i for i, listener in enumerate(listeners) if _in_batch(listener, queue, budgeted)]
    batched = set(batch)
    coros: list[Coroutine[Any, Any, Any]] = []
    order: list[int] = []
    for index, listener in enumerate(listeners):
        if index in batched:
            continue
        order.append(index)
        if queue is not None:
            coros.append(queue._run(Call(listener, signal, sender, kwargs)))
        else:
            coros.append(listener._run_async(signal, sender, kwargs))
    if batch:
        in_thread = [listeners[i] for i in batch]
        coros.append(
            sync_to_async(run_here, thread_sensitive=True)(in_thread, signal, sender, kwargs)
        )
    results = await supervise(coros)
    outcomes: list[Outcome | None] = [None] * len(listeners)
    for index, result in zip(order, results, strict=False):
        outcomes[index] = result
    if batch and results[-1] is not None:
        for index, outcome in zip(batch, results[-1], strict=False):
            outcomes[index] = outcome
    return [o for o in outcomes if o is not None]


def _in_batch(listener: Listener, queue: ShortTermQueue | None, budgeted: bool) -> bool:
    if queue is not None:
        return listener.options.mode == "background"
    return in_caller(listener, budgeted)


async def run_in_order(
    listeners: Sequence[Listener],
    signal: DjangoSignal,
    sender: Any,
    kwargs: dict[str, Any],
    *,
    budgeted: bool = False,
) -> list[Outcome]:
    """
    Run listeners one at a time, in the given (priority) order.

    Consecutive sync listeners share one hop to the thread-sensitive thread
    (under a deadline, each runs as a call of its own). Each call runs in
    its own copy of the caller's context, as a concurrent one does in its
    task. Stops after an outcome that must propagate; the listeners after
    it, like those a cancellation keeps from starting, count as
    ``"cancelled"``.
    """
    outcomes: list[Outcome] = []
    index, count = 0, len(listeners)
    try:
        while index < count:
            end = index
            while end < count and in_caller(listeners[end], budgeted):
                end += 1
            if end > index:
                batch = listeners[index:end]
                index = end  # the batch's thread runs them all, even if this call is cancelled
                run = sync_to_async(run_here, thread_sensitive=True)
                outcomes.extend(await run(batch, signal, sender, kwargs))
            else:
                index += 1  # a call that is cancelled counts itself
                call = listeners[index - 1]._run_async(signal, sender, kwargs)
                outcomes.append(await InOwnContext(call))
            if outcomes and outcomes[-1].propagate:
                break
    finally:
        state.counts["cancelled"] += count - index
    return outcomes


Observer: TypeAlias = Callable[["DjangoSignal", Any, list[Outcome]], None]
"""Called with (signal, sender, outcomes) after every dispatch (``state.observers``)."""


def finish(
    signal: DjangoSignal, sender: Any, outcomes: list[Outcome], *, budgeted: bool = False
) -> Collected:
    """
    The dispatch's result: the outcomes, or the first error that must propagate.

    Raises:
        Exception: the error of the first listener (in listener order) whose
            ``on_error`` is ``"raise"``.
    """
    for observer in state.observers:
        observer(signal, sender, outcomes)
    for outcome in outcomes:
        if outcome.propagate:
            assert outcome.error is not None
            raise outcome.error
    if not budgeted:
        return Collected(outcomes)
    hit = any(getattr(outcome.error, "deadline", False) for outcome in outcomes)
    return Collected(outcomes, deadline_hit=hit)


def _must_stop(task: asyncio.Task[Any]) -> bool:
    if task.cancelled() or task.exception() is not None:
        return True
    result = task.result()
    if isinstance(result, list):
        return any(outcome.propagate for outcome in result)
    return bool(result.propagate)


async def supervise(coros: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """
    Run coroutines as eagerly started tasks owned by this call; return their results.

    The call returns when every task is done. If one ends with an outcome
    that must propagate (or an exception), the others are cancelled and
    awaited first. If the call itself is cancelled, every task is cancelled
    and awaited before the cancellation goes on: no task outlives the call.
    A task cancelled here has ``None`` as its result.

    Raises:
        BaseException: a task's own ``BaseException`` (``KeyboardInterrupt``...),
            or the call's cancellation.
    """
    loop = asyncio.get_running_loop()
    tasks = []
    pending: set[asyncio.Task[Any]] = set()
    stop = False
    for coro in coros:
        task = asyncio.Task(coro, loop=loop, eager_start=True)
        tasks.append(task)
        if not task.done():
            pending.add(task)
    if pending:
        stop = any(_must_stop(task) for task in tasks if task.done())
        if not stop:
            stop = await _wait(pending, tasks)
    if not stop:
        try:
            # An outcome that must propagate is raised by finish(), in listener order.
            return [task.result() for task in tasks]
        except BaseException:
            pass  # a task failed eagerly: clean up and raise below
    leftover = [task for task in tasks if not task.done()]
    for task in leftover:
        task.cancel()
    await wait_through_cancellation(leftover)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return [None if task.cancelled() else task.result() for task in tasks]


async def _wait(pending: set[asyncio.Task[Any]], tasks: list[asyncio.Task[Any]]) -> bool:
    """Wait until every pending task is done (False), or one must stop the dispatch (True)."""
    waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_done(task: asyncio.Task[Any]) -> None:
        pending.discard(task)
        if waiter.done():
            return
        if _must_stop(task):
            waiter.set_result(True)
        elif not pending:
            waiter.set_result(False)

    for task in pending:
        task.add_done_callback(on_done)
    try:
        return await waiter
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await wait_through_cancellation(tasks)
        raise
    finally:
        for task in tasks:
            task.remove_done_callback(on_done)


async def wait_through_cancellation(tasks: list[asyncio.Task[Any]]) -> None:
    """
    Wait for cancelled tasks to finish, even if this call is cancelled again
    meanwhile (anyio re-delivers a cancellation on every checkpoint); a
    cancellation received here is raised once they are done.
    """
    cancelled = False
    while True:
        remaining = [task for task in tasks if not task.done()]
        if not remaining:
            break
        try:
            await asyncio.wait(remaining)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
