"""
The request's time budget: one deadline per dispatch, inherited by
everything under it.

A dispatch with ``deadline=`` (seconds from now) sets an absolute deadline on
the ``time.monotonic()`` clock (asyncio's loop clock) in a contextvar, for
as long as it runs. Everything under it reads the same contextvar: a listener
call's time limit is cut to what is left, a queued call never waits past it,
and a listener that dispatches another signal hands its own dispatch the
rest (a nested deadline can only be earlier), like gRPC's deadline
propagation. Tasks and listener threads copy the context, so they inherit it.

Background listeners are not bound by it: they leave the request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("patchboard.deadline", default=None)
"""The absolute deadline (``time.monotonic()``) of the dispatch this context is in."""

_brief: ContextVar[bool] = ContextVar("patchboard.brief", default=False)
"""Whether the call this context runs has less time left than its listener's own timeout."""


def current() -> float | None:
    """The absolute deadline in force here, or None."""
    return _deadline.get()


def remaining() -> float | None:
    """Seconds left before the deadline in force here (never negative), or None."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@contextmanager
def budget(seconds: float | None) -> Iterator[float | None]:
    """
    Run the block under a deadline ``seconds`` from now, or the inherited one
    if it is earlier (None: the inherited one, if any); yields the deadline
    in force.
    """
    if seconds is None:
        yield _deadline.get()
        return
    token = _deadline.set(_earliest(seconds))
    try:
        yield _deadline.get()
    finally:
        _deadline.reset(token)


@contextmanager
def none() -> Iterator[None]:
    """Run the block under no deadline at all (a background task has left the request)."""
    token = _deadline.set(None)
    try:
        yield
    finally:
        _deadline.reset(token)


def enter(seconds: float | None) -> float | None:
    """Like :func:`budget`, for a context of its own (a copied one, for tasks); the deadline."""
    if seconds is not None:
        _deadline.set(_earliest(seconds))
    return _deadline.get()


def _earliest(seconds: float) -> float:
    deadline = time.monotonic() + seconds
    inherited = _deadline.get()
    return inherited if inherited is not None and inherited < deadline else deadline


@contextmanager
def brief(is_brief: bool) -> Iterator[None]:
    """Mark the block as a call that cannot wait its listener's full time (see ``cannot_wait``)."""
    if not is_brief:
        yield
        return
    token = _brief.set(True)
    try:
        yield
    finally:
        _brief.reset(token)


def cannot_wait() -> bool:
    """
    Whether the call running here was left less time by its deadline than
    its listener's own ``timeout``: a circuit breaker admits no half-open
    probe for it (the probe would likely be cut short and tell nothing).
    """
    return _brief.get()
