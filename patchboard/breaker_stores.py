"""
Where a circuit breaker keeps its state: in this process, or in Redis.

A store makes the breaker's state decisions: may this call go through (and
as what: a normal call, a half-open probe), and what does its outcome change.
The breaker itself only classifies outcomes, counts, logs and signals.

:class:`MemoryStore`
    The state lives in this process, guarded by a ``threading.Lock`` held for
    the few microseconds of a decision, never around the guarded call. While
    the circuit is closed with no failures recorded, neither admission nor a
    success takes the lock.
:class:`RedisStore`
    The state lives in one Redis hash, ``patchboard:breaker:{<name>}``, and
    the probes' leases in a sorted set, ``patchboard:breaker:{<name>}:probes``
    (the braces make the two keys one cluster hash slot); both expire when
    unused. Every decision is one Lua script run by ``EVALSHA``:
    atomic, on the Redis server's clock (``TIME``), one round trip. Each reply
    carries the whole state, which the process keeps as its *view* for
    ``sync_interval`` seconds: within that time a closed view admits calls
    and an open view rejects them without a round trip; a success that finds
    zero failures writes nothing. So a call makes at most one round trip,
    except that a failure after the view went stale makes two (read, then
    write), and a half-open probe makes two (atomic admission, then report).
    When Redis fails or times out (0.25 s; see :class:`RedisLink`), the store
    falls back to an in-process :class:`MemoryStore` started from its last
    view (an open circuit stays open), logs ``circuit_store_unavailable`` at
    most once per ``log_interval`` per Redis URL, leaves Redis alone for
    ``retry_after`` seconds, then lets one call try it again; the first
    answer from Redis switches back (``circuit_store_recovered``).

A store reports the transitions it makes by appending :class:`Transition`
objects to its ``pending`` deque; the breaker drains it after each decision,
so a process learns of a transition made by a Redis script from the reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, Protocol, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import anyio
from django.core.exceptions import ImproperlyConfigured

from patchboard.exceptions import CircuitOpen
from patchboard.log import logger

if TYPE_CHECKING:
    from patchboard.breaker import BreakerConfig

State: TypeAlias = Literal["closed", "open", "half_open"]
Forced: TypeAlias = Literal["open", "closed"] | None

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"

Outcome: TypeAlias = int
SUCCESS: Final = 0
"""The guarded code returned."""
FAILURE: Final = 1
"""The guarded code raised an ``Exception`` that is not excluded."""
RELEASE: Final = 2
"""Counts as nothing (excluded exception, cancellation): only frees a probe slot."""


def to_datetime(timestamp: float | None) -> datetime | None:
    """A POSIX timestamp as an aware UTC datetime (``None`` stays ``None``)."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """One change of state, made by a store, for the breaker to log and signal."""

    old: State
    new: State
    failures: int
    retry_at: float | None
    """POSIX timestamp of the next probe, when ``new`` is ``"open"``."""
    forced: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreView:
    """A store's state as last known to this process (timestamps are POSIX seconds)."""

    state: State
    """Effective state: an open circuit past its ``retry_at`` reads ``"half_open"``."""
    failures: int
    opened_at: float | None
    retry_at: float | None
    forced: Forced
    probes: int
    fallback: bool
    """The Redis store is unreachable and this view is the in-process fallback's."""


class Ticket:
    """
    What a store handed one admitted call: a normal admission or a probe slot.

    The breaker keeps it per entry (a contextvar stack, or a local variable)
    and gives it back with the outcome, so concurrent entries never share it.
    """

    __slots__ = ("origin", "probe")

    def __init__(self, origin: object, probe: str | None) -> None:
        self.origin = origin
        self.probe = probe

    def __repr__(self) -> str:
        return f"<Ticket probe={self.probe!r}>"


