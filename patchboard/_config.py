"""
Configuration as frozen values: the ``PATCHBOARD`` setting, a listener's
options and a circuit breaker's rules, with one set of validators.

Every value object is a frozen, slotted, keyword-only dataclass validated on
construction; an error names the parameter, the rule and the value
(``timeout must be a finite number of seconds > 0, got -1``).

The dict in ``settings.PATCHBOARD`` is parsed into one :class:`Settings` on
first use and again after it changes. Each key maps to the field of the same
name in lower case; nested sections are dataclasses of their own. A bad
value is reported by the system checks (``patchboard.E001``: every bad key,
not only the first) and, where checks do not run (under uvicorn), logged
at start-up (``settings_invalid``, one event per key); code that reads the
settings anyway gets a :class:`SettingError` naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import math
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self, TypeAlias, TypedDict

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from patchboard._state import state

OnError: TypeAlias = Literal["raise", "log", "group"]
Criticality: TypeAlias = Literal["critical", "default", "sheddable"]
"""How much a listener's call matters under overload: the short-term queue sheds
``"sheddable"`` calls first and ``"critical"`` ones last (see ``patchboard._queue``)."""
ON_ERROR_CHOICES: Final = ("raise", "log", "group")
Mode: TypeAlias = Literal["inline", "background"]
Missing: TypeAlias = Literal["report", "none"]
TripRule: TypeAlias = Literal["count", "rate"]
WindowType: TypeAlias = Literal["count", "time"]
KeyFunction: TypeAlias = Callable[..., object]
"""A keyed breaker's key: called with the listener's ``sender`` and keyword arguments."""
ExcludeRule: TypeAlias = type[BaseException] | Callable[[BaseException], bool] | str
"""An exception class, a predicate on the exception, or the dotted path of either."""


# -- validators -------------------------------------------------------------------------


MAX_SECONDS: Final = threading.TIMEOUT_MAX
"""The longest duration patchboard accepts: the longest a thread can wait for on this
platform (292 years on Linux). Past it, a thread's wait or a ``retry_at`` overflows."""


def seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """
    ``value`` as a float number of seconds, or raise naming ``name`` and the rule.

    Infinity is refused: a limit of ``inf`` would silently switch off the
    mechanism it configures (an expiry that never comes, a time limit that
    never cuts). So is anything past :data:`MAX_SECONDS`, which no wait can
    honour. ``None`` means "no limit" wherever that is allowed.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    rule = ">= 0" if allow_zero else "> 0"
    # Compared, never converted first: an int too large for a float raises OverflowError.
    if not value >= 0 or (value == 0 and not allow_zero) or value == math.inf:
        raise ValueError(f"{name} must be a finite number of seconds {rule}, got {value!r}")
    if value > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS:g} seconds, got {value!r}")
    return float(value)


def integer(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int within bounds, or raise naming ``name`` and the rule."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        rule = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return value


def fraction(name: str, value: object) -> float:
    """A number strictly between 0 and 1 (or exactly 1), e.g. a rate."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0 < value <= 1:  # NaN fails this too
        raise ValueError(f"{name} must be a fraction > 0 and <= 1, got {value!r}")
    return float(value)


def choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise unless ``value`` is one of ``choices`` (the message lists them)."""
    if value not in choices or isinstance(value, bool):
        names = [repr(c) for c in choices]
        listed = " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ValueError(f"{name} must be {listed}, got {value!r}")


def boolean(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def installed(name: str, value: object, *, module: str) -> None:
    """A bool that, when True, needs ``module`` installed (an optional extra)."""
    boolean(name, value)
    if value and importlib.util.find_spec(module.partition(".")[0]) is None:
        raise ValueError(
            f"{name} is True but {module.partition('.')[0]} is not installed "
            f"(pip install 'django-patchboard[{name.lower()}]')"
        )


REDIS_URL_PREFIXES: Final = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)
"""A Redis store URL's schemes: one server, a Redis Cluster, Redis Sentinels."""


