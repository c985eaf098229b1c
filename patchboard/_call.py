"""
One call of one listener, and how every call ends as one counted outcome.

A :class:`Call` is what a listener call carries around: the listener, the
dispatch's ``signal``, ``sender`` and ``kwargs``, and when the call began. It
is built once per call that has to travel (through the short-term queue, a
circuit breaker, the background path) or that failed, and handed along; the
fast path of a plain listener that returns builds none.

Every call ends through one door, :meth:`Call.ended`, whoever ends it (the
call itself, the short-term queue, the background path): it hands the ledger
(``patchboard._ledger``) one :class:`~patchboard._ledger.Ended`, and the
ledger counts it, tells its observers and logs it. A call that produced no
value is settled first (:meth:`Call.settle_async` or its sync twin; the
short-term queue's calls that never left the line, :meth:`Call.never_ran_async`):
the listener's ``fallback`` answers if the call never ran (``"expired"``,
``"rejected"``, ``"circuit_open"``), otherwise ``on_error`` applies
(``"raise"`` marks the outcome to propagate, ``"group"`` to be raised with
the others once every listener ended, ``"log"`` lets ``default`` stand in).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import anyio
from asgiref.sync import async_to_sync, sync_to_async

from patchboard import _breaker, _clock, _deadline
from patchboard._config import Guard, get_settings
from patchboard._exceptions import CircuitOpen, Expired, ListenerTimeout, Rejected
from patchboard._instrument import CallStart, Instrument, Span
from patchboard._ledger import Ended, ledger
from patchboard._log import sender_label, signal_label
from patchboard._outcomes import Outcome, Status, ok_outcome
from patchboard._retry import Attempts, budget_of
from patchboard._shield import finish
from patchboard._threads import Job, listener_threads

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal

    from patchboard._listeners import Listener

ThreadRunner: TypeAlias = Callable[[Callable[[], Any]], Awaitable[Any]]
"""Runs a sync call in a worker thread; the short-term queue supplies its own."""
Cut: TypeAlias = Literal["timeout", "deadline", "late"]
"""What sets a call's time limit: its own (``timeout``, the queue's limit), or the
deadline, for a call that started with a fair share of the budget or late
(see ``patchboard._deadline``)."""

FALLBACK_GRACE = 0.05
"""Seconds past the deadline an async fallback may still take to answer."""

THREAD_EVENTS = ("listener_thread_abandoned", "listener_thread_returned")
"""The log events of a listener call's thread: abandoned by its caller, returned after that."""

NeverRan: TypeAlias = Literal["expired", "rejected", "circuit_open"]
"""The status of a call that never started."""
NEVER_RAN: frozenset[Status] = frozenset({"expired", "rejected", "circuit_open"})
"""Outcomes of calls that never started: the listener's ``fallback`` answers for them."""


def failure_status(exc: BaseException) -> Status | None:
    """
    The outcome status of a listener call that raised ``exc``, or None when
    ``exc`` must propagate: a real cancellation of the calling task,
    ``KeyboardInterrupt``, ``SystemExit``.

    A ``CancelledError`` the listener raised on its own (from a future that
    someone else cancelled) while its task is not being cancelled is the
    listener's error: it must not vanish as if the caller had gone away.
    """
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, ListenerTimeout):
        return "timeout"
    if isinstance(exc, Exception):
        return "error"
    if isinstance(exc, asyncio.CancelledError):
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop in this thread
            return "error"
        if task is not None and task.cancelling() == 0:
            return "error"
    return None


class Grouping(Protocol):
    """What a call tells its dispatch (``patchboard._run.Dispatch``): that its error
    joins the group raised once every listener ended (``on_error="group"``)."""

    grouped: bool


class _OutOfBudget(BaseException):
    """The dispatch's deadline cut a call short (carries the ``ListenerTimeout``)."""

    def __init__(self, error: ListenerTimeout) -> None:
        super().__init__(error)
        self.error = error


