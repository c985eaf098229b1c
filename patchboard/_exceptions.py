"""
Exceptions raised by patchboard.

The hierarchy::

    PatchboardError
    ├── ListenerTimeout      (also a TimeoutError) a listener ran past its limit
    ├── Expired              a queued item waited past its expiry and never ran
    ├── Rejected             the short-term queue was full
    ├── CircuitOpen          a circuit breaker refused the call
    ├── NotSerializable      (also a TypeError) a background argument cannot cross
    │                        the process boundary
    └── SyncCallInEventLoop  (also a RuntimeError) a sync twin was called from
                             inside a running event loop

Every exception carries the data it speaks about as attributes, so handlers
never have to parse the message.
"""

from __future__ import annotations

from datetime import datetime


class PatchboardError(Exception):
    """Base class of every exception raised by patchboard itself."""


class ListenerTimeout(PatchboardError, TimeoutError):
    """A listener ran longer than its time limit and was cancelled (or abandoned)."""

    def __init__(self, listener: str, limit: float, elapsed: float) -> None:
        super().__init__(
            f"listener {listener} exceeded its time limit of {limit:g}s (ran {elapsed:.3f}s)"
        )
        self.listener = listener
        self.limit = limit
        self.elapsed = elapsed


class Expired(PatchboardError):
    """A queued call waited longer than the queue's item expiry and was not started."""

    def __init__(self, listener: str, waited: float, expiry: float) -> None:
        super().__init__(
            f"listener {listener} expired after waiting {waited:.3f}s in the "
            f"short-term queue (expiry {expiry:g}s)"
        )
        self.listener = listener
        self.waited = waited
        self.expiry = expiry


class Rejected(PatchboardError):
    """The short-term queue already held its maximum of waiting items."""

    def __init__(self, listener: str, max_pending: int) -> None:
        super().__init__(
            f"listener {listener} rejected: the short-term queue already holds "
            f"max_pending={max_pending} waiting items"
        )
        self.listener = listener
        self.max_pending = max_pending


class CircuitOpen(PatchboardError):
    """The circuit breaker is open: the guarded code was not called."""

    def __init__(self, breaker: str, retry_at: datetime | None) -> None:
        when = retry_at.isoformat() if retry_at is not None else "when reset"
        super().__init__(f"circuit {breaker!r} is open; next probe at {when}")
        self.breaker = breaker
        self.retry_at = retry_at


class NotSerializable(PatchboardError, TypeError):
    """A background listener's argument cannot be encoded for the task backend."""

    def __init__(self, listener: str, argument: str, value_type: str) -> None:
        super().__init__(
            f"background listener {listener}: argument {argument!r} of type "
            f"{value_type} cannot be sent to a task backend (JSON types, model "
            f"instances, datetimes, dates, times, Decimals and UUIDs can)"
        )
        self.listener = listener
        self.argument = argument
        self.value_type = value_type


class SyncCallInEventLoop(PatchboardError, RuntimeError):
    """A sync twin (``send_sync``, ``collect``) was called from a running event loop."""

    def __init__(self, method: str) -> None:
        super().__init__(
            f"Signal.{method}() cannot be called from a running event loop; "
            f"use 'await signal.{method.removesuffix('_sync')}_async(...)' instead"
        )
        self.method = method
