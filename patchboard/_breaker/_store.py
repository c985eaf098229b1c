"""
What a circuit breaker asks of the store that keeps its state.

A store makes the breaker's state decisions: may this call go through (and
as what: a normal call, a half-open probe), and what does its result change.
The breaker only classifies results, counts, logs and signals. A store
reports the transitions it makes by appending them to its ``pending`` deque;
the breaker drains it after each decision.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from django.core.exceptions import ImproperlyConfigured

from patchboard._breaker._machine import CircuitState, Control, Forced, Result, Transition
from patchboard._exceptions import CircuitOpen

StoreKind: TypeAlias = Literal["memory", "redis", "redis_cluster", "redis_sentinel"]
"""Where a breaker's state lives: this process, one Redis server, a Redis Cluster,
or the primary that Redis Sentinels watch."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreView:
    """A store's state as last known to this process (timestamps are POSIX seconds)."""

    state: CircuitState
    """Effective state: an open circuit past its ``retry_at`` reads ``"half_open"``."""
    failures: int
    slow_calls: int
    """Rate rule: slow calls in the window (0 otherwise)."""
    opened_at: float | None
    retry_at: float | None
    forced: Forced
    probes: int
    fallback: bool
    """The Redis store is unreachable and this view is the in-process fallback's."""


class Ticket:
    """
    What a store handed one admitted call: a normal admission or a probe slot.

    The breaker keeps it per entry (a contextvar stack) and gives it back
    with the result, so concurrent entries never share it.
    """

    __slots__ = ("origin", "probe")

    def __init__(self, origin: object, probe: str | None) -> None:
        self.origin = origin
        self.probe = probe

    def __repr__(self) -> str:
        return f"<Ticket probe={self.probe!r}>"


class BreakerStore(Protocol):
    """
    The interface between ``CircuitBreaker`` and a store.

    ``acquire()`` admits a call (returning its :class:`Ticket`) or raises
    ``CircuitOpen``; ``refusal()`` is the ``CircuitOpen`` it would raise now,
    when the store can tell without I/O (else None); ``record()`` reports the
    call's result. A store whose
    ``remote`` flag is true does I/O and has async twins (``aacquire``,
    ``arecord``, ``aforce``; a local store's are its sync methods). ``fast``
    may be read without a lock: when true, a success of a normal admission
    changes nothing.
    """

    pending: deque[Transition]
    admitted: Ticket
    """The ticket of every normal admission (no probe) this store makes itself."""

    @property
    def remote(self) -> bool: ...
    @property
    def fast(self) -> bool: ...
    @property
    def label(self) -> str: ...
    @property
    def kind(self) -> StoreKind: ...
    @property
    def state(self) -> CircuitState: ...

    def acquire(self) -> Ticket: ...
    def refusal(self) -> CircuitOpen | None: ...
    def record(self, ticket: Ticket, result: Result) -> None: ...
    def force(self, action: Control) -> None: ...
    async def aacquire(self) -> Ticket: ...
    async def arecord(self, ticket: Ticket, result: Result) -> None: ...
    async def aforce(self, action: Control) -> None: ...
    def view(self) -> StoreView: ...
    def forget(self) -> None: ...


class UnusableStore:
    """
    Stands in for a store that could not be built: ``PATCHBOARD["STORE"]`` or
    ``store=`` is a malformed URL, or names Redis without the redis package.

    Building a breaker never fails on configuration (breakers are built at
    import, and ``manage.py check`` must get to report the problem:
    ``patchboard.E001``/``E010``); every guarded call raises the problem
    instead, as an ``ImproperlyConfigured`` naming the breaker.

    Also the store of a keyed breaker itself, which guards nothing (its
    circuits do): ``error`` is then a ``TypeError`` saying so.
    """

    remote = False
    fast = False
    state: CircuitState = "closed"

    def __init__(
        self,
        label: str,
        problem: ImproperlyConfigured | str,
        *,
        error: type[Exception] = ImproperlyConfigured,
        kind: StoreKind = "memory",
    ) -> None:
        self.label = label
        self.kind = kind
        """The kind of store it stands in for."""
        self.problem = str(problem)
        self.error = error
        self.pending: deque[Transition] = deque()
        self.admitted = Ticket(self, None)

    def acquire(self) -> Ticket:
        raise self.error(self.problem)

    def refusal(self) -> CircuitOpen | None:
        """None: the call goes on to :meth:`acquire`, which raises the problem."""
        return None

    def record(self, ticket: Ticket, result: Result) -> None:
        """Nothing was admitted, so nothing is recorded."""

    def force(self, action: Control) -> None:
        raise self.error(self.problem)

    async def aacquire(self) -> Ticket:
        return self.acquire()

    async def arecord(self, ticket: Ticket, result: Result) -> None:
        pass

    async def aforce(self, action: Control) -> None:
        self.force(action)

    def view(self) -> StoreView:
        return StoreView(
            state="closed",
            failures=0,
            slow_calls=0,
            opened_at=None,
            retry_at=None,
            forced=None,
            probes=0,
            fallback=False,
        )

    def forget(self) -> None:
        """Nothing to forget."""
