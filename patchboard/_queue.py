"""
The short-term queue: a bounded pool that finishes a collector's listener
calls inside the request, within the request's time budget.

Picture a counter with a few service windows and one line in front of it,
for the whole process. The windows are the *workers*: a call that goes
through the queue takes a free one, or joins the end of the line, and a
window that frees up goes to the head of the line at once. Everything the
process serves shares the counter: the ASGI server's event loop, and the
short-lived loop that each sync twin (``collect()``, ``send_sync()``) runs in
a thread of its own. So the workers are counted under a ``threading.Lock``,
and a waiter is woken on its own loop (``call_soon_threadsafe``); no
loop-bound primitive is shared between loops.

Limits, from ``PATCHBOARD["SHORT_TERM_QUEUE"]``, each cut to what is left
of the dispatch's ``deadline`` when it has one:

``TASK_TIME_LIMIT``
    A call running longer (or longer than the listener's own ``timeout``)
    ends as ``"timeout"``. An async listener is cancelled. A sync one runs in
    a listener thread, which cannot be stopped: it is *abandoned*, the
    caller gets its outcome at once, and the thread holds on to its worker
    until it has actually returned, so live listener threads never outnumber
    the workers.
``ITEM_EXPIRY``
    A call never waits in line longer than this, nor past its dispatch's
    deadline: it ends as ``"expired"`` then, never started (the listener's
    ``fallback`` may answer). A call the line is already too long for (see
    *shedding*) expires at once.
``MAX_PENDING``
    A call that finds this many calls in line is not queued: it ends as
    ``"rejected"`` at once; the line never grows past the limit.

Scaling on standing delay. The pool starts with ``MIN_WORKERS`` workers and
moves between ``MIN_WORKERS`` and ``MAX_WORKERS``. A line that moves is
healthy, however long; a line that *stands* is not (CoDel, RFC 8289). The
head of the line's wait measures it: once the head has waited
``TARGET_WAIT``, the pool grows at once (``queue_scaled_up``,
``reason="standing"``) to what the line needs: a worker for every call
present (running + waiting, Little's law on what is there now), and at
least twice as many as it had, up to ``MAX_WORKERS``. That empties the
line; it grows again whenever a head has waited ``TARGET_WAIT``. (Doubling
once per ``TARGET_WAIT`` of standing was measured: from a cold pool, a
sustained load needing 27 of 32 workers kept a standing line for 590-740 ms,
and heads waited up to 100-160 ms after the first 200 ms; growing to the
calls present, the line stood for 80 ms at most, and no head waited more
than 35 ms after the first 200 ms; preliminary figures.) A head that has waited
``AT_RISK_FRACTION`` of ``ITEM_EXPIRY`` (``reason="at_risk"``), or an
expiry (``reason="expired"``), grows it the same way. The pool *halves*
(never below ``MIN_WORKERS``, nor below the calls running;
``queue_scaled_down``) for every ``IDLE_SHRINK_AFTER`` seconds during which
it had a free worker and nobody in line.

Shedding under overload: a call the line cannot serve within its budget
(the expiry, or what is left of its deadline) is told at once ("expired",
its fallback answering) rather than when its budget runs out, so that the
workers go to calls that can still finish in time ("Fail at Scale"). Three
rules:

* A call whose breaker is known to be open (``CircuitOpen`` without asking
  anyone, see ``Call.refusal``) takes neither a place in line nor a worker:
  it is settled as ``"circuit_open"`` at once.
* The wait is predicted from the line's measured *drain rate*: the time the
  line stood non-empty over its last ``_DRAIN_WINDOW`` grants, the time since
  its last grant included (so a line that stops moving slows it down at
  once). A call joining at place *p* is predicted to wait *p* x that time
  per place, whatever the mix of service times: it measures how fast the
  line moves, not how long an average call takes. A call predicted to wait
  past ``AT_RISK_FRACTION`` of its budget is shed as it arrives; the margin
  lets the prediction be wrong by a third before anyone waits two thirds of
  a budget, and costs no throughput: under overload the line stays long
  enough to keep every worker busy. While the line *stands* (its head has
  waited ``TARGET_WAIT``) with the pool as large as it may be, the limit is
  ``_STANDING_LIMIT`` x ``TARGET_WAIT`` instead (if shorter): that is an
  overload, and a longer line only adds wait (CoDel's controlled delay, as
  Fail at Scale applies it).
* At every change (a call joins, leaves, frees a worker, or a waiter wakes
  at its at-risk age), the waiters are checked again: one whose predicted
  wait (its place x the time per place now) exceeds what is left of its
  budget is shed then, not at its expiry. And a worker never goes to a call
  whose deadline would cut it short (less left than the moving average of
  how long a call holds a worker).

Why this rule. The anchors: Fail at Scale answers overload with CoDel (once
the queue has not been empty for an interval, a short queue timeout) and
adaptive LIFO; Netflix's concurrency-limits with a LIFO backlog and a
timeout; Envoy's adaptive concurrency by cutting the concurrency limit from
measured latency. Here the concurrency limit is the operator's
(``MAX_WORKERS``: sockets, threads, connections), and serving the newest
first (adaptive LIFO) was measured and served fewer calls in time (299-311
calls/s against 356-362 for FIFO). So the line stays first in, first out,
and what adapts is admission: who may join the line, from how fast it
moves, with CoDel's short limit only while the line stands at
``MAX_WORKERS`` (a call's budget, seconds long, is the limit otherwise: a
fixed short timeout would expire for nothing the calls of a fan-out larger
than the pool). Its cost: when an overload ends, a shorter line leaves less
backlog to serve after it (more calls answered by their fallback); while it
lasts, the workers serve as many calls either way. The earlier prediction
(place / ``MAX_WORKERS`` x a moving average of service time) was fooled by
mixed service times, and the calls refused by an open circuit waited their
turn: at twice its capacity, with calls of 10 ms, 200 ms and behind an open
circuit at the example shop's settings, 33-37 % of the calls that never ran
waited 1 s of their 1.5 s budget or more, at a goodput of 0.95 of the pool;
with these rules none did, at the same goodput. The shop with one carrier hanging, under 50 clients,
served 0.80-0.85x the requests/s with its breakers as without; 1.10-1.56x
with these rules, p99 within its 2 s deadline (preliminary figures, ``make
bench``: budget and e2e sections).

The rules are evaluated, with the queue's clock, whenever a call joins the
line, leaves it or frees a worker, and by the call at the head of the line
when it is due to grow the pool. There is no background thread or task:
nothing the queue does outlives a request.

Structured concurrency: a call belongs to its caller. When the caller is
cancelled, its waiting call leaves the line and its running async call is
cancelled; only a sync call's abandoned thread outlives it, and it is
counted (``abandoned_running``). One listener failing never touches the
calls of another collector.

Every call is counted once, when its caller gets the outcome (or is
cancelled), as exactly one of ``completed``, ``failed``, ``circuit_open``,
``timed_out``, ``expired``, ``rejected`` or ``cancelled`` (see
:class:`QueueStatistics`).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias

import anyio

from patchboard import _clock, _deadline
from patchboard._call import Call, NeverRan
from patchboard._config import QueueSettings, get_settings
from patchboard._exceptions import CircuitOpen
from patchboard._log import logger
from patchboard._outcomes import Outcome, Status
from patchboard._state import state
from patchboard._threads import listener_threads
from patchboard._waiter import Waiter

# An item's state; it changes only under the queue's lock. Plain ints, read on every call.
_WAITING, _GRANTED, _EXPIRED, _REJECTED, _WITHDRAWN, _FINISHED, _REFUSED = range(7)

_SERVICE_WEIGHT: Final = 0.2
"""Weight of the newest run in the moving average of how long a call holds a worker."""

_STANDING_LIMIT: Final = 2
"""While the line stands at ``MAX_WORKERS``, a call joins it only if predicted to
start within this many ``TARGET_WAIT``\\s: a longer line adds wait, not throughput."""

_DRAIN_WINDOW: Final = 64
"""How many of the line's latest grants its drain rate is measured over: enough to
average a mix of short and long calls, few enough to follow a change within a second."""

_RANKS: Final = {"critical": 0, "default": 1, "sheddable": 2}
"""A call's criticality as a rank: the higher, the sooner it is shed."""
_SHEDDABLE: Final = 2

