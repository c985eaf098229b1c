"""
A circuit breaker: the guard itself, its statistics and its registry (see
the package docstring for what it does). Every guard form goes through one
pair of thin shells (``__enter__``/``__exit__`` and their async twins) around
shared bookkeeping; only the store's I/O differs between them.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import threading
from asyncio import _get_running_loop
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from types import CoroutineType, TracebackType
from typing import Any, Literal, ParamSpec, Self, TypeAlias, TypeVar, Unpack, overload

from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal as DjangoSignal

from patchboard import _clock, _deadline
from patchboard._breaker._machine import (
    CLOSED,
    FAILURE,
    HALF_OPEN,
    OPEN,
    RELEASE,
    SLOW,
    SUCCESS,
    CircuitState,
    Control,
    Result,
    Transition,
    to_datetime,
)
from patchboard._breaker._memory import MemoryStore
from patchboard._breaker._redis import (
    RedisStore,
    listed_circuit_names,
    mask_url,
    redis_link,
    store_errors,
)
from patchboard._breaker._store import Ticket, UnusableStore
from patchboard._breaker._topology import store_kind
from patchboard._config import (
    BreakerConfig,
    BreakerOptions,
    Guard,
    get_settings,
    raw_setting,
    store_url,
)
from patchboard._exceptions import CircuitOpen
from patchboard._log import logger, name_signal
from patchboard._source import GENERIC, Forwarding, compiled, copy_defaults, forwarding
from patchboard._state import state

# Bound once: a fast sync entry marks its thread (gevent's monkey-patching, which
# makes it a greenlet, must come before importing patchboard, as gevent requires).
get_ident = threading.get_ident

P = ParamSpec("P")
R = TypeVar("R")

circuit_state_changed = DjangoSignal()
"""
Sent on every state change, with ``sender=CircuitBreaker`` and the keyword
arguments ``breaker`` (the :class:`CircuitBreaker`), ``old_state`` and
``new_state`` (``"closed"``, ``"open"`` or ``"half_open"``). Sent robustly: a
receiver that raises is logged and never disturbs the breaker. Under the Redis
store, the process whose call made the transition sends it. (A plain Django
signal: ``patchboard.receiver`` and its options work on it as on any signal.)
"""
name_signal(circuit_state_changed, "patchboard.circuit_state_changed")


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStatistics:
    """A snapshot of one breaker, from :meth:`CircuitBreaker.statistics`."""

    name: str
    state: CircuitState
    failures: int
    """Consecutive failures (``trip_rule="count"``), or failures in the window."""
    slow_calls: int
    """Slow calls in the window (``slow_call_duration``; 0 otherwise)."""
    opened_at: datetime | None
    retry_at: datetime | None
    """When an open circuit lets a probe through; ``None`` when closed or forced open."""
    rejected: int
    """Calls this process refused with ``CircuitOpen`` (lifetime of the instance)."""
    successes: int
    """Guarded calls in this process that returned."""
    failures_total: int
    """Guarded calls in this process that counted as failures."""
    store: str
    """``"memory"`` or the Redis URL (password masked)."""
    store_kind: Literal["memory", "redis", "redis_cluster", "redis_sentinel"]
    """``"memory"``, ``"redis"`` (one server), ``"redis_cluster"`` or ``"redis_sentinel"``."""
    forced: Literal["open", "closed"] | None
    """Set by :meth:`CircuitBreaker.force_open` / :meth:`~CircuitBreaker.force_closed`."""
    probes: int
    """Probes in flight (half-open)."""
    fallback: bool
    """The Redis store is unreachable: this process runs on in-process state."""


class _Tally:
    """
    A counter that threads can bump without a lock (``itertools.count`` is
    atomic); ``counter`` and ``add`` never change, so the hot path may keep
    them (``next(counter)`` is what ``add()`` does, for a little less).
    """

    __slots__ = ("_lock", "_taken", "add", "counter")

    def __init__(self) -> None:
        self.counter = itertools.count()
        self.add = self.counter.__next__
        self._taken = 0
        """Numbers taken by reads and resets, not by ``add``."""
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        # Every read takes one number too.
        with self._lock:
            value = next(self.counter) - self._taken
            self._taken += 1
            return value

    def reset(self) -> None:
        with self._lock:
            self._taken = next(self.counter) + 1


ExcType: TypeAlias = type[BaseException] | None
Tb: TypeAlias = TracebackType | None
_Entry: TypeAlias = tuple[Ticket | None, Any] | tuple[Ticket, None, float]
"""One ``with``/``async with`` entry: its ticket (None: nested), and the entry it is
in; a breaker with ``slow_call_duration`` adds when the entry was admitted."""
MAX_KEY_LENGTH = 200
"""The longest key of a keyed breaker (it is part of the Redis key and of the name)."""
LISTED_FROM_STORE = 100
"""At most this many circuits of one keyed breaker, read from Redis, are listed."""


def default_store() -> str:
    """
    ``PATCHBOARD["STORE"]``, validated on its own: building a breaker never
    depends on the rest of the setting being valid.

    Raises:
        ImproperlyConfigured: ``STORE`` is not ``"memory"`` or a Redis URL.
    """
    raw = raw_setting()
    store = raw.get("STORE", "memory") if isinstance(raw, dict) else "memory"
    try:
        store_url("STORE", store)
    except ValueError as exc:
        raise ImproperlyConfigured(f'PATCHBOARD["STORE"]: {exc}') from None
    return store


class CircuitBreaker:
    """
    A named circuit breaker (see the module docstring for the rules).

    ``CircuitBreaker(name, **options)`` takes the fields of
    :class:`~patchboard.BreakerConfig` as keyword arguments (or a ready
    ``config=``) and registers the instance under ``name`` for
    :func:`get_breaker`. The state lives in ``store`` (``"memory"``, in this
    process; or a ``redis://`` URL, shared by every process using it), by
    default ``PATCHBOARD["STORE"]``.

    Raises:
        TypeError, ValueError: an invalid option (the message names it).
        ValueError: a breaker named ``name`` already exists; share it with
            :func:`get_breaker`.

    A store that cannot be used (a Redis URL that is malformed, or without
    the ``redis`` package; an invalid ``PATCHBOARD["STORE"]``) does not stop
    the breaker from being built, at import: ``manage.py check`` reports it
    (``patchboard.E010``, ``E001``), and every guarded call raises
    ``ImproperlyConfigured`` (naming the breaker and the URL, its password
    masked).
    """

    __slots__ = (
        "__weakref__",
        "_busy",
        "_call_async",
        "_call_sync",
        "_circuits",
        "_entries",
        "_excluded_predicates",
        "_excluded_types",
        "_failed",
        "_family",
        "_fast_entry",
        "_in_context",
        "_key_of",
        "_keys_lock",
        "_ok",
        "_ok_add",
        "_rejected",
        "_remote",
        "_slow",
        "_store",
        "config",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        config: BreakerConfig | None = None,
        **options: Unpack[BreakerOptions],
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if config is None:
            config = BreakerConfig.from_options(options)
        elif options:
            raise TypeError(
                f"pass either config or keyword options, not both (got {sorted(options)})"
            )
        self._setup(name, config)
        _register(self)

    def _setup(self, name: str, config: BreakerConfig) -> None:
        """Build the breaker (a keyed breaker's circuits are built here too, unregistered)."""
        self.name = name
        self.config = config
        self._store: MemoryStore | RedisStore | UnusableStore
        url = config.store
        try:
            url = url or default_store()
            self._store = (
                MemoryStore(name, config) if url == "memory" else RedisStore(name, config, url)
            )
        except ImproperlyConfigured as problem:
            # Reported by manage.py check; raised by every guarded call.
            label = mask_url(config.store) if config.store else 'PATCHBOARD["STORE"]'
            # A URL that cannot be used still says what it was meant to be.
            kind = store_kind(url) if url else "memory"
            self._store = UnusableStore(label, problem, kind=kind)
        self._key_of = config.key_function
        self._family: str | None = None
        """A keyed breaker's circuit: the keyed breaker's name."""
        self._circuits: OrderedDict[str, CircuitBreaker] | None = None
        if self._key_of is not None:
            # The keyed breaker guards nothing itself: its circuits do, one per key.
            self._circuits = OrderedDict()
            self._keys_lock = threading.Lock()
            self._store = UnusableStore(
                self._store.label,
                f"circuit breaker {name!r} is keyed: guard a call with "
                f"breaker.circuit(key), or let a listener's call compute its key",
                error=TypeError,
                kind=self._store.kind,
            )
        self._remote = self._store if isinstance(self._store, RedisStore) else None
        self._slow = config.slow_call_duration
        self._excluded_types = config.excluded_types
        self._excluded_predicates = config.excluded_predicates
        self._entries: ContextVar[_Entry | None] = ContextVar(
            f"patchboard._breaker.{name}", default=None
        )
        self._fast_entry: _Entry = (self._store.admitted, None)
        self._busy: set[int] = set()
        """The threads with a fast sync entry in flight, by ident (see the guards)."""
        self._in_context = self._entries.get
        self._new_tallies()
        self._call_sync = self._guard(None, _SYNC_GUARD)
        self._call_async = self._guard(None, _ASYNC_GUARD)

    # -- guards --------------------------------------------------------------
    #
    # Every guard form is a ``with``/``async with`` entry: ``call()``,
    # ``call_sync()`` and decorated functions enter the breaker as a block.
    # Entering admits (or refuses) the call; leaving counts its result and
    # reports it to the store when the store needs it. While the store is
    # ``fast`` (closed, no failures recorded), admission and a success are
    # attribute checks, with no lock and no call into the store.
    #
    # Each entry's ticket is kept on a stack per context (task, thread), in
    # ``self._entries``, so that concurrent entries never share one. An entry
    # made inside another entry of the same breaker (a guarded function passed
    # to ``call()``, a decorated function called in a ``with`` block) pushes
    # no ticket: it is neither admitted nor counted, and the outer entry
    # decides, so re-entry can neither refuse a call already admitted nor
    # count one call twice.
    #
    # A context variable's write costs more than the rest of a fast entry, so
    # a sync entry on the fast path (``call_sync()``, a decorated function,
    # ``with`` outside an event loop) writes none: it marks its thread busy
    # instead (its ident in ``self._busy``, which only that thread adds or removes)
    # until it leaves. While its thread is busy, any entry of that thread is
    # nested in it: nothing else runs in the thread meanwhile (a sync function
    # cannot await; a ``with`` block may, so inside a running loop ``with``
    # never marks its thread). The async forms and every entry off the fast
    # path keep to the context stack; a thread is only marked by an entry with
    # an empty stack, so the two never disagree. What the mark cannot tell: an
    # entry that its guarded code makes in another thread, with a copy of its
    # context (async_to_sync's loop), is a call of its own.

    async def __aenter__(self) -> Self:
        """
        Admit this entry or refuse it.

        Raises:
            CircuitOpen: the circuit is open (or half-open with every probe
                slot taken); the block does not run.
        """
        if self._needs_store():
            self._push(await self._aacquire())
        return self

    async def __aexit__(self, exc_type: ExcType, exc: BaseException | None, tb: Tb) -> None:
        report = self._leave(exc)
        if report is not None:
            await self._arecord(*report)

    def __enter__(self) -> Self:
        """
        The sync twin of ``async with``: for sync code (WSGI views, threads).

        Raises:
            CircuitOpen: the circuit is open; the block does not run.
        """
        if self._store.fast and _get_running_loop() is None and self._in_context() is None:
            me = get_ident()
            busy = self._busy
            if me not in busy:  # the thread's fast entry: see above
                busy.add(me)
                return self
        if self._needs_store():
            self._push(self._acquire())
        return self

    def __exit__(self, exc_type: ExcType, exc: BaseException | None, tb: Tb) -> None:
        if self._in_context() is None:
            # The thread's fast entry, or an __exit__ without __enter__ (counts nothing).
            me = get_ident()
            busy = self._busy
            if me in busy:
                busy.discard(me)
                if exc is None and self._store.fast:
                    self._ok_add()
                else:
                    self._leave_fast(exc)
            return
        report = self._leave(exc)
        if report is not None:
            self._record(*report)

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """
        Await ``fn(*args, **kwargs)`` through the breaker and return its result.

        Unlike :meth:`call_sync`, ``fn`` must return an awaitable.

        Raises:
            CircuitOpen: the circuit is open; ``fn`` was not called.
            TypeError: ``fn`` returned something that cannot be awaited (use
                :meth:`call_sync`); neither success nor failure is counted.
            Exception: whatever ``fn`` raised, unchanged (and counted).
        """
        result: R = await self._call_async(fn, args, kwargs)
        return result

    def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """
        Call ``fn(*args, **kwargs)`` through the breaker and return its result.

        With a Redis store this does blocking I/O: call it from sync code,
        not from an event loop (use :meth:`call` there).

        Raises:
            CircuitOpen: the circuit is open; ``fn`` was not called.
            TypeError: ``fn`` is an async function, or returned an awaitable
                (use :meth:`call`); neither success nor failure is counted.
            Exception: whatever ``fn`` raised, unchanged (and counted).
        """
        result: R = self._call_sync(fn, args, kwargs)
        return result

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """
        Decorate ``fn`` so every call goes through the breaker: an ``async def``
        as by :meth:`call`, a plain function as by :meth:`call_sync`.

        Raises:
            TypeError: ``fn`` is a generator or async generator function
                (the breaker could only guard the creation of the generator).
        """
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"a circuit breaker cannot guard the generator function {fn.__qualname__}"
            )
        if not inspect.iscoroutinefunction(fn):
            return functools.wraps(fn)(self._guard(fn, _SYNC_GUARD))
        return functools.wraps(fn)(self._guard(fn, _ASYNC_GUARD))

    # The call forms are ``with self`` / ``async with self`` around the call,
    # spelled out: the context-manager protocol and the helpers cost more than
    # the rest of an entry on the fast path (closed, not nested), which is
    # therefore inline here; its steps are _needs_store's and _leave's.

    def _guard(self, fn: Callable[..., Any] | None, template: str) -> Callable[..., Any]:
        """
        ``fn`` guarded by the decorator (``template`` is :data:`_SYNC_GUARD` or
        :data:`_ASYNC_GUARD`); with None, the guard of ``call_sync()`` or ``call()``,
        called with ``(fn, args, kwargs)``.
        """
        if fn is None:
            spelled, callee = _CALL, "fn"
        else:
            spelled, callee = forwarding(fn, reserved="_pb_") or GENERIC, "_pb_fn"
        guarded: Callable[..., Any] = _guard_maker(template, spelled, callee)(
            fn,
            self._store,
            self._in_context,
            self._busy,
            self._busy.add,
            self._busy.discard,
            self._ok.counter,
            self._leave_fast,
            self._entries,
            self._fast_entry,
            self.__aexit__,
            self._run_sync_in_context,
            self._run_async_in_context,
            _refuse_awaitable,
        )
        if fn is not None and spelled is not GENERIC:
            copy_defaults(guarded, fn)
        return guarded

    def _run_sync_in_context(
        self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        """A sync call form's entry on the context stack (see the guards)."""
        if self._needs_store():
            self._push(self._acquire())
        try:
            result = fn(*args, **kwargs)
            if hasattr(result, "__await__"):
                raise _refuse_awaitable(fn, result)
        except BaseException as exc:
            self.__exit__(None, exc, None)
            raise
        self.__exit__(None, None, None)
        return result

    async def _run_async_in_context(
        self, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        """An async call form's entry off the fast path (see the guards)."""
        if self._needs_store():
            self._push(await self._aacquire())
        try:
            awaitable = fn(*args, **kwargs)
            if type(awaitable) is not CoroutineType and not hasattr(awaitable, "__await__"):
                raise _not_awaitable(fn, awaitable)
            result = await awaitable
        except BaseException as exc:
            await self.__aexit__(None, exc, None)
            raise
        await self.__aexit__(None, None, None)
        return result

    # -- the bookkeeping shared by every form ----------------------------------

    def _in_busy_thread(self) -> bool:
        """Whether this thread has a fast sync entry in flight: an entry now is nested in it."""
        return get_ident() in self._busy

    def _needs_store(self) -> bool:
        """
        Enter without the store where possible: a nested entry (no ticket), or
        the fast path (the shared ticket). False when the store must admit.
        """
        entries = self._entries
        stack = entries.get()
        if stack is not None or (self._busy and self._in_busy_thread()):
            entries.set((None, stack))  # inside this breaker already: the outer entry decides
            return False
        if not self._store.fast:
            return True
        entries.set(self._fast_entry)  # built once: no allocation per call
        return False

    def _push(self, ticket: Ticket) -> None:
        if self._slow is None:
            self._entries.set((ticket, None))
        else:
            self._entries.set((ticket, None, _clock.now()))

    def _leave(self, exc: BaseException | None) -> tuple[Ticket, Result] | None:
        """
        Pop this entry and count its result; the ticket and the result to
        report to the store, or None when there is nothing to report (a
        success on the fast path; a nested entry, which counts nothing).
        """
        entries = self._entries
        stack = entries.get()
        if stack is None:  # __exit__ without __enter__: count nothing
            return None
        ticket, outer = stack[0], stack[1]
        entries.set(outer)
        if ticket is None:
            return None
        if exc is not None:
            result = self._classify(exc)
            if result == RELEASE:
                return ticket, result
        else:
            self._ok_add()
            if stack is self._fast_entry and self._store.fast:
                return None
            result = SUCCESS
        if self._slow is not None and len(stack) == 3 and _clock.now() - stack[2] >= self._slow:
            result |= SLOW
        return ticket, result

    def _leave_fast(self, exc: BaseException | None) -> None:
        """Count the result of a thread's fast sync entry (left), and report it if needed."""
        store = self._store
        if exc is None:
            self._ok_add()
            if store.fast:
                return
            result = SUCCESS  # a failure elsewhere meanwhile: the store hears of it
        else:
            result = self._classify(exc)
            if result == RELEASE:
                return  # a normal admission holds nothing to give back
        self._record(store.admitted, result)

    def _classify(self, exc: BaseException) -> Result:
        if not isinstance(exc, Exception) or type(exc) is _Misuse:
            # Cancellation, KeyboardInterrupt, a misuse of the breaker: not the service's doing.
            return RELEASE
        if self._excluded_types and isinstance(exc, self._excluded_types):
            return RELEASE
        for predicate in self._excluded_predicates:
            try:
                if predicate(exc):
                    return RELEASE
            except Exception as error:
                logger().error(
                    "circuit_exclude_failed",
                    breaker=self.name,
                    predicate=repr(predicate),
                    error=repr(error),
                )
        self._failed.add()
        return FAILURE

    # -- the store's I/O: the only difference between the sync and async forms --

    def _acquire(self) -> Ticket:
        try:
            ticket = self._store.acquire()
        except CircuitOpen:
            self._rejected.add()
            raise
        finally:
            self._emit()
        if ticket.probe is not None and _deadline.is_late():
            self._record(ticket, RELEASE)
            raise self._refuse_late_caller()
        return ticket

    async def _aacquire(self) -> Ticket:
        try:
            ticket = await self._store.aacquire()
        except CircuitOpen:
            self._rejected.add()
            raise
        finally:
            await self._aemit()
        if ticket.probe is not None and _deadline.is_late():
            await self._arecord(ticket, RELEASE)
            raise self._refuse_late_caller()
        return ticket

    def _refusal(self) -> CircuitOpen | None:
        """
        The ``CircuitOpen`` an entry would get now, when the store can tell
        without I/O (the circuit is open), counted as a rejected call; None
        when it may be admitted or only the store can tell. The short-term
        queue asks before a call takes a place in line.
        """
        refused = self._store.refusal()
        if refused is not None:
            self._rejected.add()
        return refused

    def _refuse_late_caller(self) -> CircuitOpen:
        """
        A late caller (see ``patchboard._deadline``) was made a half-open
        probe: it would likely be cut short and tell nothing, so its slot
        has been given back for a caller with time to wait for the answer.
        Decided on the store's fresh answer, never on this process's view.
        """
        self._rejected.add()
        return CircuitOpen(self.name, self.retry_at)

    def _record(self, ticket: Ticket, result: Result) -> None:
        self._store.record(ticket, result)
        self._emit()

    async def _arecord(self, ticket: Ticket, result: Result) -> None:
        try:
            await self._store.arecord(ticket, result)
        finally:
            # A cancelled caller's report still ends (see the stores): what it changed
            # is logged and signalled now, not by whichever call comes next.
            await self._aemit()

    def _emit(self) -> None:
        """Log and signal the store's pending transitions (``send_robust``)."""
        if not self._store.pending:
            return
        responses: list[tuple[Any, Any]]
        for transition in self._drain():
            try:
                responses = circuit_state_changed.send_robust(
                    sender=CircuitBreaker, breaker=self, **_states(transition)
                )
            except Exception as exc:  # e.g. an async receiver reached from a running loop
                responses = [(circuit_state_changed, exc)]
            self._log_receiver_errors(responses)

    async def _aemit(self) -> None:
        """The async twin of :meth:`_emit` (``asend_robust``)."""
        if not self._store.pending:
            return
        responses: list[tuple[Any, Any]]
        for transition in self._drain():
            try:
                responses = await circuit_state_changed.asend_robust(
                    sender=CircuitBreaker, breaker=self, **_states(transition)
                )
            except Exception as exc:
                responses = [(circuit_state_changed, exc)]
            self._log_receiver_errors(responses)

    def _drain(self) -> Iterable[Transition]:
        """The store's pending transitions, each logged as it is taken."""
        pending = self._store.pending
        while pending:
            try:
                transition = pending.popleft()
            except IndexError:  # another thread took it
                return
            self._log(transition)
            yield transition

    def _log(self, transition: Transition) -> None:
        event, level = _TRANSITION_EVENTS[transition.new]
        retry_at = to_datetime(transition.retry_at)
        getattr(logger(), level)(
            event,
            breaker=self.name,
            failures=transition.failures,
            retry_at=retry_at.isoformat() if retry_at is not None else None,
            old_state=transition.old,
            forced=transition.forced,
        )

    def _log_receiver_errors(self, responses: Iterable[tuple[Any, Any]]) -> None:
        for receiver, response in responses:
            if isinstance(response, BaseException):
                logger().error(
                    "circuit_signal_receiver_failed",
                    breaker=self.name,
                    receiver=repr(receiver),
                    error=repr(response),
                )

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """
        ``"closed"``, ``"open"`` or ``"half_open"``, as this process knows it.

        An open circuit past its ``retry_at`` reads ``"half_open"``: the next
        call is a probe (the transition is logged and signalled when it is
        admitted). With a Redis store this is the last view (see
        ``sync_interval``); ``await get_state()`` asks Redis.
        """
        return self._store.state

    @property
    def retry_at(self) -> datetime | None:
        """When an open circuit lets a probe through (UTC); ``None`` when closed
        or forced open."""
        view = self._store.view()
        return None if view.state == CLOSED else to_datetime(view.retry_at)

    async def get_state(self) -> CircuitState:
        """
        The state, asking the store first (one round trip with Redis; if Redis
        is unreachable, the in-process fallback's state).
        """
        await self._acontrol("read", quiet=True)
        return self._store.state

    def get_state_sync(self) -> CircuitState:
        """The sync twin of :meth:`get_state` (blocking I/O with Redis)."""
        self._control("read", quiet=True)
        return self._store.state

    def statistics(self) -> BreakerStatistics:
        """The breaker's state as this process knows it, and its counters."""
        view = self._store.view()
        return BreakerStatistics(
            name=self.name,
            state=view.state,
            failures=view.failures,
            slow_calls=view.slow_calls,
            opened_at=to_datetime(view.opened_at) if view.state != CLOSED else None,
            retry_at=to_datetime(view.retry_at) if view.state != CLOSED else None,
            rejected=self._rejected.value,
            successes=self._ok.value,
            failures_total=self._failed.value,
            store=self._store.label,
            store_kind=self._store.kind,
            forced=view.forced,
            probes=view.probes,
            fallback=view.fallback,
        )

    def __repr__(self) -> str:
        view = self._store.view()
        parts = [f"<CircuitBreaker {self.name!r} {view.state}"]
        if view.forced is not None:
            parts.append(f"forced={view.forced}")
        parts.append(f"failures={view.failures}")
        if view.state != CLOSED:
            retry_at = to_datetime(view.retry_at)
            parts.append(f"retry_at={retry_at.isoformat() if retry_at else None}")
        if view.probes:
            parts.append(f"probes={view.probes}")
        if self._remote is not None:
            parts.append(f"store={self._store.label}")
            if view.fallback:
                parts.append("fallback")
        return " ".join(parts) + ">"

    # -- control -------------------------------------------------------------
    #
    # Each control has a sync form (usable anywhere; with Redis it blocks on
    # one round trip) and an async twin for event loops.

    def force_open(self) -> None:
        """
        Open the circuit until :meth:`force_closed` or :meth:`reset`: every call
        fails with ``CircuitOpen(retry_at=None)``; no probes.

        Raises:
            redis.RedisError: the Redis store is unreachable (this process's
                fallback state has changed anyway).
        """
        self._control("force_open")

    def force_closed(self) -> None:
        """
        Close the circuit and keep it closed: failures are not counted until
        :meth:`reset`.

        Raises:
            redis.RedisError: the Redis store is unreachable.
        """
        self._control("force_closed")

    def reset(self) -> None:
        """
        Back to closed with no failures recorded, lifting any forced state
        (the counters of :meth:`statistics` are lifetime counters and stay).

        Raises:
            redis.RedisError: the Redis store is unreachable.
        """
        self._control("reset")

    async def aforce_open(self) -> None:
        """The async twin of :meth:`force_open`."""
        await self._acontrol("force_open")

    async def aforce_closed(self) -> None:
        """The async twin of :meth:`force_closed`."""
        await self._acontrol("force_closed")

    async def areset(self) -> None:
        """The async twin of :meth:`reset`."""
        await self._acontrol("reset")

    def _control(self, action: Control, *, quiet: bool = False) -> None:
        # quiet: a read that fails leaves the fallback's state to answer (logged by the store).
        try:
            with contextlib.suppress(Exception) if quiet else contextlib.nullcontext():
                self._store.force(action)
        finally:
            self._emit()

    async def _acontrol(self, action: Control, *, quiet: bool = False) -> None:
        try:
            with contextlib.suppress(Exception) if quiet else contextlib.nullcontext():
                await self._store.aforce(action)
        finally:
            await self._aemit()

    async def aclose(self) -> None:
        """Close the Redis store's async connections of the running event loop."""
        if self._remote is not None:
            await self._remote.link.aclose()

    def _forget(self) -> None:
        """A fresh closed state and zeroed counters, reporting nothing (``testing.reset``)."""
        self._store.forget()
        self._store.pending.clear()
        for tally in (self._ok, self._failed, self._rejected):
            tally.reset()
        if self._circuits is not None:
            with self._keys_lock:
                self._circuits.clear()

    # -- keyed circuits ------------------------------------------------------

    @property
    def keyed(self) -> bool:
        """Whether this breaker keeps one circuit per key (``key=``)."""
        return self._circuits is not None

    def circuit(self, key: str) -> CircuitBreaker:
        """
        The circuit of ``key`` in a keyed breaker, made on first use.

        Each circuit is a ``CircuitBreaker`` of its own named
        ``"<name>[<key>]"`` (not registered: :meth:`circuits` lists them,
        ``get_breaker("<name>[<key>]")`` finds one), with this breaker's
        options and store; a listener's call picks its circuit with ``key``.
        In this process at most ``max_keys`` circuits are kept, the most
        recently used: past the bound, the least recently used *closed* one
        is dropped (its failures with it). Only when every circuit is open
        or half-open is the least recently used of them dropped, and logged
        (``circuit_key_evicted``, a warning): with the memory store its
        state is lost, and its key starts closed again on its next call;
        with Redis the state stays in Redis and the key's next call reads
        it back. In Redis, a circuit's keys expire an hour after last use.

        Raises:
            TypeError: this breaker is not keyed, or ``key`` is not a string.
            ValueError: ``key`` is empty or longer than 200 characters.
        """
        circuits = self._circuits
        if circuits is None:
            raise TypeError(f"circuit breaker {self.name!r} has no key: guard calls with it")
        with self._keys_lock:
            child = circuits.get(key)
            if child is not None:
                circuits.move_to_end(key)
                return child
        if not isinstance(key, str):
            raise TypeError(f"circuit breaker {self.name!r}: a key must be a str, got {key!r}")
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ValueError(
                f"circuit breaker {self.name!r}: a key must have 1 to {MAX_KEY_LENGTH} "
                f"characters, got {key[: MAX_KEY_LENGTH + 1]!r}"
            )
        child = self._new_circuit(key)
        with self._keys_lock:
            known = circuits.setdefault(key, child)
            if known is child and len(circuits) > self.config.max_keys:
                self._evict(circuits)
            return known

    def _new_circuit(self, key: str) -> CircuitBreaker:
        """The circuit of ``key``, made (neither registered nor kept)."""
        child = CircuitBreaker.__new__(CircuitBreaker)
        child._setup(f"{self.name}[{key}]", replace(self.config, key=None))
        child._family = self.name
        return child

    def _circuits_in_store(
        self, known: dict[str, CircuitBreaker]
    ) -> tuple[list[CircuitBreaker], str | None]:
        """
        A keyed breaker's circuits that its Redis store holds open,
        half-open or forced, less the ``known`` keys, each made for the caller (not
        kept); and a note for an operator when the listing is incomplete.
        Nothing for a memory store. Blocking I/O (see ``listed_circuit_names``).
        """
        try:
            url = self.config.store or default_store()
            link = None if url == "memory" else redis_link(url)
            errors = store_errors()
        except (ImproperlyConfigured, ValueError, ImportError):
            return [], None  # a store that cannot be used: manage.py check reports it
        if link is None:
            return [], None
        if link.down_until:
            return [], f"{self.name}: Redis is unreachable, its circuits there are not listed"
        try:
            names, capped = listed_circuit_names(link, self.name, LISTED_FROM_STORE)
        except errors as exc:
            return [], f"{self.name}: its circuits in Redis could not be listed ({exc!r})"
        found = []
        for name in names:
            key = name[len(self.name) + 1 : -1]
            if key not in known and 0 < len(key) <= MAX_KEY_LENGTH:
                found.append(self._new_circuit(key))
        note = None
        if capped:
            note = (
                f"{self.name}: more than {LISTED_FROM_STORE} of its circuits are open, "
                f"half-open or forced in Redis; {LISTED_FROM_STORE} of them are listed"
            )
        return found, note

    def circuits(self) -> dict[str, CircuitBreaker]:
        """A keyed breaker's circuits in this process, by key, least recently used first."""
        if self._circuits is None:
            return {}
        with self._keys_lock:
            return dict(self._circuits)

    def _evict(self, circuits: OrderedDict[str, CircuitBreaker]) -> None:
        # Under _keys_lock, one circuit over the bound: the least recently used closed
        # one, never the one just made (the last).
        for key, child in itertools.islice(circuits.items(), len(circuits) - 1):
            if child._store.state is CLOSED and child._store.view().forced is None:
                del circuits[key]
                return
        key, child = circuits.popitem(last=False)
        logger().warning(
            "circuit_key_evicted",
            breaker=self.name,
            key=key,
            state=child._store.state,
            shared=child._remote is not None,
            max_keys=self.config.max_keys,
        )

    def _for_call(self, sender: object, kwargs: dict[str, Any]) -> CircuitBreaker:
        """
        The circuit of a listener's call: ``key(sender, **kwargs)``'s.

        Raises:
            ValueError: the key function raised (chained) or gave no usable key.
        """
        assert self._key_of is not None
        try:
            key = self._key_of(sender, **kwargs)
        except Exception as exc:
            raise ValueError(
                f"circuit breaker {self.name!r}: its key function failed on this call: {exc!r}"
            ) from exc
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        if not isinstance(key, str):
            raise ValueError(
                f"circuit breaker {self.name!r}: its key function returned {key!r}, not a str"
            )
        return self.circuit(key)

    def _new_tallies(self) -> None:
        self._ok = _Tally()
        self._ok_add = self._ok.add
        self._failed = _Tally()
        self._rejected = _Tally()


class _Misuse(TypeError):
    """The breaker was used the wrong way (it counts as neither success nor failure)."""


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _not_awaitable(fn: object, result: object) -> _Misuse:
    """What ``call()`` raises when ``fn`` returned something it cannot await."""
    return _Misuse(
        f"breaker.call() awaits what {_name(fn)} returns, but it returned "
        f"{type(result).__qualname__}: use breaker.call_sync() for a sync function"
    )


def _refuse_awaitable(fn: object, result: object) -> _Misuse:
    """What ``call_sync()`` raises when ``fn`` returned an awaitable (an async function)."""
    if inspect.iscoroutine(result):
        result.close()  # never awaited: no "was never awaited" warning
    return _Misuse(
        f"breaker.call_sync() cannot call the async function {_name(fn)}: it "
        f"returned a {type(result).__qualname__}; use await breaker.call(...)"
    )


_MAKE = """
def make(_pb_fn, _pb_store, _pb_in_context, _pb_busy, _pb_mark, _pb_unmark, _pb_ok, _pb_leave_fast,
         _pb_entries, _pb_fast_entry, _pb_aexit, _pb_in_context_run, _pb_in_context_arun,
         _pb_refuse):"""
"""The factory of a guard, taking what it reads (each template uses its part of it)."""
_SYNC_GUARD = (
    _MAKE
    + """
    def guarded({f.parameters}):
        if _pb_store.fast and _pb_in_context() is None:
            _pb_me = _pb_get_ident()
            if _pb_me not in _pb_busy:  # the thread's fast entry: see the guards
                _pb_mark(_pb_me)
                try:
                    _pb_result = {fn}({f.call})
                except _pb_BaseException as _pb_exc:
                    _pb_unmark(_pb_me)
                    _pb_leave_fast(_pb_exc)
                    raise
                _pb_unmark(_pb_me)
                if _pb_result is not None and _pb_hasattr(_pb_result, "__await__"):
                    raise _pb_refuse({fn}, _pb_result)  # counts nothing
                if _pb_store.fast:
                    _pb_next(_pb_ok)
                else:
                    _pb_leave_fast(None)
                return _pb_result
        return _pb_in_context_run({fn}, ({f.args}), {{{f.kwargs}}})
    return guarded
"""
)
"""
The sync guard of a function: its fast path (closed, not nested) is inline and
reads only the closure's cells, since a frame or an attribute lookup more would
cost as much as the rest of it; every other entry goes on the context stack
(``_run_sync_in_context``). The guard has the function's own parameters where
they can be spelled (``patchboard._source``): passing them on by name costs a
fifth of what ``*args, **kwargs`` would. Names starting with ``_pb_`` are the
guard's own (builtins too: a parameter may be called ``hasattr``). The guard of
``call_sync()`` calls the function it is given (``fn``).
"""
_ASYNC_GUARD = (
    _MAKE
    + """
    async def guarded({f.parameters}):
        # A thread with a fast sync entry in flight (rare): _needs_store tells whose.
        _pb_fast = _pb_in_context() is None and _pb_store.fast and not _pb_busy
        if _pb_fast:
            _pb_entries.set(_pb_fast_entry)  # built once: no allocation per call
            try:
                _pb_awaitable = {fn}({f.call})
                if _pb_type(_pb_awaitable) is not _pb_CoroutineType and not _pb_hasattr(
                    _pb_awaitable, "__await__"
                ):
                    raise _pb_not_awaitable({fn}, _pb_awaitable)
                _pb_result = await _pb_awaitable
            except _pb_BaseException as _pb_exc:
                await _pb_aexit(None, _pb_exc, None)
                raise
            if _pb_store.fast:
                _pb_entries.set(None)
                _pb_next(_pb_ok)
            else:
                await _pb_aexit(None, None, None)
            return _pb_result
        return await _pb_in_context_arun({fn}, ({f.args}), {{{f.kwargs}}})
    return guarded
"""
)
"""
The async guard of a function: :data:`_SYNC_GUARD`'s twin, for ``call()`` and a
decorated ``async def``. Its fast entry is the context stack's shared entry.
"""
_GUARD_GLOBALS = {
    "_pb_get_ident": get_ident,
    "_pb_hasattr": hasattr,
    "_pb_type": type,
    "_pb_next": next,
    "_pb_BaseException": BaseException,
    "_pb_CoroutineType": CoroutineType,
    "_pb_not_awaitable": _not_awaitable,
}
_CALL = Forwarding("fn, args, kwargs", "*args, **kwargs", "*args,", "**kwargs")


@functools.lru_cache(maxsize=256)
def _guard_maker(
    template: str, spelled: Forwarding, callee: str
) -> Callable[..., Callable[..., Any]]:
    """
    The factory of ``template``'s guard for a function spelled so: compiled once,
    since every breaker and keyed circuit needs the guards of ``call()`` and
    ``call_sync()``, and compiling costs about 200 us (signatures are few: they
    come from the code).
    """
    source = template.format(f=spelled, fn=callee)
    make: Callable[..., Callable[..., Any]] = compiled(source, "make", _GUARD_GLOBALS)
    return make


_TRANSITION_EVENTS: dict[CircuitState, tuple[str, str]] = {
    OPEN: ("circuit_opened", "warning"),
    HALF_OPEN: ("circuit_half_opened", "info"),
    CLOSED: ("circuit_closed", "info"),
}


def _states(transition: Transition) -> dict[str, CircuitState]:
    return {"old_state": transition.old, "new_state": transition.new}


# -- the registry --------------------------------------------------------------------


def _register(breaker: CircuitBreaker) -> None:
    with state.lock:
        if breaker.name in state.breakers:
            raise ValueError(
                f"a circuit breaker named {breaker.name!r} already exists; share it with "
                f"get_breaker({breaker.name!r})"
            )
        state.breakers[breaker.name] = breaker


def get_breaker(name_or_instance: str | CircuitBreaker) -> CircuitBreaker:
    """
    The one breaker named ``name_or_instance`` (an instance is returned as is).

    A name not yet in use is looked up in ``PATCHBOARD["BREAKERS"]`` and the
    breaker built from it on first use.

    Raises:
        ImproperlyConfigured: no breaker has that name and none is declared
            (the message lists the known names), or its declaration is invalid.
        TypeError: ``name_or_instance`` is neither a string nor a breaker.
    """
    if isinstance(name_or_instance, CircuitBreaker):
        return name_or_instance
    breaker = state.breakers.get(name_or_instance)
    if breaker is not None:
        return breaker
    if not isinstance(name_or_instance, str):
        raise TypeError(
            f"get_breaker() takes a breaker name or a CircuitBreaker, got {name_or_instance!r}"
        )
    name = name_or_instance
    family, bracket, key = name.partition("[")
    if bracket and key.endswith("]") and family:
        keyed = get_breaker(family)
        if keyed.keyed:
            return keyed.circuit(key[:-1])
    with state.lock:
        breaker = state.breakers.get(name)
        if breaker is not None:
            return breaker
        declared = get_settings().breakers
        if name not in declared:
            known = sorted({*declared, *state.breakers})
            raise ImproperlyConfigured(
                f"no circuit breaker named {name!r}: declare it in "
                f'PATCHBOARD["BREAKERS"] or create CircuitBreaker({name!r}, ...); '
                f"known: {', '.join(map(repr, known)) or 'none'}"
            )
        try:
            breaker = CircuitBreaker(name, config=BreakerConfig.from_options(declared[name]))
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f'PATCHBOARD["BREAKERS"][{name!r}]: {exc}') from exc
        state.declared.add(name)
        return breaker


def all_breakers() -> list[CircuitBreaker]:
    """Every registered breaker, by name (declared ones appear once used)."""
    with state.lock:
        return [state.breakers[name] for name in sorted(state.breakers)]


def listed_breakers() -> tuple[list[CircuitBreaker], list[str]]:
    """
    What an operator lists (the status page, ``manage.py patchboard breakers``),
    before :func:`listed_circuits`: every breaker, each keyed one followed
    by its circuits, by name. Those this process has made, and, with a Redis
    store, those Redis holds open, half-open or forced (other processes' included;
    at most ``LISTED_FROM_STORE`` per keyed breaker, each made for the
    listing and not kept). Also a note per keyed breaker whose listing is
    incomplete (capped; Redis unreachable). Their states are not refreshed.
    Blocking I/O.
    """
    listed: list[CircuitBreaker] = []
    notes: list[str] = []
    for breaker in all_breakers():
        listed.append(breaker)
        if not breaker.keyed:
            continue
        known = breaker.circuits()
        found, note = breaker._circuits_in_store(known)
        listed += sorted([*known.values(), *found], key=lambda circuit: circuit.name)
        if note is not None:
            notes.append(note)
    return listed, notes


def listed_circuits(breakers: Iterable[CircuitBreaker]) -> list[CircuitBreaker]:
    """
    ``breakers`` less the keyed circuits that are closed on their own: what an
    operator lists (a circuit forced closed stays listed until it is reset,
    so the force can be seen and lifted).
    """
    return [
        b
        for b in breakers
        if b._family is None or b.state != CLOSED or b._store.view().forced is not None
    ]


# -- what the listener call asks -------------------------------------------------------


def resolve(breaker: str | Guard, /) -> Guard:
    """
    The guard a listener's ``breaker=`` option names: a breaker by name, or the guard itself.

    Raises:
        ImproperlyConfigured: no breaker has that name.
    """
    return breaker if not isinstance(breaker, str) else get_breaker(breaker)


def for_call(guard: Guard, sender: object, kwargs: dict[str, Any], /) -> Guard:
    """
    The guard of one listener call: a keyed breaker's circuit for the call's
    key; any other guard as it is.

    Raises:
        ValueError: the keyed breaker's key function failed on this call.
    """
    if type(guard) is CircuitBreaker and guard._key_of is not None:
        return guard._for_call(sender, kwargs)
    return guard


def refusal(guard: Guard, /) -> CircuitOpen | None:
    """
    The ``CircuitOpen`` entering ``guard`` would raise now, when it can tell
    without I/O (counted as a rejected call); None when the call may go
    through, or ``guard`` is not one of patchboard's breakers.
    """
    return guard._refusal() if isinstance(guard, CircuitBreaker) else None
