"""
The dispatch engine: running the listeners of one :class:`~patchboard._run.Dispatch`.

A verb of ``patchboard.Signal`` builds its dispatch and hands it here, to
:func:`dispatch_async` or :func:`dispatch_sync` (Django's verbs on an ordered
signal: :func:`send_in_order`, :func:`asend_in_order`); control goes down,
through the runners below to the listener calls, and comes back only as the
result. Each listener's place (``patchboard._run.placement``) says how its
call runs: concurrently, in order, or inline.

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
import contextvars
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, Literal, TypeAlias

from asgiref.sync import async_to_sync, sync_to_async
from django.core.exceptions import ImproperlyConfigured

from patchboard import _clock, _deadline
from patchboard._call import failure_status
from patchboard._config import get_settings
from patchboard._django import log_robust_failure
from patchboard._exceptions import ListenerErrors, SyncCallInEventLoop
from patchboard._instrument import Span
from patchboard._ledger import ledger
from patchboard._listeners import Listener, errors_raise
from patchboard._log import signal_label
from patchboard._outcomes import Collected, Outcome, Returned, Status, new_outcome
from patchboard._queue import ShortTermQueue, get_queue
from patchboard._run import (
    HERE,
    QUEUE,
    Dispatch,
    InOwnContext,
    placement,
    run_async,
    run_here,
)
from patchboard._state import state

QueueChoice: TypeAlias = Literal["auto"] | bool
Responses: TypeAlias = list[tuple[Callable[..., Any], Any]]


def check_no_loop(method: str) -> None:
    """
    Raises:
        SyncCallInEventLoop: a sync verb was called from a thread running an event loop.
    """
    if asyncio._get_running_loop() is not None:
        raise SyncCallInEventLoop(method)


def queue_for(choice: QueueChoice, count: int, *, ordered: bool) -> ShortTermQueue | None:
    """
    The short-term queue a dispatch to ``count`` listeners uses for ``choice``, or None.

    Raises:
        ImproperlyConfigured: ``queue=True`` on an ordered signal.
        ValueError: ``choice`` is not ``"auto"``, True or False.
    """
    if choice is True:
        if ordered:
            raise ImproperlyConfigured(
                "queue=True: an ordered signal runs its listeners one at a time, "
                "in priority order, never through the short-term queue"
            )
    elif choice == "auto":
        if ordered or count <= get_settings().collect_queue_threshold:
            return None
    elif choice is False:
        return None
    else:
        raise ValueError(f"queue must be 'auto', True or False, got {choice!r}")
    return get_queue()


# -- the verbs' engine ---------------------------------------------------------------


async def dispatch_async(dispatch: Dispatch) -> Collected:
    """
    Run an async verb's dispatch: every listener, concurrently (one at a
    time on an ordered signal), under its deadline; its result (see :func:`finish`).
    """
    if not dispatch.listeners:
        return Collected([])
    if dispatch.traced is not None and dispatch.span is None:
        return await _traced_async(dispatch)
    ledger.submitted(len(dispatch.listeners))
    if dispatch.deadline is None:  # the inherited deadline, if any: no context to set
        outcomes = await _outcomes_async(dispatch)
    else:
        with _deadline.budget(dispatch.deadline):
            outcomes = await _outcomes_async(dispatch)
    if isinstance(outcomes, Returned):  # run_plain's: every call returned, none propagates
        if not state.observers:
            return outcomes  # finish's answer, without the call
        outcomes = list(outcomes)
    return finish(dispatch, outcomes)


def _outcomes_async(dispatch: Dispatch) -> Awaitable[list[Outcome] | Returned]:
    # The runner's coroutine, awaited by the caller: no coroutine of its own
    # in between (here and in run_concurrently: one frame less per level).
    dispatch.budgeted = _deadline.current() is not None
    if dispatch.ordered:
        return run_in_order(dispatch)
    return run_concurrently(dispatch)


def dispatch_sync(dispatch: Dispatch) -> Collected:
    """
    Run a sync verb's dispatch: without an event loop when every listener's
    place allows it and no queue is used, else through asgiref's
    ``async_to_sync`` (see ``Signal.send_sync``); its result.
    """
    if not dispatch.listeners:
        return Collected([])
    if dispatch.deadline is not None:
        with _deadline.budget(dispatch.deadline):
            # Entered: what runs from here (an event loop too) inherits it with this context.
            dispatch.deadline = None
            return dispatch_sync(dispatch)
    if dispatch.traced is not None and dispatch.span is None:
        return _traced_sync(dispatch)
    budgeted = dispatch.budgeted = _deadline.in_force() is not None
    resolved = dispatch.resolved
    if dispatch.queue is not None or not resolved.loopless[budgeted]:
        return async_to_sync(dispatch_async)(dispatch)
    refs = resolved.plain_refs
    if refs is not None and not budgeted and not ledger.observers and dispatch.traced is None:
        return dispatch_plain(dispatch, refs)
    ledger.submitted(len(dispatch.listeners))
    if not resolved.here or budgeted:
        return finish(dispatch, run_without_loop(dispatch))
    outcomes = run_here(dispatch.listeners, dispatch)
    # It stops after the first outcome that must propagate: only the last can.
    if outcomes and outcomes[-1].propagate:
        dispatch.stopped = True
    elif not state.observers and not dispatch.grouped:
        return Collected(outcomes)  # finish's answer, without the call
    else:
        dispatch.stopped = False
    return finish(dispatch, outcomes)


def dispatch_plain(dispatch: Dispatch, refs: tuple[Callable[[], Any], ...]) -> Collected:
    """
    :func:`dispatch_sync` for a dispatch whose listeners a sync caller all
    calls itself (``Resolved.plain_refs``, ``refs``), with no deadline in
    force, no instrument active and nobody observing the ledger: the sync
    twins' hot path.

    One clock reading, one context copy and no frame of ours per listener;
    the calls submitted and counted at once; when every call returned, their
    outcomes built only if they are read (``_outcomes.Returned``). A listener
    that raised, or whose function is gone, is settled through its ``Call``
    and the listeners after it run through :func:`run_here`; dispatch
    observers see the outcomes through :func:`finish`.

    Raises:
        Exception: as :func:`finish`.
    """
    apply, arguments = dispatch.apply, dispatch.arguments
    # Each call's outcome as the tuple of its fields, in order (a Returned makes them
    # Outcomes if they are read: ok_outcome(func, value, elapsed), inlined).
    fields: list[tuple[Any, ...]] = []
    append = fields.append
    copy_context = contextvars.copy_context
    now = _clock.now
    error: BaseException | None = None
    started = now()
    for ref in refs:
        if (func := ref()) is None:
            break
        try:
            value = copy_context().run(apply, func, arguments)
        except BaseException as exc:
            error = exc
            break
        ended = now()
        append((func, "ok", value, None, ended - started, None, False, 1, False))
        started = ended
    returned = len(fields)
    if returned == len(refs):
        ledger.returned(returned)
        if not state.observers:
            return Returned(fields)  # finish's answer, without the call
        dispatch.stopped = False
        return finish(dispatch, list(Returned(fields)))
    outcomes = list(Returned(fields))
    if returned:
        ledger.returned(returned)
    listeners = dispatch.listeners
    ledger.submitted(len(listeners) - returned)
    call = dispatch.call(listeners[returned], started)
    try:
        outcome = call.gone() if error is None else call.failed_sync(error)
    except BaseException:
        # It counted its own cancellation; the ones after it never ran.
        dispatch.cancelled(listeners[returned + 1 :])
        raise
    outcomes.append(outcome)
    if outcome.propagate:
        dispatch.cancelled(listeners[returned + 1 :])
        dispatch.stopped = True
        return finish(dispatch, outcomes)
    outcomes += run_here(listeners[returned + 1 :], dispatch)
    # run_here stops after the first outcome that must propagate: only the last can.
    if outcomes[-1].propagate:
        dispatch.stopped = True
    elif not state.observers and not dispatch.grouped:
        return Collected(outcomes)
    else:
        dispatch.stopped = False
    return finish(dispatch, outcomes)


def open_span(dispatch: Dispatch) -> Span:
    """Open the span of a traced dispatch (``dispatch.span``), as it starts."""
    assert dispatch.traced is not None
    deadline = dispatch.deadline
    if deadline is None:
        deadline = _deadline.remaining()
    span = dispatch.span = dispatch.traced.dispatch(
        dispatch.signal, deadline, len(dispatch.listeners)
    )
    return span


def end_span(span: Span, collected: Collected | None, error: BaseException | None) -> None:
    """End a dispatch's span with its result, or the error that ended it."""
    if collected is None:
        span.end("error", error)
    else:
        span.end("ok", None, {"patchboard.deadline_hit": collected.deadline_hit})


