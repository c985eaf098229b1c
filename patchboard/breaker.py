"""
Circuit breakers: stop calling what keeps failing, and probe it now and then.

Picture a fuse in front of a remote service. While it is *closed*, calls go
through and their failures are counted; when the count (or, with
``trip_rule="rate"``, the failure rate over the last ``window_size`` calls)
crosses the line, the circuit *opens*: every call fails at once with
:class:`~patchboard.CircuitOpen` and the guarded code is not called. After
``reset_timeout`` seconds it is *half-open*: exactly ``half_open_max_calls``
callers are let through as probes, however many arrive together (in one
process, or across many with the Redis store); ``success_threshold``
successful probes close it, a failed probe opens it again for
``backoff_factor`` times longer (up to ``max_reset_timeout``). A probe that
never reports (cancelled, or its process died) holds its slot for
``probe_timeout`` seconds at most.

What counts:

* the guarded code returns: a success;
* it raises an ``Exception`` (a ``TimeoutError``, so also
  :class:`~patchboard.ListenerTimeout`, included): a failure, and the
  exception reaches the caller unchanged;
* it raises something matching ``exclude`` (exception classes, predicates
  ``Callable[[BaseException], bool]`` or dotted paths): neither;
* a ``BaseException`` that is not an ``Exception`` (cancellation,
  ``KeyboardInterrupt``): nothing at all, and a probe slot it held is freed.

The same breaker guards async code (``async with``, ``await breaker.call()``,
an ``async def`` decorated with it) and sync code (``with``,
``breaker.call_sync()``, a decorated ``def``), from any number of tasks and
threads at once: what one entry was handed (a probe slot or not) lives on a
contextvar stack, never on the breaker.

State changes are logged (``circuit_opened``, ``circuit_half_opened``,
``circuit_closed``, with ``breaker``, ``failures`` and ``retry_at``) and sent
as :data:`circuit_state_changed`. Rejected calls are only counted (see
:meth:`CircuitBreaker.statistics`).

Breakers have names and one instance per name: :func:`get_breaker` returns it,
building it from ``PATCHBOARD["BREAKERS"][name]`` on first use.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, ParamSpec, Self, TypeAlias, TypedDict, TypeVar, Unpack, overload

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from patchboard.breaker_stores import (
    CLOSED,
    FAILURE,
    HALF_OPEN,
    OPEN,
    RELEASE,
    SUCCESS,
    MemoryStore,
    RedisStore,
    State,
    Ticket,
    Transition,
    make_store,
    reset_links,
    to_datetime,
)
from patchboard.conf import get_settings
from patchboard.exceptions import CircuitOpen
from patchboard.log import logger
from patchboard.signals import Signal

P = ParamSpec("P")
R = TypeVar("R")

TripRule: TypeAlias = Literal["count", "rate"]
ExcludeRule: TypeAlias = type[BaseException] | Callable[[BaseException], bool] | str
"""An exception class, a predicate on the exception, or the dotted path of either."""

circuit_state_changed = Signal(name="patchboard.circuit_state_changed")
"""
Sent on every state change, with ``sender=CircuitBreaker`` and the keyword
arguments ``breaker`` (the :class:`CircuitBreaker`), ``old_state`` and
``new_state`` (``"closed"``, ``"open"`` or ``"half_open"``). Sent robustly: a
receiver that raises is logged and never disturbs the breaker. Under the Redis
store, the process whose call made the transition sends it.
"""


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        rule = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def _check_number(name: str, value: object, *, minimum: float = 0.0, inclusive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if (
        value != value
        or value == float("inf")
        or value < minimum
        or (value == minimum and not inclusive)
    ):
        rule = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")


def _resolve_exclude(value: object) -> tuple[tuple[type[BaseException], ...], tuple[Any, ...]]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(
            "exclude must be a list or tuple of exception classes, predicates or dotted "
            f"paths, got {value!r}"
        )
    types: list[type[BaseException]] = []
    predicates: list[Callable[[BaseException], bool]] = []
    for rule in value:
        item = rule
        if isinstance(rule, str):
            try:
                item = import_string(rule)
            except ImportError as exc:
                raise ValueError(f"exclude: cannot import {rule!r} ({exc})") from None
        if isinstance(item, type) and issubclass(item, BaseException):
            types.append(item)
        elif callable(item) and not isinstance(item, type):
            predicates.append(item)
        else:
            raise TypeError(
                f"exclude entries must be exception classes or predicates, got {rule!r}"
            )
    return tuple(types), tuple(predicates)


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """
    How one circuit breaker trips and recovers; validated on construction.

    The keys of a ``PATCHBOARD["BREAKERS"][name]`` dict are these fields.
    Times are seconds.

    Raises:
        TypeError, ValueError: an argument is of the wrong type or out of range;
            the message names it and its value.
    """

    trip_rule: TripRule = "count"
    """``"count"``: ``failure_threshold`` consecutive failures open the circuit.
    ``"rate"``: a failure rate of at least ``failure_rate`` over the last
    ``window_size`` calls does, once ``minimum_calls`` calls are recorded."""
    failure_threshold: int = 5
    failure_rate: float = 0.5
    """A fraction, ``0 < failure_rate <= 1`` (0.5 is 50 %)."""
    window_size: int = 100
    minimum_calls: int = 10
    reset_timeout: float = 30.0
    """How long the circuit stays open before letting a probe through."""
    backoff_factor: float = 1.0
    """Each failed probe multiplies the next reset timeout by this (1.0: no growth)."""
    max_reset_timeout: float | None = None
    """The cap on a grown reset timeout; ``None``: no cap."""
    half_open_max_calls: int = 1
    """How many probes may be in flight at once while half-open."""
    success_threshold: int = 1
    """How many successful probes close the circuit."""
    probe_timeout: float | None = None
    """A probe's lease: its slot is freed after this long without a report.
    ``None``: ``reset_timeout``."""
    exclude: tuple[ExcludeRule, ...] = ()
    """Exceptions that count as neither success nor failure."""
    store: str | None = None
    """``"memory"``, a ``redis://``/``rediss://`` URL, or ``None``:
    ``PATCHBOARD["STORE"]``."""
    sync_interval: float = 1.0
    """Redis store: how long this process trusts its last view of the shared
    state before asking Redis again (0: ask on every call). A process learns
    of the circuit opening elsewhere within this time, or at its own next
    failure, whichever comes first."""
    clock: Callable[[], float] = time.time
    """Wall-clock seconds (POSIX); inject a virtual clock in tests. The Redis
    store's shared state runs on the Redis server's clock instead."""

    excluded_types: tuple[type[BaseException], ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    excluded_predicates: tuple[Callable[[BaseException], bool], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        if self.trip_rule not in ("count", "rate"):
            raise ValueError(f"trip_rule must be 'count' or 'rate', got {self.trip_rule!r}")
        _check_int("failure_threshold", self.failure_threshold, minimum=1)
        _check_number("failure_rate", self.failure_rate, inclusive=False)
        if self.failure_rate > 1:
            raise ValueError(
                f"failure_rate must be a fraction between 0 and 1, got {self.failure_rate!r}"
            )
        _check_int("window_size", self.window_size, minimum=1, maximum=10_000)
        _check_int("minimum_calls", self.minimum_calls, minimum=1)
        if self.minimum_calls > self.window_size:
            raise ValueError(
                f"minimum_calls must be <= window_size ({self.window_size}), "
                f"got {self.minimum_calls!r}"
            )
        _check_number("reset_timeout", self.reset_timeout, inclusive=False)
        _check_number("backoff_factor", self.backoff_factor, minimum=1.0, inclusive=True)
        if self.max_reset_timeout is not None:
            _check_number("max_reset_timeout", self.max_reset_timeout, inclusive=False)
            if self.max_reset_timeout < self.reset_timeout:
                raise ValueError(
                    f"max_reset_timeout must be >= reset_timeout ({self.reset_timeout!r}), "
                    f"got {self.max_reset_timeout!r}"
                )
        _check_int("half_open_max_calls", self.half_open_max_calls, minimum=1)
        _check_int("success_threshold", self.success_threshold, minimum=1)
        if self.probe_timeout is not None:
            _check_number("probe_timeout", self.probe_timeout, inclusive=False)
        types, predicates = _resolve_exclude(self.exclude)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "excluded_types", types)
        object.__setattr__(self, "excluded_predicates", predicates)
        if self.store is not None and not (
            isinstance(self.store, str)
            and (self.store == "memory" or self.store.startswith(("redis://", "rediss://")))
        ):
            raise ValueError(f"store must be 'memory' or a redis:// URL, got {self.store!r}")
        _check_number("sync_interval", self.sync_interval, inclusive=True)
        if not callable(self.clock):
            raise TypeError(f"clock must be a callable returning seconds, got {self.clock!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> BreakerConfig:
        """
        Build from a ``PATCHBOARD["BREAKERS"][name]`` dict (or keyword arguments).

        Raises:
            TypeError: an unknown key, or a value of the wrong type.
            ValueError: a value out of range.
        """
        known = sorted(f.name for f in fields(cls) if f.init)
        for key in options:
            if key not in known:
                raise TypeError(
                    f"unknown circuit breaker argument {key!r}; known: {', '.join(known)}"
                )
        return cls(**options)

    @property
    def lease(self) -> float:
        """A probe slot's lease in seconds: ``probe_timeout``, else ``reset_timeout``."""
        return self.probe_timeout if self.probe_timeout is not None else self.reset_timeout

    @property
    def rate_ppm(self) -> int:
        """``failure_rate`` in parts per million, for exact integer comparisons."""
        return round(self.failure_rate * 1_000_000)


