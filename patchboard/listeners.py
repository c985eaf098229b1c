"""
Listeners: a receiver plus the options that say how it runs.

A :class:`Listener` wraps the function a user connects with patchboard
options (``priority``, ``timeout``, ``on_error``, ``default``, ``mode``,
``breaker``, ``fallback``, ``thread_sensitive``). It is itself a Django
receiver, so it works on any signal, Django's own ``post_save`` included:
when Django's ``send()`` calls it, the options apply and the listener's
``on_error`` decides whether the error reaches the sender.

Every call of a listener ends as exactly one :class:`~patchboard.Outcome`;
failures are logged as structured events (``listener_failed``,
``listener_timeout``, ...) and counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import weakref
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import anyio
import anyio.to_thread
from asgiref.sync import async_to_sync, sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.dispatch import dispatcher

from patchboard.conf import OnError, check_on_error, check_positive, get_settings
from patchboard.exceptions import CircuitOpen, ListenerTimeout
from patchboard.log import dotted, logger, sender_label, signal_label
from patchboard.outcomes import Outcome, Status, counted

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal

    from patchboard.breaker import CircuitBreaker

_make_id: Callable[[object], Hashable] = dispatcher._make_id  # type: ignore[attr-defined]
"""Django's receiver/sender key: patchboard must compute exactly the same keys."""
NONE_ID: Hashable = _make_id(None)

Mode: TypeAlias = Literal["inline", "background"]
ThreadRunner: TypeAlias = Callable[[Callable[[], Any]], Awaitable[Any]]
"""Runs a sync call in a worker thread; the short-term queue supplies its own."""

NEVER_RAN: frozenset[Status] = frozenset({"expired", "rejected", "circuit_open"})
"""Outcomes of calls that never started: the listener's ``fallback`` answers for them."""

_UNSET: Any = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerOptions:
    """
    How one listener runs. Validated on construction.

    ``on_error=None`` means "the ``PATCHBOARD["ON_ERROR"]`` setting", read at
    call time so tests can override it.
    """

    priority: int = 0
    timeout: float | None = None
    on_error: OnError | None = None
    default: Any = None
    mode: Mode = "inline"
    breaker: str | CircuitBreaker | None = None
    fallback: Callable[..., Any] | None = None
    thread_sensitive: bool = True
    """Sync listeners: run on Django's thread-sensitive thread (one at a time,
    sharing the request's DB connection) or, when False, in a worker thread of
    their own, in parallel with the others."""
    queue_name: str | None = None
    """Background listeners: the task queue to enqueue to."""
    on_commit: bool = True
    """Background listeners: inside ``transaction.atomic()``, enqueue on commit."""
    missing_instance: Literal["report", "none"] = "report"
    """Background listeners: a model instance deleted before the worker runs is
    reported (``"report"``) or passed as ``None`` (``"none"``)."""

    def __post_init__(self) -> None:
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise TypeError(f"priority must be an int, got {self.priority!r}")
        if self.timeout is not None:
            check_positive("timeout", self.timeout)
        if self.on_error is not None:
            check_on_error("on_error", self.on_error)
        if self.mode not in ("inline", "background"):
            raise ValueError(f"mode must be 'inline' or 'background', got {self.mode!r}")
        if self.fallback is not None and not callable(self.fallback):
            raise TypeError(f"fallback must be callable, got {self.fallback!r}")
        if not isinstance(self.thread_sensitive, bool):
            raise TypeError(f"thread_sensitive must be a bool, got {self.thread_sensitive!r}")
        if self.missing_instance not in ("report", "none"):
            raise ValueError(
                f"missing_instance must be 'report' or 'none', got {self.missing_instance!r}"
            )
        if self.breaker is not None and not isinstance(self.breaker, str):
            from patchboard.breaker import CircuitBreaker

            if not isinstance(self.breaker, CircuitBreaker):
                raise TypeError(
                    f"breaker must be a breaker name or a CircuitBreaker, got {self.breaker!r}"
                )

    @property
    def plain(self) -> bool:
        """True when nothing but the error policy applies (the fast path)."""
        return (
            self.timeout is None
            and self.mode == "inline"
            and self.breaker is None
            and self.thread_sensitive
        )


DEFAULT_OPTIONS = ListenerOptions()