async def _traced_async(dispatch: Dispatch) -> Collected:
    """:func:`dispatch_async` under the dispatch's span, current while its listeners run."""
    span = open_span(dispatch)
    with span.current():
        try:
            collected = await dispatch_async(dispatch)
        except BaseException as exc:
            end_span(span, None, exc)
            raise
    end_span(span, collected, None)
    return collected


def _traced_sync(dispatch: Dispatch) -> Collected:
    """The sync twin of :func:`_traced_async`."""
    span = open_span(dispatch)
    with span.current():
        try:
            collected = dispatch_sync(dispatch)
        except BaseException as exc:
            end_span(span, None, exc)
            raise
    end_span(span, collected, None)
    return collected


def run_without_loop(dispatch: Dispatch) -> list[Outcome]:
    """
    Run sync listeners from a sync caller without an event loop; their
    outcomes, in listener order.

    The listeners placed ``THREAD`` start first, each in a listener thread;
    the others run here meanwhile, in order (see ``run_here``: they stop
    after an error that must propagate); then each threaded call is waited
    for until its time limit, and past it abandoned (a ``"timeout"``). On an
    ordered signal they run one at a time instead, each waited for before
    the next starts.
    """
    if dispatch.ordered:
        return _one_at_a_time(dispatch)
    listeners, budgeted = dispatch.listeners, dispatch.budgeted
    here_listeners: list[Listener] = []
    threaded = {}
    for index, listener in enumerate(listeners):
        if listener.places[budgeted] in HERE:
            here_listeners.append(listener)
        else:
            threaded[index] = dispatch.call(listener)
    started = {index: call.start_in_thread() for index, call in threaded.items()}
    here = iter(run_here(here_listeners, dispatch))
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