class BreakerOptions(TypedDict, total=False):
    """The keyword arguments of :class:`CircuitBreaker`: see :class:`BreakerConfig`."""

    trip_rule: TripRule
    failure_threshold: int
    failure_rate: float
    window_size: int
    minimum_calls: int
    reset_timeout: float
    backoff_factor: float
    max_reset_timeout: float | None
    half_open_max_calls: int
    success_threshold: int
    probe_timeout: float | None
    exclude: tuple[ExcludeRule, ...] | list[ExcludeRule]
    store: str | None
    sync_interval: float
    clock: Callable[[], float]


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerStatistics:
    """A snapshot of one breaker, from :meth:`CircuitBreaker.statistics`."""

    name: str
    state: State
    failures: int
    """Consecutive failures (``trip_rule="count"``), or failures in the window."""
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
    forced: Literal["open", "closed"] | None
    """Set by :meth:`CircuitBreaker.force_open` / :meth:`~CircuitBreaker.force_closed`."""
    probes: int
    """Probes in flight (half-open)."""
    fallback: bool
    """The Redis store is unreachable: this process runs on in-process state."""


class _Tally:
    """A counter that threads can bump without a lock (``itertools.count`` is atomic)."""

    __slots__ = ("_count", "_lock", "_reads", "add")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.add = self._count.__next__
        self._reads = 0
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        # Every read takes one number too; subtract the reads made so far.
        with self._lock:
            value = next(self._count) - self._reads
            self._reads += 1
            return value