class BreakerStore(Protocol):
    """
    The interface between :class:`~patchboard.breaker.CircuitBreaker` and a store.

    ``acquire()`` admits a call (returning its :class:`Ticket`) or raises
    :class:`~patchboard.CircuitOpen`; ``record()`` reports the call's outcome.
    Stores whose ``remote`` flag is true do I/O and have async twins
    (``aacquire``, ``arecord``, ...); the breaker calls the sync methods of a
    local store from async code too. ``fast`` may be read without a lock: when
    true, a success of a normal admission changes nothing.
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
    def state(self) -> State: ...

    def acquire(self) -> Ticket: ...
    def record(self, ticket: Ticket, outcome: Outcome) -> None: ...
    def view(self) -> StoreView: ...
    def force(self, action: Literal["force_open", "force_closed", "reset"]) -> None: ...
    def forget(self) -> None: ...


def _exceeds_rate(failures: int, calls: int, rate_ppm: int) -> bool:
    # Integer arithmetic, the same as the Lua script's: 0.3 of 10 calls is 3.
    return failures * 1_000_000 >= rate_ppm * calls


class MemoryStore:
    """
    A breaker's state in this process, shared by its threads and tasks.

    Thread-safe: every change happens under a ``threading.Lock`` held only
    for the decision itself. Admission in the closed state and a success
    while no failure is recorded (``fast``) read plain attributes and take no
    lock: a call admitted an instant before another thread opens the circuit
    is the same race as one admitted an instant earlier.
    """

    remote: Final = False
    label: Final = "memory"

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        *,
        pending: deque[Transition] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.clock = config.clock
        self.pending: deque[Transition] = deque() if pending is None else pending
        self.admitted = Ticket(self, None)
        self._lock = threading.Lock()
        self._count_rule = config.trip_rule == "count"
        self._tokens = itertools.count(1)
        self._clear()

    def _clear(self) -> None:
        self._state: State = CLOSED
        self._failures = 0
        self._window: deque[bool] = deque()
        self._opened_at: float | None = None
        self._retry_at: float | None = None
        self._reset_timeout = self.config.reset_timeout
        self._probes: dict[str, float] = {}
        self._probe_successes = 0
        self._forced: Forced = None
        self.fast = self._count_rule

    # -- decisions ---------------------------------------------------------

    def acquire(self) -> Ticket:
        if self._state is CLOSED:
            return self.admitted
        with self._lock:
            if self._state is CLOSED:
                return self.admitted
            now = self.clock()
            if self._state is OPEN:
                if self._retry_at is None or now < self._retry_at:
                    raise CircuitOpen(self.name, to_datetime(self._retry_at))
                self._state = HALF_OPEN
                self._probe_successes = 0
                self._probes.clear()
                self._note(OPEN, HALF_OPEN)
            probes = self._probes
            if len(probes) >= self.config.half_open_max_calls:
                for token, lease in list(probes.items()):
                    if lease <= now:
                        del probes[token]
            if len(probes) < self.config.half_open_max_calls:
                token = str(next(self._tokens))
                probes[token] = now + self.config.lease
                return Ticket(self, token)
            raise CircuitOpen(self.name, to_datetime(min(probes.values())))

    def record(self, ticket: Ticket, outcome: Outcome) -> None:
        if ticket.probe is None:
            if outcome == SUCCESS:
                if self.fast:
                    return
                with self._lock:
                    if self._state is CLOSED and self._forced is None:
                        if self._count_rule:
                            self._failures = 0
                            self.fast = True
                        else:
                            self._push(False)
            elif outcome == FAILURE:
                with self._lock:
                    if self._state is CLOSED and self._forced is None:
                        self._record_failure()
            return
        with self._lock:
            if self._probes.pop(ticket.probe, None) is None or self._state is not HALF_OPEN:
                return  # the lease expired, or the circuit moved on: a late report
            if outcome == SUCCESS:
                self._probe_successes += 1
                if self._probe_successes >= self.config.success_threshold:
                    self._close(HALF_OPEN)
            elif outcome == FAILURE:
                grown = self._reset_timeout * self.config.backoff_factor
                cap = self.config.max_reset_timeout
                self._open(min(grown, cap) if cap is not None else grown, HALF_OPEN)

    def _record_failure(self) -> None:
        self.fast = False
        if self._count_rule:
            self._failures += 1
            if self._failures >= self.config.failure_threshold:
                self._open(self.config.reset_timeout, CLOSED)
            return
        self._push(True)
        calls = len(self._window)
        if calls >= self.config.minimum_calls and _exceeds_rate(
            self._failures, calls, self.config.rate_ppm
        ):
            self._open(self.config.reset_timeout, CLOSED)

    def _push(self, failed: bool) -> None:
        window = self._window
        window.append(failed)
        self._failures += failed
        if len(window) > self.config.window_size:
            self._failures -= window.popleft()

    def _open(self, timeout: float, old: State) -> None:
        now = self.clock()
        self._state = OPEN
        self.fast = False
        self._opened_at = now
        self._reset_timeout = timeout
        self._retry_at = now + timeout
        self._probes.clear()
        self._note(old, OPEN)

    def _close(self, old: State) -> None:
        forced = self._forced
        self._clear()
        self._forced = forced
        if old is not CLOSED:
            self._note(old, CLOSED)

    def _note(self, old: State, new: State) -> None:
        self.pending.append(
            Transition(
                old=old,
                new=new,
                failures=self._failures,
                retry_at=self._retry_at,
                forced=self._forced is not None,
            )
        )

    # -- control -----------------------------------------------------------

    def force(self, action: Literal["force_open", "force_closed", "reset"]) -> None:
        """``force_open``: open until reset; ``force_closed``: closed, counting nothing."""
        with self._lock:
            self._force(action)

    def _force(self, action: Literal["force_open", "force_closed", "reset"]) -> None:
        old = self._state
        if action == "force_open":
            self._forced = "open"
            self._state = OPEN
            self.fast = False
            self._opened_at = self.clock()
            self._retry_at = None
            self._probes.clear()
            if old is not OPEN:
                self._note(old, OPEN)
            return
        self._forced = "closed" if action == "force_closed" else None
        self._close(old)

    def seed(self, *, state: State, failures: int, retry_in: float | None, forced: Forced) -> None:
        """Start over from another store's state (no transition is reported)."""
        with self._lock:
            self._clear()
            self._forced = forced
            if state is CLOSED:
                if self._count_rule and forced is None:
                    self._failures = failures
                    self.fast = failures == 0
                return
            now = self.clock()
            self._state = OPEN
            self.fast = False
            self._failures = failures
            self._opened_at = now
            self._retry_at = None if retry_in is None else now + max(0.0, retry_in)

    def forget(self) -> None:
        """Back to a fresh closed state, reporting no transition (for tests)."""
        with self._lock:
            self._clear()

    def view(self) -> StoreView:
        with self._lock:
            state = self._state
            if state is OPEN and self._retry_at is not None and self.clock() >= self._retry_at:
                state = HALF_OPEN
            return StoreView(
                state=state,
                failures=self._failures,
                opened_at=self._opened_at,
                retry_at=self._retry_at,
                forced=self._forced,
                probes=len(self._probes),
                fallback=False,
            )

    @property
    def state(self) -> State:
        state = self._state
        if state is OPEN:
            retry_at = self._retry_at
            if retry_at is not None and self.clock() >= retry_at:
                return HALF_OPEN
        return state