def _one_at_a_time(dispatch: Dispatch) -> list[Outcome]:
    listeners, budgeted = dispatch.listeners, dispatch.budgeted
    outcomes: list[Outcome] = []
    index = 0
    try:
        for listener in listeners:
            index += 1  # a call that is cancelled counts itself
            if listener.places[budgeted] in HERE:
                outcome = run_here((listener,), dispatch)[0]
            else:
                call = dispatch.call(listener)
                job = call.start_in_thread()
                outcome = job if isinstance(job, Outcome) else call.finish_in_thread(job)
            outcomes.append(outcome)
            if outcome.propagate:
                break
    finally:
        dispatch.cancelled(listeners[index:])
    return outcomes


def run_concurrently(dispatch: Dispatch) -> Awaitable[list[Outcome] | Returned]:
    """
    Run every listener at once; return their outcomes in listener order.

    The listeners placed in the caller (sync ones, background enqueues) go to
    the thread-sensitive thread together, in one hop and in priority order,
    concurrently with the others (Django's ``asend`` runs them *before* the
    async ones). With a queue, every other listener goes through it; under
    a deadline, each sync listener runs in a listener thread of its own, so
    the deadline can abandon it. (Plain async listeners alone: :func:`run_plain`.)
    """
    resolved = dispatch.resolved
    if (
        dispatch.queue is None
        and not dispatch.budgeted
        and resolved.own_tasks
        and dispatch.traced is None
    ):
        return run_plain(dispatch)  # own_tasks: no batch either
    return _run_concurrently(dispatch)


async def _run_concurrently(dispatch: Dispatch) -> list[Outcome]:
    listeners, budgeted, queue = dispatch.listeners, dispatch.budgeted, dispatch.queue
    if queue is None:
        batch = dispatch.resolved.batch[budgeted]
        if not batch:  # no batch: the common case, kept lean
            results = await supervise([run_async(listener, dispatch) for listener in listeners])
            return [outcome for outcome in results if outcome is not None]
    else:
        batch = tuple(
            i for i, lsn in enumerate(listeners) if placement(lsn, budgeted, True) is not QUEUE
        )
    batched = set(batch)
    coros: list[Coroutine[Any, Any, Any]] = []
    order: list[int] = []
    for index, listener in enumerate(listeners):
        if index in batched:
            continue
        order.append(index)
        if queue is not None:
            coros.append(queue._run(dispatch.call(listener)))
        else:
            coros.append(run_async(listener, dispatch))
    if batch:
        in_thread = [listeners[i] for i in batch]
        coros.append(sync_to_async(run_here, thread_sensitive=True)(in_thread, dispatch))
    results = await supervise(coros)
    # The batch's result comes last; None if it was cancelled (its thread may
    # still be running it: its calls count themselves there).
    batch_outcomes = results.pop() if batch else None
    outcomes: list[Outcome | None] = [None] * len(listeners)
    for index, result in zip(order, results, strict=True):
        outcomes[index] = result
    if batch_outcomes is not None:
        for index, outcome in zip(batch, batch_outcomes, strict=False):
            outcomes[index] = outcome
    return [o for o in outcomes if o is not None]


