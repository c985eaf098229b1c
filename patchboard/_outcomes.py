"""
What happened to each listener of one dispatch.

Every listener call ends as exactly one :class:`Outcome`. A dispatch returns
them all, in connect order, as a :class:`Collected`; aggregating them is the
collector's business.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple, TypeAlias

Status: TypeAlias = Literal[
    "ok", "error", "timeout", "expired", "rejected", "circuit_open", "enqueued", "cancelled"
]
"""
How a listener call ended:

``"ok"``
    the listener returned ``value``.
``"error"``
    it raised ``error``; ``value`` is the default that stood in.
``"timeout"``
    it ran past its time limit, or the dispatch's deadline, and was cancelled
    (or abandoned, for a thread).
``"expired"``
    it never started: it waited in the short-term queue until its expiry or
    the deadline, or the queue saw at once that it could not start in time.
``"rejected"``
    the short-term queue was full; it never started.
``"circuit_open"``
    its circuit breaker was open; it never started.
``"enqueued"``
    it is a background listener: a task was enqueued, ``task_id`` names it.
``"cancelled"``
    the dispatch was cancelled (its caller went away, another listener's
    error is propagating, a stream was left early) before the call ended.
    Only counted (:func:`patchboard.outcome_counts`): no ``Outcome`` reaches
    a caller that is gone.