# -- Redis -------------------------------------------------------------------

SCRIPT: Final = """
-- patchboard circuit breaker: one atomic state decision per call.
local key, pkey = KEYS[1], KEYS[2]
local op, token, rule = ARGV[1], ARGV[2], ARGV[3]
local threshold = tonumber(ARGV[4])
local rate_ppm = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local min_calls = tonumber(ARGV[7])
local reset_ms = tonumber(ARGV[8])
local factor = tonumber(ARGV[9])
local max_ms = tonumber(ARGV[10])
local max_probes = tonumber(ARGV[11])
local succ_needed = tonumber(ARGV[12])
local lease_ms = tonumber(ARGV[13])
local ttl_ms = tonumber(ARGV[14])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local h = redis.call('HMGET', key, 's', 'f', 'w', 'oa', 'ra', 'rt', 'ps', 'fo')
local s = h[1] or 'c'
local f = tonumber(h[2]) or 0
local w = h[3] or ''
local oa = tonumber(h[4]) or -1
local ra = tonumber(h[5]) or -1
local rt = tonumber(h[6]) or reset_ms
local ps = tonumber(h[7]) or 0
local fo = h[8] or ''
local old = s
local decision = 3
local reply_ra = ra
local dirty = false

local function open_circuit(timeout)
  s = 'o'; oa = now; rt = timeout; ra = now + timeout; ps = 0; reply_ra = ra
  redis.call('DEL', pkey)
  dirty = true
end
local function close_circuit()
  s = 'c'; f = 0; w = ''; oa = -1; ra = -1; rt = reset_ms; ps = 0; reply_ra = -1
  redis.call('DEL', pkey)
  dirty = true
end
local function push(bit)
  w = w .. bit
  if #w > window then
    if string.sub(w, 1, 1) == '1' then f = f - 1 end
    w = string.sub(w, 2)
  end
end

if op == 'acquire' then
  if s == 'c' then
    decision = 0
  else
    if s == 'o' then
      if fo == 'o' or now < ra then
        decision = 2
      else
        s = 'h'; ps = 0; dirty = true
        redis.call('DEL', pkey)
      end
    end
    if s == 'h' then
      redis.call('ZREMRANGEBYSCORE', pkey, '-inf', now)
      if redis.call('ZCARD', pkey) < max_probes then
        redis.call('ZADD', pkey, now + lease_ms, token)
        redis.call('PEXPIRE', pkey, lease_ms + ttl_ms)
        decision = 1
      else
        decision = 2
        local first = redis.call('ZRANGE', pkey, 0, 0, 'WITHSCORES')
        reply_ra = tonumber(first[2])
      end
    end
  end
elseif op == 'success' then
  if token ~= '' then
    if redis.call('ZREM', pkey, token) == 1 and s == 'h' then
      ps = ps + 1; dirty = true
      if ps >= succ_needed then close_circuit() end
    end
  elseif s == 'c' and fo == '' then
    if rule == 'count' then
      if f > 0 then f = 0; dirty = true end
    else
      push('0'); dirty = true
    end
  end
elseif op == 'failure' then
  if token ~= '' then
    if redis.call('ZREM', pkey, token) == 1 and s == 'h' then
      local grown = math.floor(rt * factor)
      if max_ms > 0 and grown > max_ms then grown = max_ms end
      open_circuit(grown)
    end
  elseif s == 'c' and fo == '' then
    f = f + 1; dirty = true
    if rule == 'count' then
      if f >= threshold then open_circuit(reset_ms) end
    else
      push('1')
      if #w >= min_calls and f * 1000000 >= rate_ppm * #w then open_circuit(reset_ms) end
    end
  end
elseif op == 'release' then
  if token ~= '' then redis.call('ZREM', pkey, token) end
elseif op == 'force_open' then
  s = 'o'; fo = 'o'; oa = now; ra = -1; ps = 0; reply_ra = -1; dirty = true
  redis.call('DEL', pkey)
elseif op == 'force_closed' then
  close_circuit(); fo = 'c'
elseif op == 'reset' then
  close_circuit(); fo = ''
end

if dirty then
  if s == 'c' and f == 0 and w == '' and fo == '' then
    redis.call('DEL', key)
  else
    redis.call('HSET', key, 's', s, 'f', f, 'w', w, 'oa', oa, 'ra', ra, 'rt', rt,
               'ps', ps, 'fo', fo)
    if fo ~= '' then
      redis.call('PERSIST', key)
    elseif ra > now then
      redis.call('PEXPIRE', key, ttl_ms + ra - now)
    else
      redis.call('PEXPIRE', key, ttl_ms)
    end
  end
end

local codes = {c = 0, o = 1, h = 2}
local transition = -1
if s ~= old then transition = codes[old] end
local forced = 0
if fo == 'o' then forced = 1 elseif fo == 'c' then forced = 2 end
local probes = 0
if s == 'h' then probes = redis.call('ZCARD', pkey) end
return {decision, codes[s], f, oa, reply_ra, now, transition, forced, probes}
"""