class _PlainRun:
    """
    The state of one :func:`run_plain` beyond its outcomes, built when a call
    needs it (one that suspended or failed, or observers): each call's start,
    and its waiter.
    """

    __slots__ = (
        "dispatch",
        "ended",
        "failure",
        "funcs",
        "outcomes",
        "pending",
        "started",
        "stop",
        "waiter",
    )

    def __init__(self, dispatch: Dispatch, outcomes: list[Outcome | None]) -> None:
        count = len(outcomes)
        self.dispatch = dispatch
        self.funcs: list[Any] = [None] * count
        """The function of each call that suspended (its outcome's receiver)."""
        self.outcomes = outcomes
        self.started = [0.0] * count
        self.ended = [False] * count
        """Whether each call was settled (once: by the task's callback or by ``_end_all``)."""
        self.pending = 0
        self.stop = False
        self.failure: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def end(self, index: int, task: asyncio.Task[Any]) -> None:
        """The call ``index`` ended as ``task`` did: settle it (it counts itself)."""
        if self.ended[index]:
            return
        self.ended[index] = True
        dispatch = self.dispatch
        listener = dispatch.listeners[index]
        started = self.started[index]
        if task.cancelled():
            if task.cancelling():  # cancelled by this dispatch, or with its caller
                dispatch.call(listener, started).ended("cancelled", None)
                return
            try:  # it raised CancelledError on its own: its error (see failure_status)
                task.result()
            except asyncio.CancelledError as own:
                self.failed(index, own, "error")
        else:
            exc = task.exception()
            if exc is None:
                elapsed = _clock.now() - started
                func = self.funcs[index]
                value = task.result()
                if ledger.observers:
                    ledger.ended("ok", listener.label, dispatch.signal, dispatch.sender, elapsed)
                else:
                    ledger.ok_one()
                # ok_outcome(func, value, elapsed), inlined: the hot path.
                self.outcomes[index] = new_outcome(
                    Outcome, (func, "ok", value, None, elapsed, None, False, 1, False)
                )
                return
            status = failure_status(exc) if isinstance(exc, Exception) else None
            if status is None:  # KeyboardInterrupt and the like: they stop the dispatch
                dispatch.call(listener, started).ended("cancelled", None)
                self.failure, self.stop = exc, True
                return
            self.failed(index, exc, status)

    def failed(self, index: int, error: BaseException, status: Status) -> None:
        """The call ``index`` raised ``error``: settle it (no fallback to await)."""
        dispatch = self.dispatch
        call = dispatch.call(dispatch.listeners[index], self.started[index])
        outcome = self.outcomes[index] = call.settle_sync(status, error)
        if outcome.propagate:
            self.stop = True

    def on_done(self, index: int, task: asyncio.Task[Any]) -> None:
        self.end(index, task)
        self.pending -= 1
        waiter = self.waiter
        if waiter is not None and not waiter.done() and (self.stop or not self.pending):
            waiter.set_result(None)