_Entry: TypeAlias = tuple[Ticket, Any]
"""One ``with``/``async with`` entry: its ticket, and the entry it is nested in."""


class CircuitBreaker:
    """
    A named circuit breaker (see the module docstring for the rules).

    ``CircuitBreaker(name, **options)`` takes the fields of
    :class:`BreakerConfig` as keyword arguments (or a ready ``config=``) and
    registers the instance under ``name`` for :func:`get_breaker`. The state
    lives in ``store`` (``"memory"``, in this process; or a ``redis://`` URL,
    shared by every process using it), by default ``PATCHBOARD["STORE"]``.

    Raises:
        TypeError, ValueError: an invalid option (the message names it).
        ValueError: a breaker named ``name`` already exists; share it with
            :func:`get_breaker`.
        ImproperlyConfigured: a Redis store without the ``redis`` package.
    """

    __slots__ = (
        "__weakref__",
        "_entries",
        "_excluded_predicates",
        "_excluded_types",
        "_failed",
        "_ok",
        "_ok_add",
        "_rejected",
        "_remote",
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
        self.name = name
        self.config = config
        self._store: MemoryStore | RedisStore = make_store(
            name, config, config.store or get_settings().store
        )
        self._remote = self._store if isinstance(self._store, RedisStore) else None
        self._excluded_types = config.excluded_types
        self._excluded_predicates = config.excluded_predicates
        self._entries: ContextVar[_Entry | None] = ContextVar(
            f"patchboard.breaker.{name}", default=None
        )
        self._new_tallies()
        _register(self)

    # -- guards --------------------------------------------------------------
    #
    # Each guard first checks the store's ``fast`` flag (closed, no failures
    # recorded): then admission and a success are attribute checks, with no
    # lock, no call into the store and, for ``call``, no allocation.
    #
    # ``with``/``async with`` keep each entry's ticket on a stack per context
    # (task, thread), in ``self._entries``. An entry admitted on the fast path
    # into an empty stack pushes nothing: entries leave in reverse order, so an
    # exit that finds the stack empty is such an entry's, and every other
    # entry pushed what its exit pops.

    async def __aenter__(self) -> Self:
        """
        Admit this entry or refuse it.

        Raises:
            CircuitOpen: the circuit is open (or half-open with every probe
                slot taken); the block does not run.
        """
        store = self._store
        entries = self._entries
        if store.fast:
            stack = entries.get()
            if stack is not None:  # see the note above
                entries.set((store.admitted, stack))
            return self
        ticket = await self._aacquire()
        entries.set((ticket, entries.get()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entries = self._entries
        stack = entries.get()
        if stack is None:
            ticket = self._store.admitted
        else:
            entries.set(stack[1])
            ticket = stack[0]
        if exc is None:
            self._ok_add()
            store = self._store
            if not (store.fast and ticket is store.admitted):
                await self._arecord(ticket, SUCCESS)
        else:
            await self._arecord(ticket, self._classify(exc))

    def __enter__(self) -> Self:
        """
        The sync twin of ``async with``: for sync code (WSGI views, threads).

        Raises:
            CircuitOpen: the circuit is open; the block does not run.
        """
        store = self._store
        entries = self._entries
        if store.fast:
            stack = entries.get()
            if stack is not None:  # see the note above
                entries.set((store.admitted, stack))
            return self
        ticket = self._acquire()
        entries.set((ticket, entries.get()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entries = self._entries
        stack = entries.get()
        if stack is None:
            ticket = self._store.admitted
        else:
            entries.set(stack[1])
            ticket = stack[0]
        if exc is None:
            self._ok_add()
            store = self._store
            if not (store.fast and ticket is store.admitted):
                self._record(ticket, SUCCESS)
        else:
            self._record(ticket, self._classify(exc))

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """
        Await ``fn(*args, **kwargs)`` through the breaker and return its result.

        Unlike :meth:`call_sync`, ``fn`` must return an awaitable.

        Raises:
            CircuitOpen: the circuit is open; ``fn`` was not called.
            Exception: whatever ``fn`` raised, unchanged (and counted).
        """
        store = self._store
        ticket = store.admitted if store.fast else await self._aacquire()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await self._arecord(ticket, self._classify(exc))
            raise
        self._ok_add()
        if not (store.fast and ticket is store.admitted):
            await self._arecord(ticket, SUCCESS)
        return result

    def call_sync(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """
        Call ``fn(*args, **kwargs)`` through the breaker and return its result.

        With a Redis store this does blocking I/O: call it from sync code,
        not from an event loop (use :meth:`call` there).

        Raises:
            CircuitOpen: the circuit is open; ``fn`` was not called.
            Exception: whatever ``fn`` raised, unchanged (and counted).
        """
        store = self._store
        ticket = store.admitted if store.fast else self._acquire()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._record(ticket, self._classify(exc))
            raise
        self._ok_add()
        if not (store.fast and ticket is store.admitted):
            self._record(ticket, SUCCESS)
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
        store = self._store
        # The bodies of call() and call_sync(), inlined: one call less per call.
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                ticket = store.admitted if store.fast else await self._aacquire()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    await self._arecord(ticket, self._classify(exc))
                    raise
                self._ok_add()
                if not (store.fast and ticket is store.admitted):
                    await self._arecord(ticket, SUCCESS)
                return result

            return guarded_async

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            ticket = store.admitted if store.fast else self._acquire()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._record(ticket, self._classify(exc))
                raise
            self._ok_add()
            if not (store.fast and ticket is store.admitted):
                self._record(ticket, SUCCESS)
            return result

        return guarded

    # -- the machinery ---------------------------------------------------------

    def _classify(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return RELEASE  # cancellation, KeyboardInterrupt: not the service's doing
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

    def _acquire(self) -> Ticket:
        store = self._store
        try:
            ticket = store.acquire()
        except CircuitOpen:
            self._rejected.add()
            if store.pending:
                self._emit()
            raise
        if store.pending:
            self._emit()
        return ticket

    async def _aacquire(self) -> Ticket:
        store = self._store
        try:
            if self._remote is None:
                ticket = store.acquire()
            else:
                ticket = await self._remote.aacquire()
        except CircuitOpen:
            self._rejected.add()
            if store.pending:
                await self._aemit()
            raise
        if store.pending:
            await self._aemit()
        return ticket

    def _record(self, ticket: Ticket, outcome: int) -> None:
        store = self._store
        store.record(ticket, outcome)
        if store.pending:
            self._emit()

    async def _arecord(self, ticket: Ticket, outcome: int) -> None:
        store = self._store
        if self._remote is None:
            store.record(ticket, outcome)
        else:
            await self._remote.arecord(ticket, outcome)
        if store.pending:
            await self._aemit()

    def _drain(self) -> list[Transition]:
        pending = self._store.pending
        drained: list[Transition] = []
        while True:
            try:
                drained.append(pending.popleft())
            except IndexError:
                return drained

    def _log(self, transition: Transition) -> None:
        event, level = {
            OPEN: ("circuit_opened", "warning"),
            HALF_OPEN: ("circuit_half_opened", "info"),
            CLOSED: ("circuit_closed", "info"),
        }[transition.new]
        retry_at = to_datetime(transition.retry_at)
        getattr(logger(), level)(
            event,
            breaker=self.name,
            failures=transition.failures,
            retry_at=retry_at.isoformat() if retry_at is not None else None,
            old_state=transition.old,
            forced=transition.forced,
        )

    def _emit(self) -> None:
        for transition in self._drain():
            self._log(transition)
            responses: list[tuple[Any, Any]]
            try:
                responses = circuit_state_changed.send_robust(
                    sender=CircuitBreaker,
                    breaker=self,
                    old_state=transition.old,
                    new_state=transition.new,
                )
            except Exception as exc:  # e.g. an async receiver reached from a running loop
                responses = [(circuit_state_changed, exc)]
            self._log_receiver_errors(responses)

    async def _aemit(self) -> None:
        for transition in self._drain():
            self._log(transition)
            responses: list[tuple[Any, Any]]
            try:
                responses = await circuit_state_changed.asend_robust(
                    sender=CircuitBreaker,
                    breaker=self,
                    old_state=transition.old,
                    new_state=transition.new,
                )
            except Exception as exc:
                responses = [(circuit_state_changed, exc)]
            self._log_receiver_errors(responses)

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
    def state(self) -> State:
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

    async def get_state(self) -> State:
        """
        The state, asking the store first (one round trip with Redis; if Redis
        is unreachable, the in-process fallback's state).
        """
        if self._remote is not None:
            with contextlib.suppress(Exception):  # logged by the store; the fallback answers
                await self._remote.aforce("read")
            if self._store.pending:
                await self._aemit()
        return self._store.state

    def get_state_sync(self) -> State:
        """The sync twin of :meth:`get_state` (blocking I/O with Redis)."""
        if self._remote is not None:
            with contextlib.suppress(Exception):
                self._remote.force("read")
            if self._store.pending:
                self._emit()
        return self._store.state

    def statistics(self) -> BreakerStatistics:
        """The breaker's state as this process knows it, and its counters."""
        view = self._store.view()
        return BreakerStatistics(
            name=self.name,
            state=view.state,
            failures=view.failures,
            opened_at=to_datetime(view.opened_at) if view.state != CLOSED else None,
            retry_at=to_datetime(view.retry_at) if view.state != CLOSED else None,
            rejected=self._rejected.value,
            successes=self._ok.value,
            failures_total=self._failed.value,
            store=self._store.label,
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

    def _control(self, action: Literal["force_open", "force_closed", "reset"]) -> None:
        try:
            self._store.force(action)
        finally:
            if self._store.pending:
                self._emit()

    async def _acontrol(self, action: Literal["force_open", "force_closed", "reset"]) -> None:
        try:
            if self._remote is None:
                self._store.force(action)
            else:
                await self._remote.aforce(action)
        finally:
            if self._store.pending:
                await self._aemit()

    async def aclose(self) -> None:
        """Close the Redis store's async connections of the running event loop."""
        if self._remote is not None:
            await self._remote.link.aclose()

    def _forget(self) -> None:
        self._store.forget()
        self._store.pending.clear()
        self._new_tallies()

    def _new_tallies(self) -> None:
        self._ok = _Tally()
        self._ok_add = self._ok.add
        self._failed = _Tally()
        self._rejected = _Tally()


# -- the registry ----------------------------------------------------------------

_registry: dict[str, CircuitBreaker] = {}
_from_settings: set[str] = set()
_registry_lock = threading.RLock()


def _register(breaker: CircuitBreaker) -> None:
    with _registry_lock:
        if breaker.name in _registry:
            raise ValueError(
                f"a circuit breaker named {breaker.name!r} already exists; share it with "
                f"get_breaker({breaker.name!r})"
            )
        _registry[breaker.name] = breaker


def get_breaker(name_or_instance: str | CircuitBreaker) -> CircuitBreaker:
    """
    The one breaker named ``name_or_instance`` (an instance is returned as is).

    A name not yet in use is looked up in ``PATCHBOARD["BREAKERS"]`` and the
    breaker built from it on first use.

    Raises:
        ImproperlyConfigured: no breaker has that name and none is declared
            (the message lists the known names), or its declaration is invalid.
    """
    if isinstance(name_or_instance, CircuitBreaker):
        return name_or_instance
    breaker = _registry.get(name_or_instance)
    if breaker is not None:
        return breaker
    if not isinstance(name_or_instance, str):
        raise TypeError(
            f"get_breaker() takes a breaker name or a CircuitBreaker, got {name_or_instance!r}"
        )
    name = name_or_instance
    with _registry_lock:
        breaker = _registry.get(name)
        if breaker is not None:
            return breaker
        declared = get_settings().breakers
        if name not in declared:
            known = sorted({*declared, *_registry})
            raise ImproperlyConfigured(
                f"no circuit breaker named {name!r}: declare it in "
                f'PATCHBOARD["BREAKERS"] or create CircuitBreaker({name!r}, ...); '
                f"known: {', '.join(map(repr, known)) or 'none'}"
            )
        try:
            breaker = CircuitBreaker(name, config=BreakerConfig.from_options(declared[name]))
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f'PATCHBOARD["BREAKERS"][{name!r}]: {exc}') from exc
        _from_settings.add(name)
        return breaker


def all_breakers() -> list[CircuitBreaker]:
    """Every registered breaker, by name (declared ones appear once used)."""
    with _registry_lock:
        return [_registry[name] for name in sorted(_registry)]


def reset_breakers() -> None:
    """
    Forget every breaker, for test suites: each registered breaker goes back
    to a fresh closed state with zeroed counters (shared Redis state is left
    alone; call :meth:`CircuitBreaker.reset` for that), the registry is
    emptied (so names can be reused and declared breakers are built afresh),
    and Redis connections are closed.
    """
    with _registry_lock:
        breakers = list(_registry.values())
        _registry.clear()
        _from_settings.clear()
    for breaker in breakers:
        breaker._forget()
    reset_links()


def _settings_changed(*, setting: str, **kwargs: object) -> None:
    if setting != "PATCHBOARD":
        return
    with _registry_lock:
        for name in _from_settings:
            _registry.pop(name, None)
        _from_settings.clear()


setting_changed.connect(_settings_changed, dispatch_uid="patchboard.breaker.settings_changed")