ADMIT: Final = 0
PROBE: Final = 1
REJECT: Final = 2

_STATES: Final[tuple[State, State, State]] = (CLOSED, OPEN, HALF_OPEN)
_FORCED: Final[tuple[Forced, Forced, Forced]] = (None, "open", "closed")
_TOKEN_PREFIX: Final = os.urandom(4).hex()
_token_counter = itertools.count(1)


def _new_token() -> str:
    # The pid tells forked workers apart; they share the random prefix.
    return f"{os.getpid():x}.{_TOKEN_PREFIX}.{next(_token_counter)}"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and reprs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class _View(NamedTuple):
    """A Redis script's reply, as this process keeps it."""

    state: State
    failures: int
    opened_at_ms: int
    retry_at_ms: int
    server_ms: int
    forced: Forced
    probes: int
    fetched: float
    """``time.monotonic()`` when the request was sent (so ages are never underestimated)."""

    def server_now_ms(self, now: float) -> float:
        """An upper bound on the server's clock at monotonic time ``now``: the
        script ran after the request was sent, and ``TIME`` was cut to the ms."""
        return self.server_ms + 1 + (now - self.fetched) * 1000.0


class RedisLink:
    """
    The clients of one Redis URL, shared by every breaker that uses it, and
    whether that Redis is currently considered down.

    The sync client (thread-safe connection pool) is made on first use; the
    async client is made once per event loop, since asyncio connections
    cannot cross loops. No client retries: a failed or timed-out command
    fails at once, and the breaker falls back to its in-process state.
    """

    retry_after: float = 1.0
    """Seconds to leave a failed Redis alone before one call tries it again."""
    log_interval: float = 30.0
    """At most one ``circuit_store_unavailable`` event per this many seconds."""
    timeout: float = 0.25
    """``socket_timeout``, ``socket_connect_timeout`` and the wait for a free
    pooled connection, unless the URL's query string sets them
    (``?socket_timeout=0.1&socket_connect_timeout=0.1&timeout=0.1``)."""
    max_connections: int = 50
    """Connections per client (one sync client, one async client per event
    loop) unless the URL sets ``max_connections``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = mask_url(url)
        self.down_until = 0.0
        self.down_since = 0.0
        self.last_logged = -math.inf
        self._lock = threading.Lock()
        self._sync: tuple[Any, Any] | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def _kwargs(self) -> dict[str, Any]:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 0),
            "driver_info": None,
            # A bounded pool that makes callers wait (at most ``timeout``) for a
            # free connection, rather than failing past its size or opening
            # hundreds of connections for a burst of concurrent calls.
            "max_connections": self.max_connections,
            "timeout": self.timeout,
        }

    def sync_script(self) -> Any:
        script = self._sync
        if script is None:
            import redis

            with self._lock:
                if self._sync is None:
                    pool = redis.BlockingConnectionPool.from_url(self.url, **self._kwargs())
                    client = redis.Redis(connection_pool=pool)
                    self._sync = (client, client.register_script(SCRIPT))
                script = self._sync
        return script[1]

    def async_script(self) -> Any:
        loop = asyncio.get_running_loop()
        pair = self._async.get(loop)
        if pair is None:
            import redis.asyncio

            pool = redis.asyncio.BlockingConnectionPool.from_url(self.url, **self._kwargs())
            client = redis.asyncio.Redis(connection_pool=pool)
            pair = self._async[loop] = (client, client.register_script(SCRIPT))
        return pair[1]

    def available(self) -> bool:
        """Whether to try Redis now; after the back-off, one caller gets to try."""
        down_until = self.down_until
        if not down_until:
            return True
        now = time.monotonic()
        if now < down_until:
            return False
        self.down_until = now + self.retry_after  # the others stay on the fallback meanwhile
        return True

    def failed(self, error: BaseException, breaker: str) -> None:
        now = time.monotonic()
        if not self.down_until:
            self.down_since = now
        self.down_until = now + self.retry_after
        if now - self.last_logged >= self.log_interval:
            self.last_logged = now
            logger().warning(
                "circuit_store_unavailable",
                breaker=breaker,
                store=self.label,
                error=repr(error),
                retry_in_s=self.retry_after,
            )

    def succeeded(self, breaker: str) -> None:
        if self.down_until:
            self.down_until = 0.0
            logger().info(
                "circuit_store_recovered",
                breaker=breaker,
                store=self.label,
                down_s=round(time.monotonic() - self.down_since, 3),
            )

    async def aclose(self) -> None:
        """Close this event loop's async client (it is made again on next use)."""
        pair = self._async.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            await pair[0].aclose(close_connection_pool=True)

    def close(self) -> None:
        """Close the sync client and forget every loop's async client."""
        with self._lock:
            pair, self._sync = self._sync, None
        if pair is not None:
            pair[0].close()
            pair[0].connection_pool.disconnect()
        self._async.clear()