async def run_plain(dispatch: Dispatch) -> list[Outcome] | Returned:
    """
    Run plain async listeners (``Resolved.own_tasks``: nothing to apply but
    their error policy) at once, without a deadline or a queue; return their
    outcomes in listener order: a :class:`Returned` when every call returned
    without suspending (their outcomes built only if they are read, as on
    the sync twins' hot path).

    What :func:`run_concurrently` does, with each listener's own coroutine as
    its eagerly started task instead of a coroutine of ours around it (the
    hot path: a coroutine less per listener). Each call is settled and
    counted as its task ends: at once if it never suspended, else in the
    task's done callback. As in :func:`supervise`, an error that must
    propagate cancels the calls still running, and no task outlives the call.

    Raises:
        BaseException: a listener's own ``BaseException`` (``KeyboardInterrupt``...),
            or the call's cancellation.
    """
    loop = asyncio.get_running_loop()
    listeners = dispatch.listeners
    # Each call's Outcome, or the plain tuple of its fields for one that returned
    # without suspending (made an Outcome at the end, or by a Returned when read).
    outcomes: list[Any] = [None] * len(listeners)
    # Built by the first call that needs more than a value (see _PlainRun):
    # none, when every listener returned without suspending.
    run: _PlainRun | None = None
    apply, arguments, now = dispatch.apply, dispatch.arguments, _clock.now
    observed, ok_one, new_task = bool(ledger.observers), ledger.ok_one, asyncio.Task
    tasks: list[tuple[int, asyncio.Task[Any], Callable[[asyncio.Task[Any]], None]]] = []
    # One clock reading per listener: where one call was settled, the next begins.
    begun = now()
    try:
        for index, listener in enumerate(listeners):
            func = listener.ref()
            if func is None:
                outcomes[index] = dispatch.call(listener, begun).gone()
                begun = now()
                continue
            try:
                coro = apply(func, arguments)
            except Exception as exc:  # it failed before it became a coroutine
                run = run or _PlainRun(dispatch, outcomes)
                run.started[index] = begun
                run.failed(index, exc, "error")
                begun = now()
                continue
            task = new_task(coro, loop=loop, eager_start=True)
            if not task.done():
                run = run or _PlainRun(dispatch, outcomes)
                run.started[index], run.funcs[index] = begun, func
                on_done = functools.partial(run.on_done, index)
                tasks.append((index, task, on_done))
                run.pending += 1
                task.add_done_callback(on_done)
                begun = now()
                continue
            try:
                value = task.result()
                settled_here = not observed  # observers are told through end()
            except BaseException:  # it failed, or cancelled itself: end() settles it
                settled_here = False
            if not settled_here:
                run = run or _PlainRun(dispatch, outcomes)
                run.started[index], run.funcs[index] = begun, func
                run.end(index, task)
                begun = now()
                continue
            # Returned without suspending (the common case): settled right here,
            # once (it never reaches _end_all).
            ended = now()
            ok_one()
            # ok_outcome(func, value, elapsed)'s fields, inlined: the hot path.
            outcomes[index] = (func, "ok", value, None, ended - begun, None, False, 1, False)
            begun = ended
        if run is None:  # every call ended here, as "ok" or "gone": none propagates
            dispatch.stopped = False
            if all(type(outcome) is tuple for outcome in outcomes):
                return Returned(outcomes)
            return _built(outcomes)
        if run.pending and not run.stop:
            run.waiter = loop.create_future()
            await run.waiter
    except BaseException:
        # The call is cancelled (or calling a listener raised KeyboardInterrupt):
        # take every task with it.
        if run is not None:
            await _end_all(run, tasks)
        raise
    if tasks:  # else every call was settled as it ended
        await _end_all(run, tasks)
    if run.failure is not None:
        raise run.failure
    return _built(outcome for outcome in outcomes if outcome is not None)


def _built(outcomes: Iterable[Any]) -> list[Outcome]:
    # run_plain's outcomes, the plain tuples among them made Outcomes.
    return [o if type(o) is not tuple else new_outcome(Outcome, o) for o in outcomes]


async def _end_all(
    run: _PlainRun,
    tasks: list[tuple[int, asyncio.Task[Any], Callable[[asyncio.Task[Any]], None]]],
) -> None:
    """Cancel the tasks still running, wait for them, and settle every one not settled yet."""
    leftover = [task for _, task, _ in tasks if not task.done()]
    for task in leftover:
        task.cancel()
    try:
        await wait_through_cancellation(leftover)
    finally:
        for index, task, on_done in tasks:
            # A task can be done with its callback still to come (a cancellation
            # delivered again ends the wait early): settle it here, not after the call.
            if task.done():
                task.remove_done_callback(on_done)
                run.end(index, task)


async def run_in_order(dispatch: Dispatch) -> list[Outcome]:
    """
    Run listeners one at a time, in the given (priority) order.

    Consecutive listeners placed in the caller share one hop to the
    thread-sensitive thread (under a deadline, a sync listener runs as a
    call of its own). Each call runs in its own copy of the caller's
    context, as a concurrent one does in its task. Stops after an outcome
    that must propagate; the listeners after it, like those a cancellation
    keeps from starting, count as ``"cancelled"``.
    """
    listeners, budgeted = dispatch.listeners, dispatch.budgeted
    outcomes: list[Outcome] = []
    index, count = 0, len(listeners)
    try:
        while index < count:
            end = index
            while end < count and listeners[end].places[budgeted] in HERE:
                end += 1
            if end > index:
                batch = listeners[index:end]
                index = end  # the batch's thread runs them all, even if this call is cancelled
                run = sync_to_async(run_here, thread_sensitive=True)
                outcomes.extend(await run(batch, dispatch))
            else:
                index += 1  # a call that is cancelled counts itself
                call = run_async(listeners[index - 1], dispatch)
                outcomes.append(await InOwnContext(call))
            if outcomes and outcomes[-1].propagate:
                break
    finally:
        dispatch.cancelled(listeners[index:])
    return outcomes