class Listener:
    """
    A receiver connected with patchboard options.

    The listener holds its function weakly when connected with ``weak=True``
    (Django's default): it lives exactly as long as the function, so Django's
    weak-reference clean-up works unchanged. ``receiver`` is the user's
    function; patchboard's outcomes and logs name it, never the wrapper.
    """

    __slots__ = (
        "__weakref__",
        "_direct",
        "_func",
        "_is_coroutine_marker",
        "batchable",
        "is_async",
        "label",
        "options",
    )

    def __init__(self, func: Callable[..., Any], options: ListenerOptions, *, weak: bool) -> None:
        self.is_async = inspect.iscoroutinefunction(func)
        self.options = options
        # Nothing to apply but the error policy: run_async (async) or run_sync
        # (sync) take a path without option checks.
        self._direct = options.plain
        # Whether run_sync() can run it in the calling thread: a background
        # listener (its enqueue must see the caller's transaction), or a sync
        # one with no timeout that accepts the thread-sensitive thread.
        self.batchable = options.mode == "background" or (
            not self.is_async and options.timeout is None and options.thread_sensitive
        )
        self.label = dotted(func)
        self._func: Callable[[], Callable[..., Any] | None]
        if weak:
            is_method = hasattr(func, "__self__") and hasattr(func, "__func__")
            self._func = weakref.WeakMethod(func) if is_method else weakref.ref(func)
        else:
            self._func = functools.partial(_identity, func)
        if self.is_async:
            # Makes Django (and asgiref) treat the wrapper as an async receiver.
            inspect.markcoroutinefunction(self)

    def __getattr__(self, name: str) -> Any:
        # Django's send_robust() logs receivers by __qualname__: name the user's function.
        if name in ("__qualname__", "__name__"):
            return getattr(self.receiver, name, self.label)
        raise AttributeError(name)

    @property
    def receiver(self) -> Callable[..., Any] | None:
        """The connected function, or None once it has been garbage collected."""
        return self._func()

    def __repr__(self) -> str:
        changed = ", ".join(
            f"{field.name}={getattr(self.options, field.name)!r}"
            for field in dataclasses.fields(self.options)
            if getattr(self.options, field.name) != field.default
        )
        return f"<Listener {self.label}{' ' if changed else ''}{changed}>"

    # -- Django's entry point ----------------------------------------------------

    def __call__(self, signal: DjangoSignal, sender: Any, **kwargs: Any) -> Any:
        """
        Called by any signal's ``send()``/``asend()``: apply the options and
        return the response, or raise if the listener's policy is ``"raise"``.
        """
        if self.is_async:
            return _unwrap_async(self.run_async(signal, sender, kwargs))
        if self.batchable:
            return _unwrap(self.run_sync(signal, sender, kwargs))
        return _unwrap(async_to_sync(self.run_async)(signal, sender, kwargs))

    # -- running -----------------------------------------------------------------

    async def run_async(
        self,
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
        *,
        time_limit: float | None = None,
        thread_runner: ThreadRunner | None = None,
    ) -> Outcome:
        """
        Call the listener once from async code and return its outcome.

        ``time_limit`` applies when the listener has no ``timeout`` of its own
        (the short-term queue's limit); ``thread_runner`` runs a sync listener's
        call in a worker thread (the queue passes one that keeps its slot until
        the thread returns). Only ``BaseException``s that are not ``Exception``
        (cancellation, ``KeyboardInterrupt``) escape.
        """
        started = perf_counter()
        func = self._func()
        if func is None:
            return self._gone(started)
        if self._direct and self.is_async and time_limit is None:
            # The fast path: an async listener with nothing to apply but its error policy.
            try:
                value = await func(signal=signal, sender=sender, **kwargs)
            except BaseException as exc:
                status = failure_status(exc)
                if status is None:
                    raise
                return await self.settle_async(status, exc, started, signal, sender, kwargs)
            counted["ok"] += 1
            return _new_outcome(
                Outcome, (func, "ok", value, None, perf_counter() - started, None, False)
            )
        options = self.options
        if options.mode == "background":
            from patchboard.background import enqueue_async

            return await enqueue_async(self, func, signal, sender, kwargs)
        limit = options.timeout if options.timeout is not None else time_limit
        # Resolved outside the try: an unknown breaker name is a configuration
        # error for the caller, not this listener's failure.
        breaker = None if options.breaker is None else self.breaker()
        try:
            if breaker is None:
                value = await self._invoke(func, signal, sender, kwargs, limit, thread_runner)
            else:
                async with breaker:
                    value = await self._invoke(func, signal, sender, kwargs, limit, thread_runner)
        except BaseException as exc:
            status = failure_status(exc)
            if status is None:
                raise
            return await self.settle_async(status, exc, started, signal, sender, kwargs)
        counted["ok"] += 1
        return Outcome(receiver=func, status="ok", value=value, elapsed=perf_counter() - started)

    async def _invoke(
        self,
        func: Callable[..., Any],
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
        limit: float | None,
        thread_runner: ThreadRunner | None,
    ) -> Any:
        call: Callable[[], Awaitable[Any]]
        if self.is_async:
            call = functools.partial(func, signal=signal, sender=sender, **kwargs)
        else:
            sync_call = functools.partial(func, signal=signal, sender=sender, **kwargs)
            if limit is None and thread_runner is None and self.options.thread_sensitive:
                return await sync_to_async(sync_call, thread_sensitive=True)()
            call = functools.partial(thread_runner or run_in_worker_thread, sync_call)
        if limit is None:
            return await call()
        started = perf_counter()
        with anyio.CancelScope(deadline=anyio.current_time() + limit):
            return await call()
        # Only reached when the deadline cancelled the call (a sync call's
        # thread is abandoned: it cannot be stopped).
        raise ListenerTimeout(self.label, limit, perf_counter() - started)

    def run_sync(self, signal: DjangoSignal, sender: Any, kwargs: dict[str, Any]) -> Outcome:
        """
        Call a :attr:`batchable` listener once in the calling thread and
        return its outcome; the others go through :meth:`run_async`.
        """
        started = perf_counter()
        func = self._func()
        if func is None:
            return self._gone(started)
        if self._direct:
            try:
                value = func(signal=signal, sender=sender, **kwargs)
            except BaseException as exc:
                status = failure_status(exc)
                if status is None:
                    raise
                return self.settle_sync(status, exc, started, signal, sender, kwargs)
            counted["ok"] += 1
            return _new_outcome(
                Outcome, (func, "ok", value, None, perf_counter() - started, None, False)
            )
        if self.options.mode == "background":
            from patchboard.background import enqueue_sync

            return enqueue_sync(self, func, signal, sender, kwargs)
        breaker = None if self.options.breaker is None else self.breaker()
        try:
            if breaker is None:
                value = func(signal=signal, sender=sender, **kwargs)
            else:
                with breaker:
                    value = func(signal=signal, sender=sender, **kwargs)
        except BaseException as exc:
            status = failure_status(exc)
            if status is None:
                raise
            return self.settle_sync(status, exc, started, signal, sender, kwargs)
        counted["ok"] += 1
        return Outcome(receiver=func, status="ok", value=value, elapsed=perf_counter() - started)

    def breaker(self) -> CircuitBreaker:
        """The listener's circuit breaker, resolved by name on first use."""
        from patchboard.breaker import get_breaker

        assert self.options.breaker is not None
        return get_breaker(self.options.breaker)

    # -- failures ----------------------------------------------------------------

    async def settle_async(
        self,
        status: Status,
        error: BaseException,
        started: float,
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
    ) -> Outcome:
        """
        The outcome of a call that did not produce a value: log it, count it,
        let the ``fallback`` answer if the call never ran, else apply ``on_error``.
        """
        fallback = self.options.fallback
        if fallback is not None and status in NEVER_RAN:
            try:
                value = fallback(signal=signal, sender=sender, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
            except Exception as exc:
                self._log_fallback_failed(exc, signal, sender)
            else:
                return self._fell_back(status, error, value, started, signal, sender, kwargs)
        return self._failed(status, error, started, signal, sender, kwargs)

    def settle_sync(
        self,
        status: Status,
        error: BaseException,
        started: float,
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
    ) -> Outcome:
        """The sync twin of :meth:`settle_async`; an async fallback runs through asgiref."""
        fallback = self.options.fallback
        if fallback is not None and status in NEVER_RAN:
            try:
                if inspect.iscoroutinefunction(fallback):
                    value = async_to_sync(fallback)(signal=signal, sender=sender, **kwargs)
                else:
                    value = fallback(signal=signal, sender=sender, **kwargs)
            except Exception as exc:
                self._log_fallback_failed(exc, signal, sender)
            else:
                return self._fell_back(status, error, value, started, signal, sender, kwargs)
        return self._failed(status, error, started, signal, sender, kwargs)

    def _fell_back(
        self,
        status: Status,
        error: BaseException,
        value: Any,
        started: float,
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
    ) -> Outcome:
        elapsed = perf_counter() - started
        self._log(status, error, elapsed, signal, sender, kwargs, fallback=True)
        counted[status] += 1
        return Outcome(
            receiver=self.receiver or _gone_receiver,
            status=status,
            value=value,
            error=error,
            elapsed=elapsed,
        )

    def _failed(
        self,
        status: Status,
        error: BaseException,
        started: float,
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
    ) -> Outcome:
        elapsed = perf_counter() - started
        self._log(status, error, elapsed, signal, sender, kwargs, fallback=False)
        counted[status] += 1
        propagate = (self.options.on_error or get_settings().on_error) == "raise"
        return Outcome(
            receiver=self.receiver or _gone_receiver,
            status=status,
            value=None if propagate else self.options.default,
            error=error,
            elapsed=elapsed,
            propagate=propagate,
        )

    def _log(
        self,
        status: Status,
        error: BaseException,
        elapsed: float,
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
        *,
        fallback: bool,
    ) -> None:
        context: dict[str, Any] = {
            "signal": signal_label(signal),
            "listener": self.label,
            "sender": sender_label(sender),
            "elapsed_s": round(elapsed, 6),
        }
        if fallback:
            context["fallback"] = True
        if get_settings().log_kwargs:
            context["kwargs"] = kwargs
        log = logger()
        if status == "error":
            log.error("listener_failed", exc_info=error, **context)
        elif status == "timeout":
            assert isinstance(error, ListenerTimeout)
            log.warning("listener_timeout", limit_s=error.limit, **context)
        elif status == "circuit_open":
            # Rejections are counted by the breaker; one line each would flood.
            log.debug("listener_circuit_open", breaker=getattr(error, "breaker", None), **context)
        else:
            # expired and rejected are logged by the short-term queue with its numbers.
            log.debug(f"listener_{status}", **context)

    def _log_fallback_failed(self, exc: Exception, signal: DjangoSignal, sender: Any) -> None:
        logger().error(
            "listener_fallback_failed",
            exc_info=exc,
            signal=signal_label(signal),
            listener=self.label,
            sender=sender_label(sender),
        )

    def _gone(self, started: float) -> Outcome:
        # The function was collected between the signal resolving its weak
        # reference and this call: nothing ran, and nothing is left to blame.
        counted["error"] += 1
        error = ReferenceError(f"listener {self.label} was garbage collected")
        logger().warning("listener_gone", listener=self.label)
        return Outcome(
            receiver=_gone_receiver,
            status="error",
            error=error,
            elapsed=perf_counter() - started,
        )


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


_new_outcome = tuple.__new__
"""Builds an Outcome from all its fields without the named tuple's Python-level __new__."""


def _identity(func: Callable[..., Any]) -> Callable[..., Any]:
    return func


def _gone_receiver(*args: Any, **kwargs: Any) -> None:
    """Stands in as ``Outcome.receiver`` for a listener collected mid-dispatch."""


def _unwrap(outcome: Outcome) -> Any:
    if outcome.propagate:
        assert outcome.error is not None
        raise outcome.error
    return outcome.value


async def _unwrap_async(coro: Awaitable[Outcome]) -> Any:
    return _unwrap(await coro)


async def run_in_worker_thread(call: Callable[[], Any]) -> Any:
    """
    Run a sync call in one of anyio's worker threads.

    If the caller is cancelled (a ``timeout``), the thread cannot be stopped:
    it is abandoned, runs to its end, and closes the DB connections it opened.
    """
    return await anyio.to_thread.run_sync(closing_connections(call), abandon_on_cancel=True)


def closing_connections(call: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap ``call`` so the Django DB connections its thread opened are closed after it."""

    def run() -> Any:
        try:
            return call()
        finally:
            for conn in connections.all(initialized_only=True):
                conn.close()

    return run


# -- connecting ------------------------------------------------------------------

by_breaker_name: weakref.WeakSet[Listener] = weakref.WeakSet()
"""Live listeners that name their breaker (``patchboard.E011`` checks the names)."""

_keepalive: weakref.WeakKeyDictionary[Any, dict[tuple[int, Hashable], Listener]] = (
    weakref.WeakKeyDictionary()
)
"""Weakly connected listeners, held by their function (or its bound instance)."""


def make_options(func: object, signals: Sequence[DjangoSignal], **options: Any) -> ListenerOptions:
    """
    Validate a receiver and its options for the signals it is about to join.

    Raises:
        TypeError: ``func`` is not callable, does not accept ``**kwargs``, or
            an option has the wrong type (the message names the listener).
        ValueError: an option has a bad value (the message names the listener).
    """
    if not callable(func):
        raise TypeError(f"signal receivers must be callable, got {func!r}")
    label = dotted(func)
    if not _accepts_kwargs(func):
        raise ValueError(f"receiver {label} must accept keyword arguments (**kwargs)")
    try:
        made = ListenerOptions(**options)
    except TypeError as exc:
        raise TypeError(f"receiver {label}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"receiver {label}: {exc}") from None
    if made.mode == "background" and any(getattr(s, "ordered", False) for s in signals):
        raise ImproperlyConfigured(
            f"receiver {label}: mode='background' would queue a listener of an ordered "
            f"signal; side effects on an ordered signal run inline, in priority order"
        )
    if made.mode == "background":
        from patchboard.background import check_background_listener

        check_background_listener(func, made)
    return made


def _accepts_kwargs(func: Callable[..., Any]) -> bool:
    # Not django.utils.inspect.func_accepts_kwargs: its lru_cache holds the
    # function strongly, which would defeat weak=True.
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let them through
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def connect(
    signal: DjangoSignal,
    func: Callable[..., Any],
    options: ListenerOptions,
    *,
    sender: Any = None,
    weak: bool = True,
    dispatch_uid: Hashable | None = None,
) -> Listener:
    """
    Connect ``func`` to any Django signal with ``options``.

    The wrapper is registered under the key Django computes for ``func``
    itself, so ``signal.disconnect(func)`` finds it, and connecting the same
    function twice stays a no-op, as in Django.
    """
    listener = Listener(func, options, weak=weak)
    if isinstance(options.breaker, str):
        by_breaker_name.add(listener)
    uid = dispatch_uid if dispatch_uid else _make_id(func)
    if weak:
        owner = getattr(func, "__self__", func) if hasattr(func, "__func__") else func
        _keepalive.setdefault(owner, {})[(id(signal), (uid, _make_id(sender)))] = listener
    signal.connect(listener, sender=sender, weak=weak, dispatch_uid=uid)
    if options.mode == "background":
        from patchboard.background import register

        # The worker runs only listeners registered here, in its own process.
        register(listener, signal)
    return listener


def forget(signal: DjangoSignal, lookup_key: Hashable) -> None:
    """Drop the keep-alive of a listener that was disconnected from ``signal``."""
    for held in list(_keepalive.values()):
        held.pop((id(signal), lookup_key), None)


def receiver(
    signal: DjangoSignal | list[DjangoSignal] | tuple[DjangoSignal, ...],
    *,
    sender: Any = None,
    weak: bool = True,
    dispatch_uid: Hashable | None = None,
    priority: int = 0,
    timeout: float | None = None,
    on_error: OnError | None = None,
    default: Any = None,
    mode: Mode = "inline",
    breaker: str | CircuitBreaker | None = None,
    fallback: Callable[..., Any] | None = None,
    thread_sensitive: bool = True,
    queue_name: str | None = None,
    on_commit: bool = True,
    missing_instance: Literal["report", "none"] = "report",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Connect the decorated function to one signal or a list of them, with options.

    Works on any Django signal (``post_save``, ``request_finished``, ...) and
    on :class:`patchboard.Signal`. Django's arguments (``sender``, ``weak``,
    ``dispatch_uid``) keep their meaning; the options:

    ``priority``
        Higher runs first where order is observable (ordered signals, sync
        listeners); ties keep connect order.
    ``timeout``
        Seconds; an async listener is cancelled at the limit (a sync one is
        abandoned in its worker thread) and the call ends as ``"timeout"``.
    ``on_error``
        ``"raise"`` (the error reaches the sender) or ``"log"`` (it is logged
        as ``listener_failed`` and ``default`` stands in). Unset: the
        ``PATCHBOARD["ON_ERROR"]`` setting.
    ``mode``
        ``"inline"`` (in the request) or ``"background"`` (a ``django.tasks``
        task per call).
    ``breaker``
        A :class:`~patchboard.CircuitBreaker` or the name of one declared in
        ``PATCHBOARD["BREAKERS"]``.
    ``fallback``
        Called with the listener's arguments when the call never ran (expired,
        rejected, circuit open); its return value stands in.

    Returns the function unchanged.

    Raises:
        TypeError, ValueError: at decoration time, for a non-callable or a bad option.
        ImproperlyConfigured: for an option an ordered signal cannot honour.
    """
    options = dict(
        priority=priority,
        timeout=timeout,
        on_error=on_error,
        default=default,
        mode=mode,
        breaker=breaker,
        fallback=fallback,
        thread_sensitive=thread_sensitive,
        queue_name=queue_name,
        on_commit=on_commit,
        missing_instance=missing_instance,
    )
    signals = signal if isinstance(signal, (list, tuple)) else [signal]

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        made = make_options(func, signals, **options)
        for each in signals:
            if made == DEFAULT_OPTIONS:
                # Nothing to apply: connect the function itself, exactly as Django would.
                each.connect(func, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
            else:
                connect(each, func, made, sender=sender, weak=weak, dispatch_uid=dispatch_uid)
        return func

    return decorator
