"""
Exceptions raised by patchboard.

The hierarchy::

    PatchboardError
    ├── ListenerTimeout      (also a TimeoutError) a listener ran past its limit
    │                        or the dispatch's deadline
    ├── Expired              a queued item never ran: its expiry or the deadline
    ├── Rejected             the short-term queue was full
    ├── CircuitOpen          a circuit breaker refused the call
    ├── ListenerErrors       (also an ExceptionGroup) the failures of the listeners
    │                        whose ``on_error`` is ``"group"``, raised together
    ├── NotSerializable      (also a TypeError) a background argument cannot cross
    │                        the process boundary
    └── SyncCallInEventLoop  (also a RuntimeError) a sync twin was called from
                             inside a running event loop

Every exception carries the data it speaks about as attributes, so handlers
never have to parse the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from patchboard._outcomes import Collected, Outcome


class PatchboardError(Exception):
    """Base class of every exception raised by patchboard itself."""


class ListenerTimeout(PatchboardError, TimeoutError):
    """
    A listener ran longer than its time limit and was cancelled (or abandoned).

    ``deadline`` is True when the limit was what was left of the dispatch's
    deadline rather than the listener's own (the caller ran out of time, the
    listener did not fail: a circuit breaker does not count it).
    """

    def __init__(
        self, listener: str, limit: float, elapsed: float, *, deadline: bool = False
    ) -> None:
        what = "the dispatch's deadline" if deadline else "its time limit"
        super().__init__(f"listener {listener} ran into {what} of {limit:g}s (ran {elapsed:.3f}s)")
        self.listener = listener
        self.limit = limit
        self.elapsed = elapsed
        self.deadline = deadline


class Expired(PatchboardError):
    """
    A call was never started: it waited in the short-term queue until its
    expiry, or until the dispatch's deadline (``deadline`` is then True), or
    the queue saw at once that it could not start it in time.
    """

    def __init__(
        self, listener: str, waited: float, expiry: float, *, deadline: bool = False
    ) -> None:
        limit = "the dispatch's deadline" if deadline else "its expiry"
        super().__init__(
            f"listener {listener} never started: it would have waited past {limit} "
            f"({expiry:g}s) in the short-term queue (waited {waited:.3f}s)"
        )
        self.listener = listener
        self.waited = waited
        self.expiry = expiry
        self.deadline = deadline


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
    """
    The circuit breaker is open: the guarded code was not called. ``breaker``
    is its name; ``retry_at`` when the next probe goes (None while forced open).
    """

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


class ListenerErrors(ExceptionGroup[Exception], PatchboardError):
    """
    Every listener of a dispatch ran to its end, and those whose ``on_error``
    is ``"group"`` and failed are raised together (Django's new-features #140).

    ``exceptions`` are their errors, in listener order; ``outcomes`` their
    outcomes, in the same order; ``collected`` the whole dispatch's
    :class:`~patchboard.Collected` (the values of the listeners that
    answered included). ``except* SomeError`` splits it as any
    ``ExceptionGroup``: each part keeps the outcomes of its errors and the
    whole ``collected``.
    """

    outcomes: tuple[Outcome, ...]
    collected: Collected | None

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[Exception],
        *,
        outcomes: Sequence[Outcome] = (),
        collected: Collected | None = None,
    ) -> Self:
        self = super().__new__(cls, message, exceptions)
        self.outcomes = tuple(outcomes)
        self.collected = collected
        return self

    def __init__(self, message: str, exceptions: Sequence[Exception], **kept: object) -> None:
        # __new__ kept outcomes and collected: BaseException's __init__ takes no keywords.
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> ListenerErrors:  # type: ignore[override]
        """The part of the group holding ``excs`` (``except*``, ``split()``, ``subgroup()``)."""
        kept = [o for o in self.outcomes if any(o.error is exc for exc in excs)]
        return ListenerErrors(self.message, excs, outcomes=kept, collected=self.collected)