def store_url(name: str, value: object) -> None:
    """``"memory"`` or a Redis URL (one of :data:`REDIS_URL_PREFIXES`)."""
    if not isinstance(value, str) or not (
        value == "memory" or value.startswith(REDIS_URL_PREFIXES)
    ):
        raise ValueError(
            f"{name} must be 'memory' or a Redis URL (redis://, rediss:// or unix://; "
            f"redis+cluster://, redis+sentinel://), got {value!r}"
        )


# -- a listener's options ---------------------------------------------------------------


class Guard(Protocol):
    """What a listener's ``breaker`` must be: a sync and async context manager."""

    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """
    How a listener's call is tried again after a failure (the listener option
    ``retry=``, see :func:`patchboard.receiver`); validated on construction.

    Picture a caller who redials a busy line: only for the failures it names
    (``retry_on``), at most ``attempts`` times in all, waiting longer each time
    and by a random amount (AWS's "full jitter": a wait drawn uniformly between
    0 and ``min(wait_max, wait_initial * exp_base ** (attempt - 1))``, so that
    callers who failed together do not come back together), and never when
    the retry could not end within the call's time limit or its dispatch's
    deadline. ``budget`` caps the retries of the signal's calls at that
    fraction of its calls over the last 10 s (Google SRE's per-client retry
    budget: 10 %), so a dependency that is down gets about 1.1 times its
    usual load, not ``attempts`` times.

    ``retry_on`` is required: an exception class or a tuple of them
    (``Exception`` subclasses: a cancellation is never retried, nor is
    :class:`~patchboard.CircuitOpen` or the call's own
    :class:`~patchboard.ListenerTimeout`).

    Raises:
        TypeError, ValueError: a field of the wrong type or value; the
            message names it.
    """

    retry_on: type[Exception] | tuple[type[Exception], ...]
    attempts: int = 3
    """Attempts in all, the first included (the SRE book's cap; Polly: 1 + 3 retries)."""
    wait_initial: float = 0.1
    """The longest wait before the first retry (stamina's ``wait_initial``)."""
    wait_max: float = 5.0
    """The cap on the longest wait (stamina's ``wait_max``)."""
    exp_base: float = 2.0
    """Each retry may wait this many times longer than the one before."""
    budget: float = 0.1
    """Retries allowed per call of the signal, over a sliding window of 10 s."""

    def __post_init__(self) -> None:
        retry_on = self.retry_on if isinstance(self.retry_on, tuple) else (self.retry_on,)
        if not retry_on or not all(
            isinstance(each, type) and issubclass(each, Exception) for each in retry_on
        ):
            raise TypeError(
                "retry_on must be an Exception subclass or a non-empty tuple of them, "
                f"got {self.retry_on!r}"
            )
        object.__setattr__(self, "retry_on", retry_on)  # one shape for isinstance()
        integer("attempts", self.attempts, minimum=1, maximum=10)
        seconds("wait_initial", self.wait_initial, allow_zero=True)
        seconds("wait_max", self.wait_max, allow_zero=True)
        if isinstance(self.exp_base, bool) or not isinstance(self.exp_base, (int, float)):
            raise TypeError(f"exp_base must be a number, got {self.exp_base!r}")
        if not 1 <= self.exp_base <= 10:
            raise ValueError(f"exp_base must be between 1 and 10, got {self.exp_base!r}")
        fraction("budget", self.budget)

    def longest_wait(self, attempt: int) -> float:
        """The cap of the jittered wait after attempt number ``attempt`` (1 for the first)."""
        return min(self.wait_max, self.wait_initial * self.exp_base ** (attempt - 1))


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerOptions:
    """
    How one listener runs (see :func:`patchboard.receiver`). Validated on
    construction.

    ``on_error=None`` means "the ``PATCHBOARD["ON_ERROR"]`` setting", read at
    call time so tests can override it.

    Raises:
        TypeError, ValueError: an option of the wrong type or value; the
            message names it.
    """

    priority: int = 0
    timeout: float | None = None
    on_error: OnError | None = None
    default: Any = None
    mode: Mode = "inline"
    breaker: str | Guard | None = None
    fallback: Callable[..., Any] | None = None
    thread_sensitive: bool = True
    """Sync listeners: run on Django's thread-sensitive thread (one at a time,
    sharing the request's DB connection) or, when False, in a worker thread of
    their own, in parallel with the others."""
    queue_name: str | None = None
    """Background listeners: the task queue to enqueue to."""
    on_commit: bool = True
    """Background listeners: inside ``transaction.atomic()``, enqueue on commit."""
    missing_instance: Missing = "report"
    """Background listeners: a model instance deleted before the worker runs is
    reported (``"report"``) or passed as ``None`` (``"none"``)."""
    retry: Retry | None = None
    """Try the call again after the failures it names (see :class:`Retry`)."""
    hedge_after: float | None = None
    """Async listeners, idempotent ones: seconds after which a second attempt of a
    call still running starts; the first to return wins, the other is cancelled."""
    criticality: Criticality = "default"
    """Under overload, the short-term queue sheds ``"sheddable"`` calls first and
    ``"critical"`` ones last."""

    def __post_init__(self) -> None:
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise TypeError(f"priority must be an int, got {self.priority!r}")
        if self.timeout is not None:
            seconds("timeout", self.timeout)
        if self.on_error is not None:
            choice("on_error", self.on_error, ON_ERROR_CHOICES)
        choice("mode", self.mode, ("inline", "background"))
        choice("criticality", self.criticality, ("critical", "default", "sheddable"))
        if self.fallback is not None and not callable(self.fallback):
            raise TypeError(f"fallback must be callable, got {self.fallback!r}")
        boolean("thread_sensitive", self.thread_sensitive)
        if self.queue_name is not None and (
            not isinstance(self.queue_name, str) or not self.queue_name
        ):
            raise TypeError(f"queue_name must be a non-empty string, got {self.queue_name!r}")
        boolean("on_commit", self.on_commit)
        choice("missing_instance", self.missing_instance, ("report", "none"))
        if self.breaker is not None and not (
            (isinstance(self.breaker, str) and self.breaker)
            or (hasattr(self.breaker, "__aenter__") and hasattr(self.breaker, "__enter__"))
        ):
            raise TypeError(
                f"breaker must be a breaker name or a CircuitBreaker, got {self.breaker!r}"
            )
        if self.retry is not None and not isinstance(self.retry, Retry):
            raise TypeError(f"retry must be a patchboard.Retry, got {self.retry!r}")
        if self.hedge_after is not None:
            seconds("hedge_after", self.hedge_after)
            if self.retry is not None:
                # Two policies racing on one call would multiply its attempts: choose one.
                raise ValueError("retry and hedge_after cannot be combined: choose one")
            if self.mode == "background":
                raise ValueError("hedge_after applies to inline calls, not mode='background'")

    @property
    def plain(self) -> bool:
        """True when nothing but the error policy applies (the fast path)."""
        return (
            self.timeout is None
            and self.mode == "inline"
            and self.breaker is None
            and self.thread_sensitive
            and self.retry is None
            and self.hedge_after is None
        )