_THREAD_EVENTS: Final = ("queue_thread_abandoned", "queue_thread_returned")

_LogEvent: TypeAlias = tuple[str, str, dict[str, Any]]
"""(level, event, fields): logged once the lock is released."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStatistics:
    """
    A snapshot of a :class:`ShortTermQueue`.

    ``workers`` is the current size of the pool; ``running`` the workers in
    use, abandoned threads included; ``waiting`` the calls in line, and
    ``oldest_wait`` how long the head of the line has waited (0.0 when nobody
    waits). ``service_time`` is the moving average of how long a call held a
    worker (0.0 before the first). The counters are totals since the queue
    was built. A call is counted when its caller gets the outcome, as exactly
    one of ``completed``, ``failed`` (the listener raised), ``circuit_open``
    (its breaker refused it: at once, without a place in line, when its
    circuit was known to be open), ``timed_out``, ``expired`` (``shed`` of
    them before their time, under overload), ``rejected`` or ``cancelled``
    (its caller was cancelled before it had one), so these add up to
    ``submitted`` whenever no call is in progress. ``abandoned``
    counts the sync calls whose thread outlived their time limit or their
    caller; ``abandoned_running``, those still running.
    """

    workers: int
    running: int
    waiting: int
    oldest_wait: float
    service_time: float
    submitted: int
    completed: int
    failed: int
    circuit_open: int
    timed_out: int
    expired: int
    shed: int
    rejected: int
    cancelled: int
    abandoned: int
    abandoned_running: int


class _Item:
    """One call's place in the queue: its state, its budget, and how to wake its waiter."""

    __slots__ = (
        "abandoned",
        "budget",
        "by_deadline",
        "enqueued",
        "expires",
        "granted_at",
        "rank",
        "shed",
        "state",
        "waited",
        "waiter",
    )

    # Set by ``run()`` (``state``, ``budget``), on joining the line (``enqueued``,
    # ``expires``, ``waiter``) or on being granted a worker (``granted_at``),
    # before anything reads them.
    state: int
    budget: float
    enqueued: float
    expires: float
    granted_at: float
    waiter: Waiter

    def __init__(self, rank: int) -> None:
        self.rank = rank
        """Its criticality's rank (``_RANKS``): the higher, the sooner it is shed."""
        self.by_deadline = False
        self.waited = 0.0
        self.abandoned = False
        self.shed = False

    def prepare_wait(self, now: float) -> None:
        """Join the line (on the caller's loop, in the caller's thread)."""
        self.state = _WAITING
        self.enqueued = now
        self.expires = now + self.budget
        self.waiter = Waiter(asyncio.get_running_loop())

    def wake(self) -> None:
        """Wake the waiter on its own loop, from any thread."""
        self.waiter.wake()