def _failure(attempt: asyncio.Future[Any]) -> BaseException | None:
    """What a finished attempt raised (a ``CancelledError`` of its own included), or None."""
    return asyncio.CancelledError() if attempt.cancelled() else attempt.exception()


def _failed(attempt: asyncio.Future[Any]) -> bool:
    return _failure(attempt) is not None


def gone_receiver(*args: Any, **kwargs: Any) -> None:
    """Stands in as ``Outcome.receiver`` for a listener collected mid-dispatch."""


class Call:
    """
    One call of one listener (see the module docstring).

    ``started`` is a ``_clock.now()`` reading: outcomes report the time from
    it to their end as ``elapsed``. ``instrument`` is its dispatch's (see
    ``patchboard._instrument``): it opens the call's span as the call starts,
    and :meth:`ended` ends it.
    """

    __slots__ = (
        "attempts",
        "by_deadline",
        "dispatch",
        "ends",
        "instrument",
        "kwargs",
        "limit",
        "listener",
        "sender",
        "signal",
        "span",
        "started",
    )

    def __init__(
        self,
        listener: Listener,
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
        started: float | None = None,
        instrument: Instrument | None = None,
        dispatch: Grouping | None = None,
    ) -> None:
        self.listener = listener
        self.signal = signal
        self.sender = sender
        self.kwargs = kwargs
        self.started = _clock.now() if started is None else started
        self.ends: float | None = None
        """When a call started in a thread from sync code must end (``_clock.now()``)."""
        self.limit: float | None = None
        """The time limit ``ends`` was set with (what a ``ListenerTimeout`` reports)."""
        self.by_deadline = False
        self.instrument = instrument
        self.span: Span | None = None
        """The call's span, once it started (traced dispatches only)."""
        self.attempts = 1
        """The attempts it made (``retry``, ``hedge_after``): its outcome reports them."""
        self.dispatch = dispatch
        """Its dispatch, told when the call's error joins the group (``on_error="group"``)."""

    def __repr__(self) -> str:
        return f"<Call {self.listener.label} of {signal_label(self.signal)}>"

    # -- running ---------------------------------------------------------------

    async def run_async(
        self, *, time_limit: float | None = None, thread_runner: ThreadRunner | None = None
    ) -> Outcome:
        """
        Run the call from async code, applying every option; return its outcome.

        ``time_limit`` applies when the listener has no ``timeout`` of its own
        (the short-term queue's limit); what is left of the dispatch's
        deadline cuts either shorter, and a call with nothing left never
        starts (``"expired"``). ``thread_runner`` runs a sync listener in a
        worker thread (the queue passes one that keeps its worker until the
        thread returns). Only ``BaseException``s that are not ``Exception``
        (cancellation, ``KeyboardInterrupt``) escape.
        """
        if self.instrument is None:
            return await self._run_async(time_limit, thread_runner)
        with self.opened():
            return await self._run_async(time_limit, thread_runner)

    async def _run_async(
        self, time_limit: float | None, thread_runner: ThreadRunner | None
    ) -> Outcome:
        func = self.listener.receiver
        if func is None:
            return self.gone()
        options = self.listener.options
        limit, by_deadline = self._limit(time_limit)
        if by_deadline and limit is not None and limit <= 0:
            return await self.settle_async("expired", self._out_of_budget(0.0))
        # Resolved outside the try: an unknown breaker name is a configuration
        # error for the caller, not this listener's failure.
        guard = None if options.breaker is None else _breaker.resolve(options.breaker)
        cut: Cut = "timeout"
        if by_deadline:
            assert limit is not None
            cut = "late" if _deadline.started_late(limit) else "deadline"
        if options.hedge_after is not None:
            func = functools.partial(self._hedged, func, options.hedge_after)
        try:
            if options.retry is not None:
                # Each attempt enters the breaker: an open circuit stops the retries.
                with _deadline.late(cut == "late"):
                    value = await self._retrying_async(func, limit, cut, thread_runner, guard)
            elif guard is None:
                value = await self._invoke(func, limit, cut, thread_runner)
            else:
                with _deadline.late(cut == "late"):  # a late call gets no probe
                    async with _breaker.for_call(guard, self.sender, self.kwargs):
                        value = await self._invoke(func, limit, cut, thread_runner)
        except _OutOfBudget as cut_short:
            return await self.settle_async("timeout", cut_short.error)
        except BaseException as exc:
            return await self.failed_async(exc)
        return self.ok(func, value)

    async def _retrying_async(
        self,
        func: Callable[..., Any],
        limit: float | None,
        cut: Cut,
        thread_runner: ThreadRunner | None,
        guard: Guard | None,
    ) -> Any:
        """
        :meth:`_invoke` under ``guard``, once per attempt, until one returns or
        the listener's ``retry`` says the failure is final (see ``_retry``).
        """
        retry = self.listener.options.retry
        assert retry is not None
        attempts = Attempts(retry, self.signal, self.listener.label, limit)
        first = _clock.now()
        while True:
            began = _clock.now()
            try:
                if guard is None:
                    return await self._invoke(func, limit, cut, thread_runner, began - first)
                async with guard:
                    return await self._invoke(func, limit, cut, thread_runner, began - first)
            except Exception as exc:
                wait = self._after_failure(attempts, exc, began, guard)
                if wait is None:
                    raise
            await anyio.sleep(wait)

    def _after_failure(
        self, attempts: Attempts, exc: Exception, began: float, guard: Guard | None
    ) -> float | None:
        """The wait before the attempt after ``exc`` (None: the call ends with it)."""

        def circuit_open() -> bool:
            # Asked last: a refusal counts as a rejected call with the breaker.
            return guard is not None and _breaker.refusal(guard) is not None

        wait = attempts.wait(exc, began, circuit_open)
        if wait is not None:
            self.attempts = attempts.number
        return wait

    def _retrying_sync(self, attempt: Callable[[], Any], guard: Guard | None) -> Any:
        """
        The sync twin of :meth:`_retrying_async`, in the thread the call runs
        in (its waits block it): ``attempt()`` once per attempt, under
        ``guard``, within the time limit :meth:`start_in_thread` set.
        """
        retry = self.listener.options.retry
        assert retry is not None
        attempts = Attempts(retry, self.signal, self.listener.label, self._time_left())
        while True:
            began = _clock.now()
            try:
                if guard is None:
                    return attempt()
                with guard:
                    return attempt()
            except Exception as exc:
                wait = self._after_failure(attempts, exc, began, guard)
                if wait is None:
                    raise
            time.sleep(wait)

    async def _hedged(self, func: Callable[..., Any], after: float, **arguments: Any) -> Any:
        """
        Call the async listener ``func``; if it has not returned ``after``
        seconds later, call it a second time beside it: the first attempt
        to return answers, and the other is cancelled. An attempt that fails
        while the other runs waits for it; a first attempt that fails before
        ``after`` ends the call (hedging answers slowness, ``retry`` failures).

        The second attempt is a listener call of its own in the ledger
        (submitted as it starts), and each of the two ends as one counted
        outcome: one as the call's (through this ``Call``), the other as
        ``"cancelled"``, or, when it failed and the other then answered (or
        failed too), as its own failure, logged and never propagated.
        """
        first = asyncio.ensure_future(func(**arguments))
        tasks = [first]
        loser: Call | None = None  # the second attempt's ledger entry, until it is counted
        try:
            done, _ = await asyncio.wait(tasks, timeout=after)
            if done:
                return first.result()
            budget = budget_of(self.signal)
            budget.hedge("started")
            ledger.submitted()
            loser = Call(
                self.listener, self.signal, self.sender, self.kwargs, None, self.instrument
            )
            tasks.append(asyncio.ensure_future(func(**arguments)))
            self.attempts = 2
            failed: BaseException | None = None
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # A success wins over a failure that ended at the same turn.
                for attempt in sorted(done, key=_failed):
                    error = _failure(attempt)
                    if failed is not None and loser is not None:  # an earlier failure lost
                        loser.ended("error", _clock.now() - self.started, failed)
                        loser = None
                    if error is None:
                        if attempt is not first:
                            budget.hedge("won")
                        return attempt.result()
                    failed = error
            assert failed is not None
            raise failed
        finally:
            running = [task for task in tasks if not task.done()]
            for task in running:
                task.cancel()
            if running:
                if loser is not None:
                    budget_of(self.signal).hedge("cancelled")
                    loser.ended("cancelled", None)
                # A time limit or a cancellation that cut the call still waits for its
                # attempts' ends.
                await finish(asyncio.wait(running))

    def refusal(self) -> CircuitOpen | None:
        """
        The ``CircuitOpen`` the listener's breaker would raise if the call
        started now, when it can tell without I/O (its circuit is open), or
        None: the short-term queue settles such a call before it takes a
        place in line or a worker.

        Raises:
            ImproperlyConfigured: the listener names no declared breaker.
        """
        breaker = self.listener.options.breaker
        if breaker is None:
            return None
        guard = _breaker.resolve(breaker)
        try:
            guard = _breaker.for_call(guard, self.sender, self.kwargs)
        except ValueError:
            return None  # the call itself fails on its key, as its outcome
        return _breaker.refusal(guard)

    def _limit(self, time_limit: float | None = None) -> tuple[float | None, bool]:
        """
        The seconds this call may run from now, and whether the dispatch's
        deadline set them (rather than the listener's own ``timeout``, or
        ``time_limit``).
        """
        own = self.listener.options.timeout
        if own is None:
            own = time_limit
        left = _deadline.remaining()
        if left is not None and (own is None or left < own):
            return left, True
        return own, False

    async def _invoke(
        self,
        func: Callable[..., Any],
        limit: float | None,
        cut: Cut,
        thread_runner: ThreadRunner | None,
        spent: float = 0.0,
    ) -> Any:
        """
        Call the listener once within ``limit`` seconds, of which earlier
        attempts ``spent`` some (a retry gets what is left; its timeout
        reports the whole limit).
        """
        call = functools.partial(func, signal=self.signal, sender=self.sender, **self.kwargs)
        if not self.listener.is_async:
            if limit is None and thread_runner is None and self.listener.options.thread_sensitive:
                return await sync_to_async(call, thread_sensitive=True)()
            call = functools.partial(thread_runner or self._in_thread, call)
        if limit is None:
            return await call()
        started = _clock.now()
        with anyio.CancelScope(deadline=anyio.current_time() + limit - spent):
            return await call()
        # Only reached when the deadline cancelled the call (a sync call's
        # thread is abandoned: it cannot be stopped).
        elapsed = spent + _clock.now() - started
        if cut == "late":
            # Not an Exception: a circuit breaker counts a late caller running
            # out of time as nothing, not as the service's failure.
            raise _OutOfBudget(self._out_of_time(limit, elapsed, deadline=True))
        raise self._out_of_time(limit, elapsed, deadline=cut == "deadline")

    def _out_of_time(self, limit: float, elapsed: float, *, deadline: bool) -> ListenerTimeout:
        return ListenerTimeout(self.listener.label, limit, elapsed, deadline=deadline)

    def _out_of_budget(self, waited: float) -> Expired:
        return Expired(self.listener.label, waited, 0.0, deadline=True)

    async def _in_thread(self, sync_call: Callable[[], Any]) -> Any:
        return await listener_threads().run(sync_call, self.thread_job())

    def thread_job(self, events: tuple[str, str] = THREAD_EVENTS) -> Job:
        """This call as a listener thread's job, its thread logged under ``events``."""
        label = self.listener.label
        fields = {
            "signal": signal_label(self.signal),
            "listener": label,
            "sender": sender_label(self.sender),
        }
        return Job(label, fields, events)

    def start_in_thread(self) -> Job | Outcome:
        """
        Start a sync listener's call in a listener thread, from sync code (the
        sync twins' path without an event loop); its job, or its outcome if it
        could not start: its function is gone, its deadline passed
        (``"expired"``), or no thread freed up within its time limit
        (``"timeout"``).
        """
        func = self.listener.receiver
        if func is None:
            return self.gone()
        limit, by_deadline = self._limit()
        if by_deadline and limit is not None and limit <= 0:
            return self.settle_sync("expired", self._out_of_budget(0.0))
        self.limit = limit
        self.ends = None if limit is None else _clock.now() + limit
        self.by_deadline = by_deadline
        job = self.thread_job()
        sync_call = functools.partial(func, signal=self.signal, sender=self.sender, **self.kwargs)
        if self.listener.options.retry is not None:  # the retries run in the thread, in its limit
            sync_call = functools.partial(self._retrying_sync, sync_call, None)
        with self.opened():  # current as the thread copies this context: it runs under the span
            started = listener_threads().start(sync_call, job, self._time_left())
        if started:
            return job
        return self.settle_sync("timeout", self._timed_out())

    def finish_in_thread(self, job: Job) -> Outcome:
        """
        Wait for the job :meth:`start_in_thread` started, until its time limit;
        its outcome (``"timeout"`` and an abandoned thread past it).
        """
        try:
            returned, value = listener_threads().wait(job, self._time_left())
        except BaseException as exc:
            return self.failed_sync(exc)
        if not returned:
            return self.settle_sync("timeout", self._timed_out())
        return self.ok(self.listener.receiver or gone_receiver, value)

    def _time_left(self) -> float | None:
        ends = self.ends
        return None if ends is None else max(0.0, ends - _clock.now())

    def _timed_out(self) -> ListenerTimeout:
        assert self.limit is not None
        elapsed = _clock.now() - self.started
        return self._out_of_time(self.limit, elapsed, deadline=self.by_deadline)

    def run_sync(self) -> Outcome:
        """
        Run a sync listener's call in the calling thread, under its breaker;
        its outcome. (Only ``KeyboardInterrupt`` and the like escape.)
        """
        func = self.listener.receiver
        if func is None:
            return self.gone()
        breaker = self.listener.options.breaker
        guard = None if breaker is None else _breaker.resolve(breaker)
        with self.opened():
            try:
                if self.listener.options.retry is not None:
                    call = functools.partial(
                        func, signal=self.signal, sender=self.sender, **self.kwargs
                    )
                    value = self._retrying_sync(call, guard)
                elif guard is None:
                    value = func(signal=self.signal, sender=self.sender, **self.kwargs)
                else:
                    with _breaker.for_call(guard, self.sender, self.kwargs):
                        value = func(signal=self.signal, sender=self.sender, **self.kwargs)
            except BaseException as exc:
                return self.failed_sync(exc)
            return self.ok(func, value)

    def opened(self) -> AbstractContextManager[object]:
        """
        Open the call's span (traced dispatches only), as the call starts: the
        returned context manager makes it current while the listener runs (a
        background listener's: while its task is enqueued).
        """
        instrument = self.instrument
        if instrument is None:
            return nullcontext()
        waited = _clock.now() - self.started
        start = CallStart(
            self.listener.label, self.signal, _deadline.remaining(), waited, 0.0, self._breaker()
        )
        span = self.span = instrument.call(start)
        return span.current()

    # -- outcomes --------------------------------------------------------------

    def ok(self, func: Callable[..., Any], value: Any) -> Outcome:
        """The call returned ``value``: count it and make its outcome."""
        elapsed = _clock.now() - self.started
        self.ended("ok", elapsed)
        return ok_outcome(func, value, elapsed, self.attempts)

    def ended(
        self,
        status: Status,
        elapsed: float | None,
        error: BaseException | None = None,
        *,
        fell_back: bool = False,
        fallback_error: Exception | None = None,
        propagate: bool = False,
        fields: dict[str, Any] | None = None,
        gone: bool = False,
    ) -> None:
        """
        The call ended with ``status``: the one door to the ledger, which
        counts it and logs what the rest says (see
        :class:`~patchboard._ledger.Ended`).
        """
        if self.instrument is not None:
            self._end_span(self.instrument, status, elapsed, error)
        ledger.book(
            Ended(
                status,
                self.listener.label,
                self.signal,
                self.sender,
                elapsed,
                error,
                self.kwargs,
                fell_back,
                fallback_error,
                propagate,
                fields,
                gone,
            )
        )

    def _end_span(
        self,
        instrument: Instrument,
        status: Status,
        elapsed: float | None,
        error: BaseException | None,
    ) -> None:
        span = self.span
        if span is None:
            # It never started (expired, rejected, refused by its circuit, enqueued,
            # cancelled first): a span of its time from its dispatch to its end.
            ago = elapsed or 0.0
            start = CallStart(self.listener.label, self.signal, None, ago, ago, self._breaker())
            span = instrument.call(start)
        span.end(status, error)

    def _breaker(self) -> str | None:
        """The name of the listener's circuit breaker, for its span (None: none)."""
        breaker = self.listener.options.breaker
        if breaker is None or isinstance(breaker, str):
            return breaker
        return getattr(breaker, "name", None) or type(breaker).__qualname__

    def gone(self) -> Outcome:
        """
        The function was collected between the signal resolving its weak
        reference and this call: nothing ran, and nothing is left to blame.
        """
        error = ReferenceError(f"listener {self.listener.label} was garbage collected")
        elapsed = _clock.now() - self.started
        self.ended("error", elapsed, error, gone=True)
        return Outcome(receiver=gone_receiver, status="error", error=error, elapsed=elapsed)

    def _status_of(self, exc: BaseException) -> Status:
        """
        The status of a call that raised ``exc`` (see :func:`failure_status`).

        Raises:
            BaseException: ``exc`` itself when it must propagate, the call
                counted as cancelled.
        """
        status = failure_status(exc)
        if status is None:
            self.ended("cancelled", None)
            raise exc
        return status

    async def failed_async(self, exc: BaseException) -> Outcome:
        """
        The outcome of a call that raised ``exc`` (settled, see :meth:`settle_async`).

        Raises:
            BaseException: ``exc`` itself when it must propagate (a
                cancellation, ``KeyboardInterrupt``...), counted as cancelled.
        """
        return await self.settle_async(self._status_of(exc), exc)

    def failed_sync(self, exc: BaseException) -> Outcome:
        """The sync twin of :meth:`failed_async`."""
        return self.settle_sync(self._status_of(exc), exc)

    async def settle_async(
        self, status: Status, error: BaseException, fields: dict[str, Any] | None = None
    ) -> Outcome:
        """
        The outcome of a call that produced no value (the one door, see the
        module docstring); an async ``fallback`` is awaited. ``fields`` are
        the short-term queue's numbers of a call that never left its line,
        logged with it.
        """
        fallback = self._fallback(status)
        if fallback is None:
            return self._settled(status, error, fields)
        try:
            value = fallback(signal=self.signal, sender=self.sender, **self.kwargs)
            if inspect.isawaitable(value):
                value = await self._fallback_within_budget(value)
        except Exception as exc:
            return self._settled(status, error, fields, fallback_error=exc)
        except BaseException:
            self.ended("cancelled", None)  # the caller went away while the fallback ran
            raise
        return self._settled(status, error, fields, fell_back=True, value=value)

    async def _fallback_within_budget(self, answer: Awaitable[Any]) -> Any:
        """
        Await an async fallback's answer within what is left of the deadline
        (and ``FALLBACK_GRACE`` past it: a call the deadline expired still
        gets its cached answer, which takes a thread hop, but a fallback that
        hangs cannot hold the dispatch).

        Raises:
            TimeoutError: the fallback did not answer in time.
        """
        left = _deadline.remaining()
        if left is None:
            return await answer
        with anyio.move_on_after(left + FALLBACK_GRACE):
            return await answer
        raise TimeoutError(
            f"the fallback of {self.listener.label} did not answer within the deadline "
            f"(+{FALLBACK_GRACE}s)"
        )

    async def never_ran_async(
        self,
        status: NeverRan,
        *,
        waited: float = 0.0,
        expiry: float = 0.0,
        deadline: bool = False,
        shed: bool = False,
        max_pending: int = 0,
        refused: CircuitOpen | None = None,
    ) -> Outcome:
        """
        The outcome of a call the short-term queue never started (settled, see
        :meth:`settle_async`): ``"expired"`` after ``waited`` seconds of its
        ``expiry`` (the dispatch's ``deadline``'s if True; ``shed`` when the
        queue saw at once that it could not start in time), ``"rejected"`` by
        a line of ``max_pending`` waiting items, or ``"circuit_open"`` as
        :meth:`refusal` found it (``refused``). An expiry or a rejection is
        logged with these numbers.
        """
        label = self.listener.label
        error: BaseException
        fields: dict[str, Any] | None = None
        if status == "expired":
            error = Expired(label, waited, expiry, deadline=deadline)
            fields = {
                "waited_s": round(waited, 6),
                "expiry_s": round(expiry, 6),
                "deadline": deadline,
                "shed": shed,
                "criticality": self.listener.options.criticality,
            }
        elif status == "rejected":
            error = Rejected(label, max_pending)
            fields = {"max_pending": max_pending, "criticality": self.listener.options.criticality}
        else:
            assert refused is not None
            error = refused
        return await self.settle_async(status, error, fields)

    def settle_sync(
        self, status: Status, error: BaseException, fields: dict[str, Any] | None = None
    ) -> Outcome:
        """The sync twin of :meth:`settle_async`: an async ``fallback`` runs through asgiref."""
        fallback = self._fallback(status)
        if fallback is None:
            return self._settled(status, error, fields)
        if inspect.iscoroutinefunction(fallback):
            fallback = async_to_sync(fallback)
        try:
            value = fallback(signal=self.signal, sender=self.sender, **self.kwargs)
        except Exception as exc:
            return self._settled(status, error, fields, fallback_error=exc)
        return self._settled(status, error, fields, fell_back=True, value=value)

    def _fallback(self, status: Status) -> Callable[..., Any] | None:
        return self.listener.options.fallback if status in NEVER_RAN else None

    def _settled(
        self,
        status: Status,
        error: BaseException,
        fields: dict[str, Any] | None,
        *,
        fell_back: bool = False,
        value: Any = None,
        fallback_error: Exception | None = None,
    ) -> Outcome:
        """
        The outcome of a call that produced no value: the ``value`` its
        fallback answered, or else as ``on_error`` says (``default``, or
        propagate).
        """
        elapsed = _clock.now() - self.started
        propagate = grouped = False
        if not fell_back:
            options = self.listener.options
            policy = options.on_error or get_settings().on_error
            # An ExceptionGroup holds Exceptions only: a CancelledError the
            # listener raised on its own propagates as under "raise".
            grouped = policy == "group" and isinstance(error, Exception)
            propagate = policy == "raise" or (policy == "group" and not grouped)
            value = None if propagate or grouped else options.default
            if grouped and self.dispatch is not None:
                self.dispatch.grouped = True
        self.ended(
            status,
            elapsed,
            error,
            fell_back=fell_back,
            fallback_error=fallback_error,
            propagate=propagate or grouped,  # it reaches the caller: not logged
            fields=fields,
        )
        return Outcome(
            receiver=self.listener.receiver or gone_receiver,
            status=status,
            value=value,
            error=error,
            elapsed=elapsed,
            propagate=propagate,
            attempts=self.attempts,
            grouped=grouped,
        )
