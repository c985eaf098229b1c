"""
The request's time budget: one deadline per dispatch, inherited by
everything under it.

A dispatch with ``deadline=`` (seconds from now) sets an absolute deadline on
patchboard's clock (``_clock.now()``, asyncio's loop clock) in a contextvar, for
as long as it runs. Everything under it reads the same contextvar: a listener
call's time limit is cut to what is left, a queued call never waits past it,
and a listener that dispatches another signal hands its own dispatch the
rest (a nested deadline can only be earlier), like gRPC's deadline
propagation. Tasks and listener threads copy the context, so they inherit it.

A call that starts with less than half of its dispatch's budget left (it
waited in the queue, or came after slower work) is *late*. A circuit breaker
gives a late call no half-open probe, and does not count the deadline
cutting it short against the service: the caller ran out of time, the
service was never given a fair chance. A call that started with a fair share
of the budget and still did not answer by the deadline did fail the service's
test, like one its own ``timeout`` cut (otherwise a service that hangs would
never open a circuit whose callers' deadlines are shorter than its timeout).

Background listeners are not bound by it: they leave the request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final, NamedTuple

from patchboard import _clock

LATE = 0.5
"""A call that starts with less than this fraction of its dispatch's budget left is late."""


class _Budget(NamedTuple):
    deadline: float
    """Absolute, on patchboard's clock (``_clock.now()``)."""
    seconds: float
    """The budget the deadline was set with (what a call that starts at once has)."""


_budget: ContextVar[_Budget | None] = ContextVar("patchboard.deadline", default=None)
"""The deadline of the dispatch this context is in."""

_late: ContextVar[bool] = ContextVar("patchboard.late", default=False)
"""Whether the call this context runs started late (see :func:`is_late`)."""


in_force: Final = _budget.get
"""The budget in force here, or None (a C call: the sync hot path asks it)."""


def current() -> float | None:
    """The absolute deadline in force here, or None."""
    budget = _budget.get()
    return None if budget is None else budget.deadline


def remaining() -> float | None:
    """Seconds left before the deadline in force here (never negative), or None."""
    budget = _budget.get()
    return None if budget is None else max(0.0, budget.deadline - _clock.now())


def started_late(left: float) -> bool:
    """Whether a call with ``left`` seconds to its deadline starts late (see the module)."""
    budget = _budget.get()
    return budget is not None and left < budget.seconds * LATE


@contextmanager
def budget(seconds: float | None) -> Iterator[float | None]:
    """
    Run the block under a deadline ``seconds`` from now, or the inherited one
    if it is earlier (None: the inherited one, if any); yields the deadline
    in force.
    """
    if seconds is None:
        yield current()
        return
    token = _budget.set(_earliest(seconds))
    try:
        yield current()
    finally:
        _budget.reset(token)


@contextmanager
def none() -> Iterator[None]:
    """Run the block under no deadline at all (a background task has left the request)."""
    token = _budget.set(None)
    try:
        yield
    finally:
        _budget.reset(token)


def enter(seconds: float | None) -> float | None:
    """Like :func:`budget`, for a context of its own (a copied one, for tasks); the deadline."""
    if seconds is not None:
        _budget.set(_earliest(seconds))
    return current()


def _earliest(seconds: float) -> _Budget:
    # The inherited budget, whole, if its deadline comes first: a nested
    # dispatch's calls are late or not by the request's budget, not its own.
    deadline = _clock.now() + seconds
    inherited = _budget.get()
    if inherited is not None and inherited.deadline < deadline:
        return inherited
    return _Budget(deadline, seconds)


@contextmanager
def late(is_late: bool) -> Iterator[None]:
    """Mark the block as a late call (see :func:`is_late`)."""
    if not is_late:
        yield
        return
    token = _late.set(True)
    try:
        yield
    finally:
        _late.reset(token)


def is_late() -> bool:
    """
    Whether the call running here started late: with less than half of its
    dispatch's budget left. A circuit breaker gives it no half-open probe
    (it would likely be cut short and tell nothing).
    """
    return _late.get()