_links: dict[str, RedisLink] = {}
_links_lock = threading.Lock()


def redis_link(url: str) -> RedisLink:
    """The one :class:`RedisLink` of ``url`` in this process."""
    link = _links.get(url)
    if link is None:
        with _links_lock:
            link = _links.setdefault(url, RedisLink(url))
    return link


def reset_links() -> None:
    """Close and forget every Redis link (their down state with them); for tests."""
    with _links_lock:
        links = list(_links.values())
        _links.clear()
    for link in links:
        link.close()


def _store_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class RedisStore:
    """
    A breaker's state in Redis, shared by every process that uses the same
    URL, key prefix and name; an in-process :class:`MemoryStore` stands in
    while Redis is unreachable.
    """

    remote: Final = True
    fast: Final = False

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        url: str,
        *,
        key_prefix: str = "patchboard:breaker",
        key_ttl: float = 3600.0,
    ) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ImproperlyConfigured(
                f"circuit breaker {name!r}: store={mask_url(url)!r} needs the redis "
                "package (pip install 'django-patchboard[redis]')"
            ) from None
        self.name = name
        self.config = config
        self.link = redis_link(url)
        self.label = self.link.label
        self.pending: deque[Transition] = deque()
        self.fallback = MemoryStore(name, config, pending=self.pending)
        self._errors = _store_errors()
        self._keys = (f"{key_prefix}:{{{name}}}", f"{key_prefix}:{{{name}}}:probes")
        self._count_rule = config.trip_rule == "count"
        self._sync_interval = config.sync_interval
        max_reset = config.max_reset_timeout
        self._args: tuple[str, ...] = (
            config.trip_rule,
            str(config.failure_threshold),
            str(config.rate_ppm),
            str(config.window_size),
            str(config.minimum_calls),
            str(_ms(config.reset_timeout)),
            repr(config.backoff_factor),
            str(_ms(max_reset) if max_reset is not None else 0),
            str(config.half_open_max_calls),
            str(config.success_threshold),
            str(_ms(config.lease)),
            str(_ms(key_ttl)),
        )
        self._view: _View | None = None
        self._seeded = False
        self.admitted = Ticket(self, None)

    # -- decisions without I/O -------------------------------------------------

    def _local_decision(self) -> Ticket | None:
        """Admit or reject from a fresh view; ``None`` when Redis must decide."""
        view = self._view
        if view is None:
            return None
        now = time.monotonic()
        if now - view.fetched >= self._sync_interval:
            return None
        if view.state is CLOSED:
            return self.admitted
        if view.state is OPEN and (
            view.forced == "open" or view.server_now_ms(now) < view.retry_at_ms
        ):
            raise CircuitOpen(self.name, _ms_datetime(view.retry_at_ms))
        return None

    def _outcome_op(self, ticket: Ticket, outcome: Outcome) -> str | None:
        """The script operation an outcome needs; ``None`` when nothing must be written."""
        if ticket.probe is not None:
            return ("success", "failure", "release")[outcome]
        if outcome == RELEASE:
            return None
        view = self._view
        if view is not None:
            if view.state is not CLOSED:
                if time.monotonic() - view.fetched < self._sync_interval:
                    return None  # the script ignores a normal call's outcome unless closed
            elif view.forced == "closed" or (
                outcome == SUCCESS and self._count_rule and view.failures == 0
            ):
                return None
        return "success" if outcome == SUCCESS else "failure"

    def _apply(self, reply: Sequence[int], token: str, sent: float) -> Ticket | None:
        decision, state, failures, opened_at, retry_at, server_ms, old, forced, probes = (
            int(x) for x in reply
        )
        view = _View(
            state=_STATES[state],
            failures=failures,
            opened_at_ms=opened_at,
            retry_at_ms=retry_at,
            server_ms=server_ms,
            forced=_FORCED[forced],
            probes=probes,
            fetched=sent,
        )
        self._view = view
        self._seeded = False
        if old >= 0:
            self.pending.append(
                Transition(
                    old=_STATES[old],
                    new=view.state,
                    failures=failures,
                    retry_at=retry_at / 1000.0 if retry_at >= 0 else None,
                    forced=view.forced is not None,
                )
            )
        if decision == ADMIT:
            return self.admitted
        if decision == PROBE:
            return Ticket(self, token)
        if decision == REJECT:
            raise CircuitOpen(self.name, _ms_datetime(retry_at))
        return None

    def _fallback(self) -> MemoryStore:
        """The in-process fallback, started from the last view of the shared state."""
        if not self._seeded:
            self._seeded = True
            view = self._view
            if view is not None:
                retry_in = None
                if view.state is not CLOSED and view.forced != "open":
                    retry_in = (view.retry_at_ms - view.server_now_ms(time.monotonic())) / 1000
                self.fallback.seed(
                    state=view.state, failures=view.failures, retry_in=retry_in, forced=view.forced
                )
        return self.fallback

    def _argv(self, op: str, token: str) -> list[str]:
        return [op, token, *self._args]

    # -- sync ----------------------------------------------------------------

    def acquire(self) -> Ticket:
        link = self.link
        if not link.available():
            return self._fallback().acquire()
        ticket = self._local_decision()
        if ticket is not None:
            return ticket
        token = _new_token()
        sent = time.monotonic()
        try:
            reply = link.sync_script()(keys=self._keys, args=self._argv("acquire", token))
        except self._errors as exc:
            link.failed(exc, self.name)
            return self._fallback().acquire()
        link.succeeded(self.name)
        ticket = self._apply(reply, token, sent)
        assert ticket is not None
        return ticket

    def record(self, ticket: Ticket, outcome: Outcome) -> None:
        if ticket.origin is not self:
            return self.fallback.record(ticket, outcome)
        op = self._outcome_op(ticket, outcome)
        if op is None:
            return None
        link = self.link
        if link.available():
            sent = time.monotonic()
            try:
                reply = link.sync_script()(keys=self._keys, args=self._argv(op, ticket.probe or ""))
            except self._errors as exc:
                link.failed(exc, self.name)
            else:
                link.succeeded(self.name)
                self._apply(reply, "", sent)
                return None
        if ticket.probe is None:
            fallback = self._fallback()
            fallback.record(fallback.admitted, outcome)
        return None

    def force(self, action: Literal["force_open", "force_closed", "reset", "read"]) -> None:
        """
        Run a control operation (or ``"read"``) on Redis and on the fallback.

        Raises:
            redis.RedisError: Redis is unreachable (the fallback has changed).
        """
        sent = time.monotonic()
        try:
            reply = self.link.sync_script()(keys=self._keys, args=self._argv(action, ""))
        except self._errors as exc:
            self.link.failed(exc, self.name)
            if action != "read":
                self._fallback().force(action)
            raise
        self.link.succeeded(self.name)
        self._apply(reply, "", sent)

    # -- async ---------------------------------------------------------------

    async def aacquire(self) -> Ticket:
        link = self.link
        if not link.available():
            return self._fallback().acquire()
        ticket = self._local_decision()
        if ticket is not None:
            return ticket
        token = _new_token()
        sent = time.monotonic()
        try:
            reply = await link.async_script()(keys=self._keys, args=self._argv("acquire", token))
        except self._errors as exc:
            link.failed(exc, self.name)
            return self._fallback().acquire()
        link.succeeded(self.name)
        ticket = self._apply(reply, token, sent)
        assert ticket is not None
        return ticket

    async def arecord(self, ticket: Ticket, outcome: Outcome) -> None:
        if ticket.origin is not self:
            return self.fallback.record(ticket, outcome)
        op = self._outcome_op(ticket, outcome)
        if op is None:
            return None
        link = self.link
        if link.available():
            sent = time.monotonic()
            try:
                # Shielded: a caller cancelled by an enclosing scope still
                # reports (and frees its probe slot), within the socket timeout.
                with anyio.CancelScope(shield=True):
                    reply = await link.async_script()(
                        keys=self._keys, args=self._argv(op, ticket.probe or "")
                    )
            except self._errors as exc:
                link.failed(exc, self.name)
            else:
                link.succeeded(self.name)
                self._apply(reply, "", sent)
                return None
        if ticket.probe is None:
            fallback = self._fallback()
            fallback.record(fallback.admitted, outcome)
        return None

    async def aforce(self, action: Literal["force_open", "force_closed", "reset", "read"]) -> None:
        """The async twin of :meth:`force`."""
        sent = time.monotonic()
        try:
            reply = await self.link.async_script()(keys=self._keys, args=self._argv(action, ""))
        except self._errors as exc:
            self.link.failed(exc, self.name)
            if action != "read":
                self._fallback().force(action)
            raise
        self.link.succeeded(self.name)
        self._apply(reply, "", sent)

    # -- views ---------------------------------------------------------------

    def forget(self) -> None:
        """Drop the view and the fallback's state (Redis is left alone); for tests."""
        self._view = None
        self.fallback.forget()

    @property
    def using_fallback(self) -> bool:
        return bool(self.link.down_until)

    def view(self) -> StoreView:
        view = self._view
        if self.using_fallback or view is None:
            fallback = self.fallback.view()
            if view is None and not self.using_fallback:
                return fallback
            return dataclasses.replace(fallback, fallback=True)
        return StoreView(
            state=self._effective(view),
            failures=view.failures,
            opened_at=view.opened_at_ms / 1000.0 if view.opened_at_ms >= 0 else None,
            retry_at=view.retry_at_ms / 1000.0 if view.retry_at_ms >= 0 else None,
            forced=view.forced,
            probes=view.probes,
            fallback=False,
        )

    @staticmethod
    def _effective(view: _View) -> State:
        if (
            view.state is OPEN
            and view.forced is None
            and view.server_now_ms(time.monotonic()) >= view.retry_at_ms
        ):
            return HALF_OPEN
        return view.state

    @property
    def state(self) -> State:
        view = self._view
        if self.using_fallback or view is None:
            return self.fallback.state
        return self._effective(view)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _ms_datetime(ms: int) -> datetime | None:
    return to_datetime(ms / 1000.0) if ms >= 0 else None


def make_store(name: str, config: BreakerConfig, store: str) -> MemoryStore | RedisStore:
    """
    The store named by ``store``: ``"memory"`` or a ``redis://``/``rediss://`` URL.

    Raises:
        ImproperlyConfigured: a Redis URL, but the ``redis`` package is missing.
    """
    if store == "memory":
        return MemoryStore(name, config)
    return RedisStore(name, config, store)


if TYPE_CHECKING:

    def _conforms(memory: MemoryStore, redis: RedisStore) -> tuple[BreakerStore, BreakerStore]:
        return memory, redis