Observer: TypeAlias = Callable[[Any, Any, list[Outcome]], None]
"""Called with (signal, sender, outcomes) after every dispatch (``state.observers``)."""


def finish(dispatch: Dispatch, outcomes: list[Outcome]) -> Collected:
    """
    The dispatch's result: the outcomes, or the first error that must propagate
    (looked for unless the runner knew there is none: ``Dispatch.stopped``).

    A ``"raise"`` error wins over a group: it stopped the dispatch, and it
    reaches the caller as itself (the failures grouped before it are in
    the outcomes the observers saw, and were counted).

    Raises:
        Exception: the error of the first listener (in listener order) whose
            ``on_error`` is ``"raise"``.
        ListenerErrors: otherwise, the errors of every listener whose
            ``on_error`` is ``"group"`` and that failed.
    """
    if state.observers:
        for observer in state.observers:
            observer(dispatch.signal, dispatch.sender, outcomes)
    if dispatch.stopped is not False:
        for outcome in outcomes:
            if outcome.propagate:
                assert outcome.error is not None
                raise outcome.error
    if not dispatch.budgeted:
        collected = Collected(outcomes)
    else:
        hit = any(getattr(outcome.error, "deadline", False) for outcome in outcomes)
        collected = Collected(outcomes, deadline_hit=hit)
    if dispatch.grouped:
        raise listener_errors(dispatch, collected)
    return collected


def listener_errors(dispatch: Dispatch, collected: Collected) -> ListenerErrors:
    """The :class:`ListenerErrors` of the grouped failures among ``collected``."""
    failed = [outcome for outcome in collected if outcome.grouped]
    errors = [outcome.error for outcome in failed if isinstance(outcome.error, Exception)]
    listeners = "listener" if len(errors) == 1 else "listeners"
    message = f"{len(errors)} {listeners} of {signal_label(dispatch.signal)} failed"
    return ListenerErrors(message, errors, outcomes=failed, collected=collected)


# -- Django's verbs on an ordered signal -------------------------------------------------


def _in_order(dispatch: Dispatch) -> Iterator[tuple[Callable[..., Any], bool]]:
    # (what Django's verbs call, whether it is async): the wrapper of a
    # listener with options, or of any listener when ON_ERROR is "log",
    # so they apply; the function itself otherwise.
    bare = errors_raise()
    for listener in dispatch.listeners:
        receiver = listener.receiver if bare and listener.bare else listener
        if receiver is not None:
            yield receiver, listener.is_async


def send_in_order(dispatch: Dispatch, *, robust: bool) -> Responses:
    """Django's ``send()`` (``send_robust()`` if ``robust``), one listener at a time."""
    signal, sender, kwargs = dispatch.signal, dispatch.sender, dispatch.kwargs
    responses: Responses = []
    for receiver, is_async in _in_order(dispatch):
        call = async_to_sync(receiver) if is_async else receiver
        try:
            # In its own copy of the caller's context, as every patchboard verb calls.
            run = contextvars.copy_context().run
            response = run(call, signal=signal, sender=sender, **kwargs)
        except Exception as err:
            response = _failed(dispatch, receiver, err, robust=robust)
        responses.append((receiver, response))
    return responses


async def asend_in_order(dispatch: Dispatch, *, robust: bool) -> Responses:
    """Django's ``asend()`` (``asend_robust()`` if ``robust``), one listener at a time."""
    signal, sender, kwargs = dispatch.signal, dispatch.sender, dispatch.kwargs
    responses: Responses = []
    for receiver, is_async in _in_order(dispatch):
        call = receiver if is_async else sync_to_async(receiver, thread_sensitive=True)
        try:
            response = await InOwnContext(call(signal=signal, sender=sender, **kwargs))
        except Exception as err:
            response = _failed(dispatch, receiver, err, robust=robust)
        responses.append((receiver, response))
    return responses


def _failed(
    dispatch: Dispatch, receiver: Callable[..., Any], error: Exception, *, robust: bool
) -> Any:
    # send()/asend() let the error through; the robust verbs log it and return it.
    if not robust:
        raise error
    log_robust_failure(dispatch.signal, receiver, error)
    return error


# -- supervising tasks --------------------------------------------------------------------


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
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
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