"""

STATUSES: tuple[Status, ...] = (
    "ok",
    "error",
    "timeout",
    "expired",
    "rejected",
    "circuit_open",
    "enqueued",
    "cancelled",
)


class Outcome(NamedTuple):
    """
    The result of calling one listener once. Immutable.

    ``receiver`` is the function the user connected (not patchboard's
    wrapper). ``value`` is the response, or the default or fallback value
    that stood in for a failure. ``error`` is the exception when the status
    is not ``"ok"``. ``elapsed`` is the time in seconds from the dispatch
    reaching this listener to the outcome. ``task_id`` names the task of a
    background listener.

    (A named tuple rather than a frozen dataclass: one is built per listener
    call, and a frozen dataclass costs four times as much to build.)
    """

    receiver: Callable[..., Any]
    status: Status
    value: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0
    task_id: str | None = None
    propagate: bool = False
    """True when the error must reach the caller (the listener's ``on_error="raise"``)."""
    attempts: int = 1
    """How many times the listener was called for this outcome: more than 1 after
    retries (its ``retry`` option), 2 when a hedged second attempt started."""
    grouped: bool = False
    """True when the error is raised with the others, in a ``ListenerErrors``, once
    every listener ended (the listener's ``on_error="group"``)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def has_value(self) -> bool:
        """Whether a response or a stand-in value counts for :meth:`Collected.values`."""
        return self.status == "ok" or (
            self.status != "enqueued"
            and self.error is not None
            and not self.propagate
            and not self.grouped
        )


new_outcome = tuple.__new__
"""``new_outcome(Outcome, fields)``: an Outcome from its fields in order, without the
named tuple's Python-level ``__new__`` (the hot paths' way, see :func:`ok_outcome`)."""


def ok_outcome(
    receiver: Callable[..., Any], value: Any, elapsed: float, attempts: int = 1
) -> Outcome:
    """
    ``Outcome(receiver=receiver, status="ok", value=value, elapsed=elapsed)``,
    built without the named tuple's Python-level ``__new__`` (about half the
    cost): the fast path builds one per listener call. It lists every field in
    order, so it lives here, next to the fields (the hot loops of
    ``patchboard._run`` and ``_dispatch`` inline it);
    ``tests/dispatch/test_ledger.py`` checks that the constructions agree.
    """
    return new_outcome(
        Outcome, (receiver, "ok", value, None, elapsed, None, False, attempts, False)
    )


class Collected:
    """
    The outcomes of one dispatch, in connect order (priority order on ordered
    signals).

    Iterating yields :class:`Outcome` objects. ``values()`` gives the responses
    (stand-in defaults included), ready to aggregate: ``sum(collected.values())``.
    ``deadline_hit`` is True when the dispatch's deadline cut a call short or
    kept one from starting.
    """

    __slots__ = ("_outcomes", "deadline_hit")

    def __init__(self, outcomes: list[Outcome], *, deadline_hit: bool = False) -> None:
        self._outcomes = outcomes
        self.deadline_hit = deadline_hit

    def __iter__(self) -> Iterator[Outcome]:
        return iter(self._outcomes)

    def __len__(self) -> int:
        return len(self._outcomes)

    def __getitem__(self, index: int) -> Outcome:
        return self._outcomes[index]

    def __bool__(self) -> bool:
        return bool(self._outcomes)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for outcome in self._outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        summary = ", ".join(f"{status}={n}" for status, n in counts.items())
        hit = ", deadline hit" if self.deadline_hit else ""
        return f"<Collected {len(self._outcomes)} outcomes: {summary or 'none'}{hit}>"

    def values(self) -> list[Any]:
        """
        The responses of the listeners that produced one, in order.

        A failed listener whose error was collected (``on_error="log"``) or
        whose fallback answered contributes its stand-in value; background
        listeners, and failed ones whose error is grouped (``on_error="group"``),
        contribute nothing.
        """
        return [o.value for o in self._outcomes if o.has_value]

    def errors(self) -> dict[Callable[..., Any], BaseException]:
        """Map each listener that did not succeed to its exception."""
        return {o.receiver: o.error for o in self._outcomes if o.error is not None}

    def as_pairs(self) -> list[tuple[Callable[..., Any], Any]]:
        """
        Django's ``[(receiver, response)]`` shape, as ``send_robust`` returns it:
        the response for successes, the exception for failures.
        """
        return [(o.receiver, o.value if o.error is None else o.error) for o in self._outcomes]

    def by_status(self, status: Status) -> list[Outcome]:
        """The outcomes that ended with ``status``."""
        return [o for o in self._outcomes if o.status == status]


class Returned(Collected):
    """
    The :class:`Collected` of a dispatch whose every listener returned (the
    hot paths: ``_dispatch.dispatch_plain`` for sync listeners,
    ``_dispatch.run_plain`` for async ones that never suspended), holding each call's
    outcome as the plain tuple of its fields (``fields``, in ``Outcome``'s
    order): it makes them :class:`Outcome` objects when they are first
    read (once; two threads reading at the same moment may each build
    them). A caller that reads nothing (``send_sync``'s usual one) or
    only :meth:`values`, ``len()`` or :meth:`errors` never pays for them
    (about 0.1 us each); one that reads them pays then what the dispatch
    would have.
    """

    __slots__ = ("_built", "_fields")

    def __init__(self, fields: list[tuple[Any, ...]]) -> None:
        self._fields: list[tuple[Any, ...]] | list[Outcome] = fields
        self._built: list[Outcome] | None = None
        self.deadline_hit = False

    @property
    def _outcomes(self) -> list[Outcome]:
        # Every read of Collected's goes through here (not a __getattr__ on the unset
        # slot: raising its AttributeError would cost more than building them).
        built = self._built
        if built is None:
            # The outcomes hold the same fields: they stand for the tuples from now on.
            built = self._built = self._fields = list(map(_make_outcome, self._fields))
        return built

    @_outcomes.setter
    def _outcomes(self, outcomes: list[Outcome]) -> None:
        # What copy and pickle restore (they read every slot, this one built).
        self._built = self._fields = outcomes

    def __len__(self) -> int:
        return len(self._fields)

    def __bool__(self) -> bool:
        return bool(self._fields)

    def values(self) -> list[Any]:
        """As :meth:`Collected.values`: every listener returned, so every value counts."""
        return list(map(_value_of, self._fields))

    def errors(self) -> dict[Callable[..., Any], BaseException]:
        """As :meth:`Collected.errors`: none failed."""
        return {}


_make_outcome: Callable[[tuple[Any, ...]], Outcome] = functools.partial(new_outcome, Outcome)
"""An Outcome from the tuple of its fields (a C call: mapped over a Returned's fields)."""
_value_of = operator.itemgetter(Outcome._fields.index("value"))