class ShortTermQueue:
    """
    A per-process pool of workers running listener calls within the request.

    :func:`get_queue` gives the process's queue, built from
    ``PATCHBOARD["SHORT_TERM_QUEUE"]``. Waits, expiry, scaling and idleness
    are measured on ``clock`` (any function returning seconds); ``None``, the
    default, is patchboard's clock, which a ``patchboard.testing.VirtualClock``
    drives. The waits themselves are timers on the event loop: give a clock of
    your own only with a loop that follows it, or expect real waits.
    """

    wait_observer: ClassVar[Callable[[float], None] | None] = None
    """Called, when set, with the seconds each call that got a worker waited in line
    (0.0: a worker was free), in the caller's thread (the hook of the metrics)."""

    def __init__(
        self,
        settings: QueueSettings | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = settings if settings is not None else QueueSettings()
        self._clock = _clock.monotonic if clock is None else clock
        self._lock = threading.Lock()
        self._workers = self.config.min_workers
        self._running = 0
        self._waiters: deque[_Item] = deque()
        self._expiries: list[tuple[float, int, _Item]] = []
        """A heap of the waiters by when they expire (their budgets differ)."""
        self._order = itertools.count()
        self._service: float | None = None
        self._drain_gaps: deque[float] = deque(maxlen=_DRAIN_WINDOW)
        """Seconds the line stood non-empty before each of its latest grants."""
        self._line_mark: float | None = None
        """While the line is non-empty: since when, or since its last grant if later. A
        period that ended without a grant (its waiters expired or left) is forgotten: it
        shed them already, and would make the line look slow long after."""
        self._idle_since: float | None = None
        self._submitted = 0
        self._completed = 0
        self._failed = 0
        self._circuit_open = 0
        self._timed_out = 0
        self._expired = 0
        self._shed = 0
        self._rejected = 0
        self._cancelled = 0
        self._abandoned = 0
        self._abandoned_running = 0

    def __repr__(self) -> str:
        return (
            f"<ShortTermQueue {self._workers}/{self.config.max_workers} workers, "
            f"{self._running} running, {len(self._waiters)} waiting>"
        )

    def statistics(self) -> QueueStatistics:
        """A consistent snapshot of the queue's state and counters."""
        with self._lock:
            waiters = self._waiters
            return QueueStatistics(
                workers=self._workers,
                running=self._running,
                waiting=len(waiters),
                oldest_wait=self._clock() - waiters[0].enqueued if waiters else 0.0,
                service_time=self._service or 0.0,
                submitted=self._submitted,
                completed=self._completed,
                failed=self._failed,
                circuit_open=self._circuit_open,
                timed_out=self._timed_out,
                expired=self._expired,
                shed=self._shed,
                rejected=self._rejected,
                cancelled=self._cancelled,
                abandoned=self._abandoned,
                abandoned_running=self._abandoned_running,
            )

    # -- the engine's hook -------------------------------------------------------------

    async def _run(self, call: Call) -> Outcome:
        """
        Run ``call`` through the queue and return its outcome.

        Takes a free worker at once, or waits in line for one, then runs the
        listener in this task (a sync listener in a listener thread) under the
        time limit. A full line gives a ``"rejected"`` outcome without
        waiting; a wait past the expiry or the deadline, or a line already
        too long for them, gives ``"expired"``; both go through the
        listener's ``fallback``, ``on_error`` and ``default``. The outcome's
        ``elapsed`` includes the wait.

        Raises:
            BaseException: only the caller's own cancellation (or another
                ``BaseException`` such as ``KeyboardInterrupt``); the call
                then leaves the line, or is cancelled if it was running.
        """
        item = _Item(_RANKS[call.listener.options.criticality])
        refused = call.refusal()
        if refused is None:
            self._enter(item)
        else:
            # Its circuit is open: neither a place in line nor a worker.
            item.state = _REFUSED
            with self._lock:
                self._submitted += 1
        waited = item.state == _WAITING
        if waited:
            try:
                await self._wait(item)
            except BaseException:
                call.ended("cancelled", None)  # it never reached the listener: count it here
                raise
        try:
            if item.state == _GRANTED:
                # One class attribute read per queued call while nobody observes (metrics).
                observe = ShortTermQueue.wait_observer
                if observe is not None:
                    observe(item.granted_at - item.enqueued if waited else 0.0)
                # The runner only runs sync listeners (in a thread that keeps the worker).
                runner = functools.partial(self._in_thread, item, call)
                outcome = await call.run_async(
                    time_limit=self.config.task_time_limit, thread_runner=runner
                )
            else:  # refused, rejected or expired: its fallback may answer
                status, numbers = self._never_ran(item, refused)
                outcome = await call.never_ran_async(status, **numbers)
        except BaseException:
            self._finish(item, None)
            raise
        self._finish(item, outcome.status)
        return outcome

    def _enter(self, item: _Item) -> None:
        """
        Submit ``item``: a free worker at once (granted), a place in line
        (waiting), or neither: the line is full (rejected), or too long for
        its budget (expired, shed).
        """
        config = self.config
        left = _deadline.remaining()
        if left is not None and left < config.item_expiry:
            item.budget, item.by_deadline = left, True
        else:
            item.budget = config.item_expiry
        with self._lock:
            now = self._clock()
            self._submitted += 1
            if self._running < self._workers and not self._waiters:
                self._grant(item, now)
            elif len(self._waiters) >= config.max_pending and not self._displace(item):
                item.state = _REJECTED
            elif self._too_late(len(self._waiters) + 1, item, now):
                item.state = _EXPIRED
                item.shed = True
            else:
                item.prepare_wait(now)
                self._waiters.append(item)
                heapq.heappush(self._expiries, (item.expires, next(self._order), item))
            events = self._rebalance(now)
        if events:
            _emit(events)

    def _displace(self, item: _Item) -> bool:
        """
        Under the lock, the line full: whether ``item`` takes the place of
        the newest waiter of the least critical rank below its own, which is
        then rejected (as if it had come last). Criticality decides who is
        refused at a full line; the line's order stays first in, first out.
        """
        lowest: _Item | None = None
        for waiter in reversed(self._waiters):
            if waiter.rank > item.rank and (lowest is None or waiter.rank > lowest.rank):
                lowest = waiter
        if lowest is None:
            return False
        self._waiters.remove(lowest)
        lowest.state = _REJECTED  # its outcome names the full line, not how long it waited
        lowest.wake()
        return True

    def _standing(self, now: float) -> bool:
        """Under the lock: whether the line stands with the pool as large as it may be."""
        config, waiters = self.config, self._waiters
        return bool(
            waiters
            and self._workers >= config.max_workers
            and now - waiters[0].enqueued >= config.target_wait
        )

    def _too_late(self, place: int, item: _Item, now: float) -> bool:
        """
        Under the lock: whether ``item``, joining the line at ``place``, is
        predicted to wait past ``AT_RISK_FRACTION`` of its budget, or, while
        the line stands with the pool as large as it may be, past
        ``_STANDING_LIMIT`` x ``TARGET_WAIT``. By criticality: a critical
        call is held to its budget alone (it may join a standing line), a
        sheddable one joins no standing line at all.
        """
        per_place = self._seconds_per_place(now)
        if per_place is None:
            return False  # the line never moved yet: no prediction
        config = self.config
        limit = config.at_risk_fraction * item.budget
        if item.rank and self._standing(now):
            if item.rank == _SHEDDABLE:
                return True
            limit = min(limit, _STANDING_LIMIT * config.target_wait)
        return place * per_place > limit

    def _seconds_per_place(self, now: float) -> float | None:
        """
        Under the lock: how long the line takes to move up one place, from
        its measured drain rate: the time it stood non-empty over its last
        ``_DRAIN_WINDOW`` grants, the time since its last grant included (a
        line that stops moving slows the rate down at once). None before its
        first grant.
        """
        gaps = self._drain_gaps
        if not gaps:
            return None
        mark = self._line_mark
        since = 0.0 if mark is None else now - mark
        return (sum(gaps) + since) / len(gaps)

    # -- waiting -----------------------------------------------------------------------

    async def _wait(self, item: _Item) -> None:
        """Wait in line until granted a worker or expired."""
        config = self.config
        at_risk = item.enqueued + config.at_risk_fraction * config.item_expiry
        try:
            while item.state == _WAITING:
                now = self._clock()
                # Wake at the expiry and the at-risk age; the head of the line
                # also when the pool is due to grow (nothing else may happen),
                # unless it is as large as it may be (no need to wake then).
                due = item.expires if now >= at_risk else min(item.expires, at_risk)
                waiters = self._waiters
                if waiters and waiters[0] is item and self._workers < config.max_workers:
                    due = min(due, item.enqueued + config.target_wait)
                with anyio.move_on_after(max(0.0, due - now)) as timer:
                    await item.waiter.wait()
                if item.state != _WAITING:
                    break
                if not timer.cancelled_caught:
                    # Woken to become the head of the line: only its due time changes.
                    item.waiter.rearm()
                    continue
                with self._lock:
                    if item.state != _WAITING:
                        return  # granted or expired meanwhile
                    events = self._rebalance(self._clock())
                    if item.state == _WAITING:
                        item.waiter.rearm()
                if events:
                    _emit(events)
        except BaseException:
            self._withdraw(item)
            raise

    def _withdraw(self, item: _Item) -> None:
        """
        The waiting caller was cancelled: leave the line, or give back the
        worker it was just handed. It counts as cancelled, even if it had
        expired meanwhile: its caller never saw that outcome.
        """
        with self._lock:
            if item.state == _WAITING:
                self._waiters.remove(item)
            elif item.state == _GRANTED:
                self._running -= 1
            item.state = _WITHDRAWN
            self._cancelled += 1
            events = self._rebalance(self._clock())
        if events:
            _emit(events)

    def _never_ran(
        self, item: _Item, refused: CircuitOpen | None
    ) -> tuple[NeverRan, dict[str, Any]]:
        """
        The status of a call that never started (refused by its open circuit,
        rejected by a full line, or expired), and the queue's numbers that
        ``Call.never_ran_async`` builds its error and log line from.
        """
        if item.state == _REFUSED:
            return "circuit_open", {"refused": refused}
        if item.state == _REJECTED:
            return "rejected", {"max_pending": self.config.max_pending}
        return "expired", {
            "waited": item.waited,
            "expiry": item.budget,
            "deadline": item.by_deadline,
            "shed": item.shed,
        }

    # -- running -----------------------------------------------------------------------

    def _grant(self, item: _Item, now: float) -> None:
        # Under the lock: a worker goes to ``item``.
        item.state = _GRANTED
        item.granted_at = now
        self._running += 1

    def _finish(self, item: _Item, status: Status | None) -> None:
        """
        Count the call's outcome (None: its caller was cancelled) once its
        caller has it, and free its worker, unless an abandoned thread still
        holds it.
        """
        with self._lock:
            if status is None:
                self._cancelled += 1
            elif status == "ok":
                self._completed += 1
            elif status == "timeout":
                self._timed_out += 1
            elif status == "expired":
                self._expired += 1
                # Counted with its outcome, not when shed: a caller cancelled
                # meanwhile makes it "cancelled", and ``shed`` stays a part of ``expired``.
                self._shed += item.shed
            elif status == "rejected":
                self._rejected += 1
            elif status == "circuit_open":
                self._circuit_open += 1
            else:
                self._failed += 1
            if item.state != _GRANTED or item.abandoned:
                return
            item.state = _FINISHED
            events = self._free_worker(item)
        if events:
            _emit(events)

    def _free_worker(self, item: _Item) -> list[_LogEvent]:
        """Under the lock: the worker ``item`` held is free; measure it, hand it on."""
        self._running -= 1
        now = self._clock()
        self._measure(now - item.granted_at)
        return self._rebalance(now)

    def _measure(self, held: float) -> None:
        # Under the lock: how long a call held its worker, into the moving average.
        service = self._service
        self._service = held if service is None else service + _SERVICE_WEIGHT * (held - service)

    async def _in_thread(self, item: _Item, call: Call, sync_call: Callable[[], Any]) -> Any:
        """
        The listener's thread runner: run a sync call in a listener thread.

        If the caller stops waiting (time limit, cancellation) before the
        thread returns, the thread is abandoned and keeps the call's worker
        until it returns: the bound counts threads, not waiting callers.
        """
        job = call.thread_job(_THREAD_EVENTS)
        job.on_abandon = functools.partial(self._abandoned_thread, item)
        job.on_return = functools.partial(self._returned_thread, item)
        return await listener_threads().run(sync_call, job)

    def _abandoned_thread(self, item: _Item) -> None:
        with self._lock:
            item.abandoned = True
            self._abandoned += 1
            self._abandoned_running += 1

    def _returned_thread(self, item: _Item) -> None:
        # An abandoned thread returned: the worker it kept is free at last.
        with self._lock:
            self._abandoned_running -= 1
            events = self._free_worker(item)
        if events:
            _emit(events)

    # -- scaling -----------------------------------------------------------------------

    def _rebalance(self, now: float) -> list[_LogEvent]:
        """
        Under the lock, after any change: expire overdue waiters, grow if the
        line stands or is at risk (or a call expired), hand free workers to
        the line, shed the waiters it is predicted not to reach in time,
        shrink if idle long enough. Returns the log events to emit once the
        lock is released.
        """
        config = self.config
        waiters = self._waiters
        events: list[_LogEvent] = []
        expired_wait = self._expire_overdue(now)
        reason = None if expired_wait is None else "expired"
        oldest = expired_wait or 0.0
        if waiters:
            head_wait = now - waiters[0].enqueued
            oldest = max(oldest, head_wait)
            if reason is None and head_wait >= config.target_wait:
                reason = "standing"
            if reason is None and head_wait >= config.at_risk_fraction * config.item_expiry:
                reason = "at_risk"
        if reason is not None and self._workers < config.max_workers:
            # Enough for every call present (a cold pool under a sustained
            # load needs that many at once, not one doubling per TARGET_WAIT),
            # and at least twice as many (while the calls ahead are long, few
            # have gathered in line yet).
            needed = max(self._workers * 2, self._running + len(waiters))
            self._workers = min(config.max_workers, needed)
            events.append(
                (
                    "info",
                    "queue_scaled_up",
                    {
                        "reason": reason,
                        "workers": self._workers,
                        "oldest_wait_s": round(oldest, 6),
                        "waiting": len(waiters),
                    },
                )
            )
        granted = False
        service = self._service
        while waiters and self._running < self._workers:
            item = waiters.popleft()
            if item.by_deadline and service is not None and item.expires - now < service:
                # Its deadline would cut it short: the worker goes to one that can finish.
                self._shed_late(item, now)
                continue
            self._grant(item, now)
            self._drained(now)
            item.wake()
            granted = True
        self._shed_hopeless(now)
        if waiters and self._standing(now):
            self._shed_sheddable(now)
        if granted and waiters:
            waiters[0].wake()  # the new head watches the growth timer
        self._mark_line(now)
        shrunk = self._shrink(now)
        if shrunk is not None:
            events.append(shrunk)
        return events

    def _drained(self, now: float) -> None:
        # Under the lock: the line moved up one place (a waiter got a worker).
        mark = self._line_mark
        self._drain_gaps.append(0.0 if mark is None else now - mark)
        self._line_mark = now

    def _mark_line(self, now: float) -> None:
        # Under the lock: open or close the line's current non-empty period.
        if not self._waiters:
            self._line_mark = None
        elif self._line_mark is None:
            self._line_mark = now

    def _shed_hopeless(self, now: float) -> None:
        """
        Under the lock: shed every waiter whose predicted wait (its place in
        line x the time the line takes per place) is longer than what is left
        of its budget, at once rather than at its expiry.
        """
        waiters = self._waiters
        per_place = self._seconds_per_place(now) if waiters else None
        if per_place is None:
            return
        kept: list[_Item] | None = None
        for index, item in enumerate(waiters):
            place = index + 1 if kept is None else len(kept) + 1
            if place * per_place > item.expires - now:
                if kept is None:
                    kept = list(itertools.islice(waiters, index))
                self._shed_late(item, now)
            elif kept is not None:
                kept.append(item)
        if kept is not None:
            waiters.clear()
            waiters.extend(kept)

    def _shed_sheddable(self, now: float) -> None:
        """
        Under the lock, the line standing at ``MAX_WORKERS``: the sheddable
        waiters leave it first (shed), so the calls that matter more move up
        (the SRE book's criticality: the least important work is shed first).
        """
        waiters = self._waiters
        if not any(item.rank == _SHEDDABLE for item in waiters):
            return
        kept = [item for item in waiters if item.rank != _SHEDDABLE]
        for item in waiters:
            if item.rank == _SHEDDABLE:
                self._shed_late(item, now)
        waiters.clear()
        waiters.extend(kept)

    def _shed_late(self, item: _Item, now: float) -> None:
        # Under the lock: ``item`` leaves the line unstarted (its heap entry is skipped later).
        item.state = _EXPIRED
        item.shed = True
        item.waited = now - item.enqueued
        item.wake()

    def _expire_overdue(self, now: float) -> float | None:
        """Under the lock: expire the waiters past their budget; the longest wait expired."""
        expiries = self._expiries
        longest: float | None = None
        while expiries and expiries[0][0] <= now:
            _, _, item = heapq.heappop(expiries)
            if item.state != _WAITING:
                continue  # granted or withdrawn meanwhile
            self._waiters.remove(item)
            item.state = _EXPIRED
            item.waited = now - item.enqueued
            item.wake()
            longest = item.waited if longest is None else max(longest, item.waited)
        if not self._waiters:
            expiries.clear()
        return longest

    def _shrink(self, now: float) -> _LogEvent | None:
        config = self.config
        running = self._running
        if self._waiters or running >= self._workers:
            self._idle_since = None
            return None
        if self._idle_since is None:
            self._idle_since = now
            return None
        idle = now - self._idle_since
        if self._workers <= config.min_workers or idle < config.idle_shrink_after:
            return None
        previous = workers = self._workers
        floor = max(config.min_workers, running)
        for _ in range(int(idle // config.idle_shrink_after)):
            workers = max(floor, workers // 2)
            if workers == floor:
                break
        self._workers = workers
        self._idle_since = now
        if workers == previous:
            return None
        return (
            "info",
            "queue_scaled_down",
            {"workers": workers, "previous": previous, "idle_s": round(idle, 6)},
        )


def _emit(events: list[_LogEvent]) -> None:
    log = logger()
    for level, event, fields in events:
        getattr(log, level)(event, **fields)


# -- the process's queue -----------------------------------------------------------------


def get_queue() -> ShortTermQueue:
    """
    The process's short-term queue, built from ``PATCHBOARD["SHORT_TERM_QUEUE"]``
    on first use and rebuilt after the ``PATCHBOARD`` setting changes (calls
    already in the old queue finish there).

    Raises:
        SettingError: if ``PATCHBOARD`` is invalid.
    """
    config = get_settings().short_term_queue
    queue = state.queue
    if queue is None or queue.config is not config:
        with state.lock:
            if state.queue is None or state.queue.config is not config:
                state.queue = ShortTermQueue(config)
            queue = state.queue
    return queue


def queue_stats() -> QueueStatistics:
    """Statistics of the process's short-term queue (see :class:`QueueStatistics`)."""
    return get_queue().statistics()