DEFAULT_OPTIONS = ListenerOptions()


# -- a circuit breaker's rules ----------------------------------------------------------


def _imported(name: str, value: object) -> object:
    """``value``, or the object its dotted path names (for option ``name``)."""
    if not isinstance(value, str):
        return value
    try:
        return import_string(value)
    except ImportError as exc:
        raise ValueError(f"{name}: cannot import {value!r} ({exc})") from None


def _resolve_key(value: object) -> KeyFunction | None:
    if value is None:
        return None
    item = _imported("key", value)
    if not callable(item) or isinstance(item, type):
        raise TypeError(
            f"key must be a function of (sender, **kwargs) or its dotted path, got {value!r}"
        )
    return item


def _resolve_exclude(value: object) -> tuple[tuple[type[BaseException], ...], tuple[Any, ...]]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(
            "exclude must be a list or tuple of exception classes, predicates or dotted "
            f"paths, got {value!r}"
        )
    types: list[type[BaseException]] = []
    predicates: list[Callable[[BaseException], bool]] = []
    for rule in value:
        item = _imported("exclude", rule)
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
    ``"rate"``: a failure rate of at least ``failure_rate`` (or a slow-call
    rate of at least ``slow_call_rate``) over the window does, once
    ``minimum_calls`` calls are in it."""
    failure_threshold: int = 5
    failure_rate: float = 0.5
    """A fraction, ``0 < failure_rate <= 1`` (0.5 is 50 %)."""
    window_type: WindowType = "count"
    """The rate rule's window: ``"count"``, the last ``window_size`` calls;
    ``"time"``, the calls of the last ``window_size`` seconds (in buckets of
    one second: the current second and the ``window_size - 1`` before it)."""
    window_size: int = 100
    minimum_calls: int = 10
    slow_call_duration: float | None = None
    """Rate rule: a call that takes at least this long counts as slow, even
    when it succeeds; ``None``: no call is slow (nothing is timed)."""
    slow_call_rate: float = 1.0
    """Rate rule: the fraction of slow calls in the window that opens the
    circuit (with ``slow_call_duration``); 1.0: every call in it was slow."""
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
    """``"memory"``, a Redis URL (``redis://``, ``redis+cluster://``,
    ``redis+sentinel://``...), or ``None``: ``PATCHBOARD["STORE"]``."""
    sync_interval: float = 1.0
    """Redis store: how long this process trusts its last view of the shared
    state before asking Redis again (0: ask on every call). A process learns
    of the circuit opening elsewhere within this time, or at its own next
    failure, whichever comes first."""
    clock: Callable[[], float] | None = None
    """Wall-clock seconds (POSIX) the in-process store decides on; ``None``:
    patchboard's clock (``time.time()``, or the ``VirtualClock`` a test
    installed). The Redis store's shared state runs on the Redis server's
    clock instead."""
    key: KeyFunction | str | None = None
    """A keyed breaker: one circuit per key, ``key(sender, **kwargs)`` of the
    listener's call (a callable or its dotted path), made on first use;
    ``None``: one circuit. See :meth:`CircuitBreaker.circuit`."""
    max_keys: int = 1000
    """A keyed breaker: the circuits kept in this process; past it, the least
    recently used closed circuit is dropped (an open one only when every
    circuit is open, and then logged: ``circuit_key_evicted``)."""

    excluded_types: tuple[type[BaseException], ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    excluded_predicates: tuple[Callable[[BaseException], bool], ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    key_function: KeyFunction | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        choice("trip_rule", self.trip_rule, ("count", "rate"))
        integer("failure_threshold", self.failure_threshold, minimum=1)
        fraction("failure_rate", self.failure_rate)
        choice("window_type", self.window_type, ("count", "time"))
        # A count window is a ring of calls, a time window a bucket per second:
        # both bounded (at most 10,000 calls, or an hour of buckets).
        counted = self.window_type == "count"
        integer("window_size", self.window_size, minimum=1, maximum=10_000 if counted else 3600)
        integer("minimum_calls", self.minimum_calls, minimum=1)
        if counted and self.minimum_calls > self.window_size:
            raise ValueError(
                f"minimum_calls must be <= window_size ({self.window_size}), "
                f"got {self.minimum_calls!r}"
            )
        if self.slow_call_duration is not None:
            seconds("slow_call_duration", self.slow_call_duration)
        fraction("slow_call_rate", self.slow_call_rate)
        if self.trip_rule == "count":
            # Options of the rate rule would be ignored silently: refused instead.
            for name, value, default in (
                ("window_type", self.window_type, "count"),
                ("slow_call_duration", self.slow_call_duration, None),
            ):
                if value != default:
                    raise ValueError(
                        f"{name} applies to trip_rule='rate' (the window), "
                        f"not trip_rule='count'; got {value!r}"
                    )
        seconds("reset_timeout", self.reset_timeout)
        if isinstance(self.backoff_factor, bool) or not isinstance(
            self.backoff_factor, (int, float)
        ):
            raise TypeError(f"backoff_factor must be a number, got {self.backoff_factor!r}")
        # Compared, never converted: an int too large for a float raises OverflowError.
        if not 1 <= self.backoff_factor <= sys.float_info.max:
            raise ValueError(
                f"backoff_factor must be a finite number >= 1, got {self.backoff_factor!r}"
            )
        if self.max_reset_timeout is not None:
            seconds("max_reset_timeout", self.max_reset_timeout)
            if self.max_reset_timeout < self.reset_timeout:
                raise ValueError(
                    f"max_reset_timeout must be >= reset_timeout ({self.reset_timeout!r}), "
                    f"got {self.max_reset_timeout!r}"
                )
        integer("half_open_max_calls", self.half_open_max_calls, minimum=1)
        integer("success_threshold", self.success_threshold, minimum=1)
        if self.probe_timeout is not None:
            seconds("probe_timeout", self.probe_timeout)
        types, predicates = _resolve_exclude(self.exclude)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "excluded_types", types)
        object.__setattr__(self, "excluded_predicates", predicates)
        if self.store is not None:
            store_url("store", self.store)
        seconds("sync_interval", self.sync_interval, allow_zero=True)
        if self.clock is not None and not callable(self.clock):
            raise TypeError(f"clock must be a callable returning seconds, got {self.clock!r}")
        object.__setattr__(self, "key_function", _resolve_key(self.key))
        integer("max_keys", self.max_keys, minimum=1)

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

    @property
    def slow_ppm(self) -> int:
        """``slow_call_rate`` in parts per million; 0 without ``slow_call_duration``."""
        return 0 if self.slow_call_duration is None else round(self.slow_call_rate * 1_000_000)


class BreakerOptions(TypedDict, total=False):
    """The keyword arguments of ``CircuitBreaker``: see :class:`BreakerConfig`."""

    trip_rule: TripRule
    failure_threshold: int
    failure_rate: float
    window_type: WindowType
    window_size: int
    minimum_calls: int
    slow_call_duration: float | None
    slow_call_rate: float
    reset_timeout: float
    backoff_factor: float
    max_reset_timeout: float | None
    half_open_max_calls: int
    success_threshold: int
    probe_timeout: float | None
    exclude: tuple[ExcludeRule, ...] | list[ExcludeRule]
    store: str | None
    sync_interval: float
    clock: Callable[[], float] | None
    key: KeyFunction | str | None
    max_keys: int


# -- the PATCHBOARD setting --------------------------------------------------------------


# Each settings section checks its fields one by one (so that every bad key
# is reported, not only the first), then the rules that tie fields together.
FieldChecks: TypeAlias = dict[str, Callable[[object], object]]


class _RuleBetween(ValueError):
    """A rule between fields, each valid alone, is broken; ``fields`` names them."""

    def __init__(self, message: str, fields: tuple[str, ...]) -> None:
        super().__init__(message)
        self.fields = fields


def _check_fields(settings: object, checks: FieldChecks) -> None:
    for name, check in checks.items():
        check(getattr(settings, name))


def _alias(name: str) -> Callable[[object], object]:
    def check(value: object) -> None:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{name} must be a backend alias, got {value!r}")

    return check


def _breakers(value: object) -> None:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in value.items()
    ):
        raise TypeError(
            f"BREAKERS must map breaker names to dicts of CircuitBreaker arguments, got {value!r}"
        )


def _below_one(name: str) -> Callable[[object], object]:
    def check(value: object) -> None:
        if fraction(name, value) == 1:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")

    return check


def _outbox_switch(value: object) -> None:
    # By type: 1 == True and 0 == False, but an int is not a switch.
    if not (type(value) is bool or (type(value) is str and value == "auto")):
        raise ValueError(f"OUTBOX must be 'auto', True or False, got {value!r}")


_QUEUE_FIELDS: FieldChecks = {
    "min_workers": functools.partial(integer, "MIN_WORKERS", minimum=1),
    "max_workers": functools.partial(integer, "MAX_WORKERS", minimum=1),
    "target_wait": functools.partial(seconds, "TARGET_WAIT"),
    "task_time_limit": functools.partial(seconds, "TASK_TIME_LIMIT"),
    "item_expiry": functools.partial(seconds, "ITEM_EXPIRY"),
    "max_pending": functools.partial(integer, "MAX_PENDING", minimum=0),
    "at_risk_fraction": _below_one("AT_RISK_FRACTION"),
    "idle_shrink_after": functools.partial(seconds, "IDLE_SHRINK_AFTER"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSettings:
    """
    ``PATCHBOARD["SHORT_TERM_QUEUE"]``: the per-process short-term queue.

    The defaults are sized for web requests, whose budget is a few seconds
    (see the docs' "Time budgets" guide).
    """

    min_workers: int = 4
    """Workers kept however idle: calls start at once when traffic is light."""
    max_workers: int = 32
    """The bound on calls at once: what a process can afford in sockets and threads."""
    target_wait: float = 0.05
    """The wait in line the pool grows to avoid: a line standing longer is too short-staffed."""
    task_time_limit: float = 10.0
    """The most a queued call may run (a listener's own ``timeout``, a deadline cut it shorter)."""
    item_expiry: float = 10.0
    """The most a call may wait in line: a cap, a dispatch's ``deadline`` is the rule."""
    max_pending: int = 1000
    at_risk_fraction: float = 0.5
    """An item waiting longer than this fraction of ``item_expiry`` is at risk."""
    idle_shrink_after: float = 10.0
    """Seconds of idle capacity above ``min_workers`` before the pool halves."""

    def __post_init__(self) -> None:
        _check_fields(self, _QUEUE_FIELDS)
        if self.min_workers > self.max_workers:
            raise _RuleBetween(
                f"MIN_WORKERS must be <= MAX_WORKERS, got {self.min_workers} > {self.max_workers}",
                ("min_workers", "max_workers"),
            )


_BACKGROUND_FIELDS: FieldChecks = {
    "backend": _alias("BACKEND"),
    "max_reschedules": functools.partial(integer, "MAX_RESCHEDULES", minimum=0),
    "give_up_after": functools.partial(seconds, "GIVE_UP_AFTER"),
    "retry_delay": functools.partial(seconds, "RETRY_DELAY"),
    "outbox": _outbox_switch,
    "outbox_grace": functools.partial(seconds, "OUTBOX_GRACE", allow_zero=True),
    "outbox_retention": functools.partial(seconds, "OUTBOX_RETENTION"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class BackgroundSettings:
    """``PATCHBOARD["BACKGROUND"]``: background listeners run by ``django.tasks``."""

    backend: str = "default"
    """The ``TASKS`` backend alias background listeners enqueue to."""
    max_reschedules: int = 50
    """How many times a task whose circuit is open reschedules itself before giving up."""
    give_up_after: float = 86400.0
    """Seconds after the first enqueue past which a task no longer reschedules."""
    retry_delay: float = 60.0
    """Seconds a task waits before its next attempt when an open circuit names no retry time."""
    outbox: Literal["auto"] | bool = "auto"
    """Write each call to the outbox table first: ``"auto"`` when the backend is outside
    the database (not django-tasks-db, not the immediate or dummy backends)."""
    outbox_grace: float = 5.0
    """Seconds the relay leaves a fresh entry to its own on-commit delivery and a worker's
    claim before delivering it (again); the wait before each later delivery doubles from it."""
    outbox_retention: float = 7 * 86400.0
    """Seconds claimed entries are kept (for the run-once check) before the relay purges them."""

    def __post_init__(self) -> None:
        _check_fields(self, _BACKGROUND_FIELDS)


def _namespace(value: object) -> None:
    # Prometheus's metric name rule, so a bad namespace fails at check time, not at start-up.
    if (
        not isinstance(value, str)
        or not value
        or not (value[0].isascii() and (value[0].isalpha() or value[0] == "_"))
        or not all(c.isascii() and (c.isalnum() or c == "_") for c in value)
    ):
        raise ValueError(
            "NAMESPACE must be a metric name prefix (ASCII letters, digits and _, "
            f"not starting with a digit), got {value!r}"
        )


def _buckets(value: object) -> None:
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"BUCKETS must be a non-empty list of seconds, got {value!r}")
    for bound in value:
        seconds("BUCKETS", bound)
    if any(later <= earlier for earlier, later in itertools.pairwise(value)):
        raise ValueError(f"BUCKETS must be in increasing order, got {value!r}")


def _installed(value: object) -> None:
    boolean("ENABLED", value)
    # Found without importing it: ``import patchboard`` never imports the extra.
    if value and importlib.util.find_spec("prometheus_client") is None:
        raise ValueError(
            "metrics need the prometheus-client package: "
            'pip install "django-patchboard[prometheus]"'
        )


_METRICS_FIELDS: FieldChecks = {
    "enabled": _installed,
    "namespace": _namespace,
    "buckets": _buckets,
    "interval": functools.partial(seconds, "INTERVAL"),
}


DEFAULT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds, from a cache hit to a gateway's timeout: the buckets of a web request's parts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSettings:
    """
    ``PATCHBOARD["METRICS"]``: Prometheus metrics. ``True`` turns them on with
    these defaults; a dict turns them on with its keys (``ENABLED: False``
    keeps the dict and turns them off).
    """

    enabled: bool = False
    namespace: str = "patchboard"
    """The first part of every metric's name: ``patchboard_listener_calls_total``."""
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    """The histograms' upper bounds, in seconds."""
    interval: float = 1.0
    """Seconds between two readings of the queue, thread and breaker gauges."""

    def __post_init__(self) -> None:
        _check_fields(self, _METRICS_FIELDS)
        object.__setattr__(self, "buckets", tuple(float(bound) for bound in self.buckets))


_SETTINGS_FIELDS: FieldChecks = {
    "on_error": functools.partial(choice, "ON_ERROR", choices=ON_ERROR_CHOICES),
    "log_kwargs": functools.partial(boolean, "LOG_KWARGS"),
    "opentelemetry": functools.partial(installed, "OPENTELEMETRY", module="opentelemetry.trace"),
    "collect_queue_threshold": functools.partial(integer, "COLLECT_QUEUE_THRESHOLD", minimum=0),
    "max_threads": functools.partial(integer, "MAX_THREADS", minimum=1),
    "default_deadline": lambda value: value is None or seconds("DEFAULT_DEADLINE", value),
    "store": functools.partial(store_url, "STORE"),
    "breakers": _breakers,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The whole ``PATCHBOARD`` setting."""

    on_error: OnError = "raise"
    """Error policy of listeners that don't set ``on_error`` themselves."""
    log_kwargs: bool = False
    """Log signal kwargs' values in failure events (they may hold secrets)."""
    opentelemetry: bool = False
    """A span per dispatch and per listener call, through ``opentelemetry-api``."""
    collect_queue_threshold: int = 16
    """``collect_async(queue="auto")`` queues above this many live listeners."""
    max_threads: int = 40
    """The most sync listener calls running in worker threads at once in this
    process, threads abandoned at their time limit included."""
    default_deadline: float | None = None
    """Seconds: the ``deadline`` of a collect that names none (None: no deadline)."""
    short_term_queue: QueueSettings = field(default_factory=QueueSettings)
    store: str = "memory"
    """Default circuit breaker state store: ``"memory"`` or a Redis URL (``redis://``,
    ``redis+cluster://``, ``redis+sentinel://``...)."""
    breakers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Named circuit breakers: name -> keyword arguments of ``CircuitBreaker``."""
    background: BackgroundSettings = field(default_factory=BackgroundSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)

    def __post_init__(self) -> None:
        _check_fields(self, _SETTINGS_FIELDS)


_SECTIONS: dict[str, tuple[type[Any], FieldChecks]] = {
    "": (Settings, _SETTINGS_FIELDS),
    "short_term_queue": (QueueSettings, _QUEUE_FIELDS),
    "background": (BackgroundSettings, _BACKGROUND_FIELDS),
    "metrics": (MetricsSettings, _METRICS_FIELDS),
}


class SettingError(ImproperlyConfigured):
    """One bad key of ``PATCHBOARD``; ``key`` is its path, e.g. ``SHORT_TERM_QUEUE.MIN_WORKERS``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f'PATCHBOARD["{key}"]: {problem}' if key else f"PATCHBOARD: {problem}")
        self.key = key
        self.problem = problem


def _build(section: str, raw: object, path: str) -> tuple[Any, list[SettingError]]:
    """Build a section from ``raw``; return it (or its default) and every problem found."""
    cls, checks = _SECTIONS[section]
    if not isinstance(raw, Mapping):
        return cls(), [SettingError(path, f"must be a dict, got {raw!r}")]
    known = {f.name for f in dataclasses.fields(cls)}
    errors: list[SettingError] = []
    kwargs: dict[str, Any] = {}
    prefix = f"{path}." if path else ""
    for key, value in raw.items():
        name = key.lower() if isinstance(key, str) else ""
        if name not in known or key != key.upper():
            choices = ", ".join(sorted(n.upper() for n in known))
            if isinstance(key, str) and key:
                errors.append(SettingError(prefix + key, f"unknown setting; known: {choices}"))
            else:  # "" or not a string: named in the message, not glued to the section's path
                errors.append(SettingError(path, f"unknown setting {key!r}; known: {choices}"))
            continue
        if name == "metrics":
            value = _metrics_switch(value)
        if name in _SECTIONS:
            value, nested = _build(name, value, prefix + key)
            errors.extend(nested)
        elif name in checks:
            try:
                checks[name](value)
            except (TypeError, ValueError) as exc:
                errors.append(SettingError(prefix + key, str(exc)))
                continue
        kwargs[name] = value
    try:
        return cls(**kwargs), errors
    except _RuleBetween as exc:
        errors.append(_rule_error(cls, exc, kwargs, prefix, path))
        return cls(), errors
    except (TypeError, ValueError) as exc:
        errors.append(SettingError(path, str(exc)))
        return cls(), errors


def _metrics_switch(value: object) -> object:
    """``METRICS: True`` / ``False`` as a section; a dict turns metrics on unless it says not."""
    if isinstance(value, bool):
        return {"ENABLED": value}
    if isinstance(value, Mapping):
        return {"ENABLED": True, **value}
    return value


def _rule_error(
    cls: type[Any], exc: _RuleBetween, given: Mapping[str, Any], prefix: str, path: str
) -> SettingError:
    """
    The error for a broken rule between fields. When the project set only
    one of them, that key is the culprit (``MAX_WORKERS: 2`` alone is below
    the default ``MIN_WORKERS``): the error names it, and the default it
    collides with. When it set several, the section and the rule are named.
    """
    written = [name for name in exc.fields if name in given]
    if len(written) != 1:
        return SettingError(path, str(exc))
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    unset = ", ".join(
        f"{name.upper()} is not set: its default is {defaults[name]!r}"
        for name in exc.fields
        if name not in given
    )
    return SettingError(prefix + written[0].upper(), f"{exc} ({unset})")


def parse(raw: object) -> tuple[Settings, list[SettingError]]:
    """Validate a ``PATCHBOARD`` dict: the settings and every problem found in it."""
    settings, errors = _build("", raw, "")
    return settings, errors


def raw_setting() -> object:
    """``settings.PATCHBOARD`` as the project wrote it (``{}`` when unset)."""
    return getattr(django_settings, "PATCHBOARD", None) or {}


def get_settings() -> Settings:
    """
    The current settings, parsed once and cached until ``PATCHBOARD`` changes.

    Raises:
        SettingError: if ``PATCHBOARD`` is invalid (the system checks report
            the same problems at start-up).
    """
    settings = state.settings
    if settings is None:
        parsed, errors = parse(raw_setting())
        if errors:
            raise errors[0]
        settings = state.settings = parsed
        for hook in state.on_settings:
            hook(parsed)
    return settings
