"""
The Redis store: a breaker's state shared by every process that uses it.

The state lives in one Redis hash, ``patchboard:breaker:{<name>}``, the
probes' leases in a sorted set, ``patchboard:breaker:{<name>}:probes``, and a
time window's buckets in a hash, ``patchboard:breaker:{<name>}:window`` (the
braces make the keys one cluster hash slot; a name with a brace in it is
escaped, see :func:`state_key`); all expire when unused.
Every decision is one run of ``breaker.lua`` (``EVALSHA``): atomic, on the
Redis server's clock (``TIME``), one round trip. Each reply carries the whole
state, which the process keeps as its *view* for ``sync_interval`` seconds:
within that time a closed view admits calls and an open view rejects them
without a round trip; a success that finds zero failures writes nothing. So a
call makes at most one round trip, except that a failure after the view went
stale makes two (read, then write), and a half-open probe makes two (atomic
admission, then report).

When Redis fails or times out (0.25 s; see :class:`RedisLink`), the store
falls back to an in-process :class:`~.memory.MemoryStore` started from its
last view (an open circuit stays open), logs ``circuit_store_unavailable``,
leaves Redis alone for ``retry_after`` seconds, then lets one call try it
again; the first answer from Redis switches back, once per outage
(``circuit_store_recovered``). Both events are logged at most once per
``log_interval`` per Redis URL. What the fallback learned is not thrown
away: the first commands a store sends after using its fallback carry the
fallback's circuit if it is open (or half-open), and the script keeps the
more pessimistic state: a closed circuit in Redis opens for what is left of
the local one, an open one in Redis stays and this process adopts it. The
normal path is unchanged (one round trip, no extra arguments); the
write-back rides on the first reply after the outage. A fallback that
stayed closed writes nothing back (its failures are not replayed).

Sync and async callers share one implementation of every operation: each is
a coroutine taking the function that runs the script. Async callers pass
:meth:`RedisLink.arun`; sync callers pass a coroutine function that blocks
on the sync client (:meth:`RedisLink.run`), and :func:`run_blocking` drives
the operation to its end without an event loop (it never suspends).

A malformed URL is refused when the breaker is built
(:func:`check_url`), never at each call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import os
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from importlib.resources import files
from typing import Any, Final, NamedTuple, TypeAlias
from urllib.parse import unquote, urlsplit, urlunsplit

import anyio
from django.core.exceptions import ImproperlyConfigured

from patchboard import _clock
from patchboard._breaker._machine import (
    ADMIT,
    CLOSED,
    FAILURE,
    HALF_OPEN,
    OPEN,
    PROBE,
    REJECT,
    RELEASE,
    SLOW_FAILURE,
    SLOW_SUCCESS,
    SUCCESS,
    CircuitState,
    Control,
    Forced,
    Result,
    Transition,
    to_datetime,
)
from patchboard._breaker._memory import MemoryStore
from patchboard._breaker._store import StoreKind, StoreView, Ticket
from patchboard._breaker._topology import KIND_NAMES, Topology, store_kind
from patchboard._config import MAX_SECONDS, BreakerConfig
from patchboard._django import is_temporary_loop
from patchboard._exceptions import CircuitOpen
from patchboard._log import logger
from patchboard._shield import finish
from patchboard._state import state

Reply: TypeAlias = Sequence[int]
Execute: TypeAlias = Callable[[list[str]], Awaitable[Reply]]
"""Runs the script with the given ARGV (the keys are the store's); returns its reply."""

SCRIPT: Final = files("patchboard._breaker").joinpath("breaker.lua").read_text("utf-8")

_STATES: Final[tuple[CircuitState, CircuitState, CircuitState]] = (CLOSED, OPEN, HALF_OPEN)
_FORCED: Final[tuple[Forced, Forced, Forced]] = (None, "open", "closed")
_TOKEN_PREFIX: Final = os.urandom(4).hex()
_UNAVAILABLE: Final = "circuit_store_unavailable"
_RECOVERED: Final = "circuit_store_recovered"
_OPS: Final = {
    SUCCESS: "success",
    FAILURE: "failure",
    RELEASE: "release",
    SLOW_SUCCESS: "slow_success",
    SLOW_FAILURE: "slow_failure",
}
"""The script's operation for each result."""
_tokens = itertools.count(1)


def _new_token() -> str:
    # The pid tells forked workers apart; they share the random prefix.
    return f"{os.getpid():x}.{_TOKEN_PREFIX}.{next(_tokens)}"


def run_blocking[T](operation: Coroutine[Any, Any, T]) -> T:
    """
    Run a coroutine that never suspends (every await in it reaches blocking
    code, not an event loop) to its end, in the calling thread.

    Raises:
        RuntimeError: the coroutine suspended after all (a bug).
    """
    try:
        operation.send(None)
    except StopIteration as done:
        value: T = done.value  # StopIteration.value is Any: the coroutine's T
        return value
    operation.close()
    raise RuntimeError("a blocking Redis store operation suspended")


def mask_url(url: str) -> str:
    """
    ``url`` with its password (in the address, or a ``password`` query
    parameter) replaced by ``***``, for logs, reprs and error messages.
    Never raises, however malformed the URL.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced IPv6 bracket: nothing can be told apart
        return f"{url.partition(':')[0]}://***"
    userinfo, _, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:***@{host}" if ":" in userinfo else parts.netloc
    query = "&".join(
        "password=***" if pair.startswith("password=") else pair for pair in parts.query.split("&")
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def check_url(url: str) -> Topology:
    """
    Check a Redis store URL as redis-py will read it, without connecting;
    return what it points to (one server, a Cluster, Sentinels: see
    :mod:`._topology`).

    redis-py reads a URL only when it makes the first connection, so a bad
    one would fail every guarded call; this reads it at once, with
    redis-py's own parser and connection class, and adds what redis-py lets
    through but reads otherwise (port 0 connects to 6379, a database that
    is not a number selects database 0). A Cluster or Sentinel URL is
    checked as its first node's plain URL, after its node list.

    Raises:
        ValueError: the port is not a number or not in 1-65535, the
            database is not a number, or a query parameter is unknown or
            has an invalid value; a Sentinel URL has no service name, a
            Cluster URL a database other than 0. The message names the kind
            of store and shows the URL with its password masked.
    """
    import redis
    from redis.connection import parse_url

    topology = None
    try:
        topology = Topology.parse(url)
        options = parse_url(topology.url)  # type: ignore[no-untyped-call]  # redis leaves it untyped
        pool = redis.BlockingConnectionPool.from_url(topology.url)
        pool.connection_class(**pool.connection_kwargs)  # an unknown query parameter fails here
        problem = _misread(topology.url, options)
    except (TypeError, ValueError, redis.RedisError) as exc:
        problem = str(exc)
    if problem is not None or topology is None:
        kind = KIND_NAMES[store_kind(url)]
        raise ValueError(f"store {mask_url(url)!r} is not a valid {kind} URL: {problem}")
    return topology


KEY_PREFIX: Final = "patchboard:breaker"


def state_key(name: str, prefix: str = KEY_PREFIX) -> str:
    """
    The Redis hash of breaker ``name``'s state; its probes' and window's keys
    add ``:probes`` and ``:window``. The name in braces is the keys' cluster
    hash tag, so the three share one slot. A brace in the name would break
    the tag (a name starting with ``}`` makes it ``{}``, empty, and Redis
    hashes each whole key instead): such a name has ``%``, ``{`` and ``}``
    escaped (``%25``, ``%7B``, ``%7D``) inside ``%{...}``, a form no other
    name's key takes. Every other name keeps the key it always had.
    """
    if "{" in name or "}" in name:
        return f"{prefix}:%{{{_escape(name)}}}"
    return f"{prefix}:{{{name}}}"


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def name_of_key(key: str, prefix: str = KEY_PREFIX) -> str | None:
    """The breaker name whose :func:`state_key` ``key`` is; None for any other key."""
    head = f"{prefix}:"
    if not key.startswith(head) or not key.endswith("}"):
        return None
    tag = key[len(head) :]
    if tag.startswith("%{"):
        try:
            name = unquote(tag[2:-1], errors="strict")
        except UnicodeDecodeError:
            return None
        return name if state_key(name, prefix) == key else None
    name = tag[1:-1]
    if tag.startswith("{") and name and "{" not in name and "}" not in name:
        return name
    return None


SCAN_COUNT: Final = 1000
"""The ``COUNT`` hint of each ``SCAN`` that lists a keyed breaker's circuits."""


def listed_circuit_names(
    link: RedisLink, family: str, limit: int, prefix: str = KEY_PREFIX
) -> tuple[list[str], bool]:
    """
    The names (``family[key]``, sorted) of the keyed breaker ``family``'s
    circuits whose state in Redis is open or half-open, or forced (see
    :func:`_not_closed`), at most ``limit`` of them, and whether there
    were more. Read with ``SCAN`` (``MATCH`` on the family's keys,
    ``COUNT`` :data:`SCAN_COUNT`; on every primary of a cluster), then the
    state fields of the keys found, a pipeline per batch.
    Blocking I/O: it walks the database's key space once.

    Raises:
        redis.RedisError, OSError: Redis could not be read.
    """
    client = link.sync_client()
    head = f"{family}["
    # Each circuit's key has the plain form or, with a brace in its key, the escaped one.
    patterns = [_glob(f"{prefix}:%{{{_escape(head)}") + "*]}"]
    if "{" not in family and "}" not in family:
        patterns.append(_glob(f"{prefix}:{{{head}") + "*]}")
    found: list[str] = []
    for pattern in patterns:
        batch: list[str] = []
        for raw in client.scan_iter(match=pattern, count=SCAN_COUNT):
            try:
                key = raw.decode() if isinstance(raw, bytes) else raw
            except UnicodeDecodeError:
                continue  # not a key patchboard writes (names are written as UTF-8)
            name = name_of_key(key, prefix)
            if name is not None and name.startswith(head) and name.endswith("]"):
                batch.append(key)
            if len(batch) >= SCAN_COUNT:
                found += _not_closed(client, batch, prefix)
                batch = []
            if len(found) > limit:
                break
        found += _not_closed(client, batch, prefix)
        if len(found) > limit:
            break
    names = sorted(set(found))
    return names[:limit], len(names) > limit


def _not_closed(client: Any, keys: list[str], prefix: str) -> list[str]:
    """
    The names of the state ``keys`` whose circuit is open or half-open, or
    forced (open or closed: an operator's decision, listed until it is
    reset), in one pipeline.
    """
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, "s", "fo")
    replies = pipe.execute(raise_on_error=False)  # a key of another type: an error, skipped
    return [
        name
        for key, reply in zip(keys, replies, strict=True)
        if isinstance(reply, list)
        and (reply[0] in (b"o", b"h", "o", "h") or reply[1] not in (None, b"", ""))
        and (name := name_of_key(key, prefix)) is not None
    ]


def _glob(text: str) -> str:
    """``text`` as a ``SCAN MATCH`` pattern matching itself only."""
    return "".join(f"\\{char}" if char in "\\*?[]" else char for char in text)


def _misread(url: str, options: dict[str, Any]) -> str | None:
    """What redis-py accepts in ``url`` but does not read as written."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return None
    if parts.port == 0:
        return "the port must be in 1-65535, got 0"
    database = unquote(parts.path).strip("/")
    if database and "db" not in options:
        return f"the database (the path) must be a number, got {database!r}"
    return None


class _View(NamedTuple):
    """A script's reply, as this process keeps it."""

    state: CircuitState
    failures: int
    slow_calls: int
    opened_at_ms: int
    retry_at_ms: int
    server_ms: int
    forced: Forced
    probes: int
    fetched: float
    """``_clock.now()`` when the request was sent (so ages are never underestimated)."""

    def server_now_ms(self, now: float) -> float:
        """An upper bound on the server's clock at monotonic time ``now``: the
        script ran after the request was sent, and ``TIME`` was cut to the ms."""
        return self.server_ms + 1 + (now - self.fetched) * 1000.0


class RedisLink:
    """
    The clients of one Redis URL, shared by every breaker that uses it, and
    whether that Redis is currently considered down.

    The sync client (a thread-safe connection pool) is made on first use,
    and so is one async client per long-lived event loop, since asyncio
    connections cannot cross loops. A loop that asgiref's ``async_to_sync``
    made for one sync call (``collect()``, Django's ``send()`` reaching an
    async listener, a task worker running one) gets no client: it closes
    with that call and would leave its connection open on the server. Its
    commands go through the sync client, from a worker thread. So the
    connections to one URL stay within ``max_connections`` per client,
    however many sync dispatches run.

    A command whose connection turns out to be broken (a ``ConnectionError``:
    say a pooled connection that a restarted Redis closed) is retried once,
    at once, on a new connection; a timeout is never retried. When that
    fails too, the link is *down*: the breakers use their in-process
    fallback and leave Redis alone for ``retry_after`` seconds, then one
    call tries it again. The first command *sent* after the link went down
    that succeeds brings it back up; answers to commands sent before a
    change (in flight when Redis went away or came back) never change it,
    so an outage is one ``circuit_store_unavailable`` and one
    ``circuit_store_recovered``. Both events are logged at most once per
    ``log_interval`` per URL; the next one logged says how many were not
    (``suppressed``).
    """

    retry_after: float = 1.0
    """Seconds to leave a failed Redis alone before one call tries it again."""
    log_interval: float = 30.0
    """At most one ``circuit_store_unavailable`` and one ``circuit_store_recovered``
    event per this many seconds."""
    timeout: float = 0.25
    """``socket_timeout``, ``socket_connect_timeout`` and the wait for a free
    pooled connection, unless the URL's query string sets them
    (``?socket_timeout=0.1&socket_connect_timeout=0.1&timeout=0.1``)."""
    max_connections: int = 50
    """Connections per client (one sync client, one async client per
    long-lived event loop) unless the URL sets ``max_connections``."""

    def __init__(self, url: str) -> None:
        """
        Raises:
            ValueError: ``url`` is not a valid Redis URL (see :func:`check_url`).
        """
        self.topology = check_url(url)
        self.url = url
        self.script = SCRIPT
        if self.topology.kind == "redis_sentinel":
            # Declared a writer (Redis >= 7.0 reads the shebang's flags): a demoted
            # primary refuses it with READONLY, which makes redis-py's Sentinel
            # connection ask the Sentinels for the new primary. Without it, a
            # decision that writes nothing would go on reading the replica.
            self.script = f"#!lua\n{SCRIPT}"
        self.label = mask_url(url)
        self.down_until = 0.0
        """``_clock.now()`` until which Redis is left alone; 0 while it is up."""
        self.down_since = 0.0
        self.up_since = 0.0
        self._logged = dict.fromkeys((_UNAVAILABLE, _RECOVERED), -math.inf)
        self._suppressed = dict.fromkeys((_UNAVAILABLE, _RECOVERED), 0)
        self._lock = threading.Lock()
        self._sync: tuple[Any, Any] | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def _options(self, retry: type[Any]) -> dict[str, Any]:
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as BrokenConnection

        return {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": retry(NoBackoff(), 1, (BrokenConnection,)),
            "driver_info": None,
            # A bounded pool that makes callers wait (at most ``timeout``) for a
            # free connection, rather than failing past its size or opening
            # hundreds of connections for a burst of concurrent calls.
            "max_connections": self.max_connections,
            "timeout": self.timeout,
        }

    def run(self, keys: Sequence[str], args: list[str]) -> Reply:
        """Run the script on the sync client (blocking I/O)."""
        # redis types a script's reply as Any; breaker.lua returns a list of integers.
        reply: Reply = self._sync_pair()[1](keys=keys, args=args)
        return reply

    def sync_client(self) -> Any:
        """The sync client (``redis.Redis`` or ``RedisCluster``), made on first use."""
        return self._sync_pair()[0]

    def _sync_pair(self) -> tuple[Any, Any]:
        pair = self._sync
        if pair is None:
            # redis is an optional dependency (the [redis] extra): imported on first use.
            from redis.retry import Retry

            with self._lock:
                if self._sync is None:
                    client = self.topology.sync_client(self._options(Retry))
                    self._sync = (client, client.register_script(self.script))
                pair = self._sync
        return pair

    async def arun(self, keys: Sequence[str], args: list[str]) -> Reply:
        """
        Run the script from the running event loop: on its async client, or,
        on a loop made by ``async_to_sync`` for one call, on the sync client
        in a worker thread. The thread is waited for even if the caller is
        cancelled meanwhile (one command, within the socket timeouts), so
        what the command did (say, grant a probe slot) is never lost.
        """
        loop = asyncio.get_running_loop()
        if is_temporary_loop(loop):
            return await anyio.to_thread.run_sync(self.run, keys, args)
        pair = self._async.get(loop)
        if pair is None:
            from redis.asyncio.retry import Retry

            client = self.topology.async_client(self._options(Retry))
            pair = self._async[loop] = (client, client.register_script(self.script))
        # As in run(): the reply is typed Any.
        reply: Reply = await pair[1](keys=keys, args=args)
        return reply

    def available(self) -> bool:
        """Whether to try Redis now; after the back-off, one caller gets to try."""
        down_until = self.down_until
        if not down_until:
            return True
        now = _clock.now()
        if now < down_until:
            return False
        with self._lock:  # never overwrite a recovery another thread just made
            if self.down_until and now < self.down_until:
                return False  # another caller is trying
            if self.down_until:
                self.down_until = now + self.retry_after  # the others stay on the fallback
            return True

    def failed(self, error: BaseException, breaker: str, sent: float) -> None:
        """A command sent at ``sent`` (``_clock.now()``) failed with ``error``."""
        with self._lock:
            now = _clock.now()
            if self.down_until:
                self.down_until = now + self.retry_after
                return
            if sent < self.up_since:
                return  # sent before Redis came back: it says nothing about Redis now
            self.down_since = now
            self.down_until = now + self.retry_after
            self._log(
                _UNAVAILABLE, now, breaker=breaker, error=repr(error), retry_in_s=self.retry_after
            )

    def succeeded(self, breaker: str, sent: float) -> None:
        """A command sent at ``sent`` (``_clock.now()``) got its answer."""
        if not self.down_until:
            return
        with self._lock:
            if not self.down_until or sent < self.down_since:
                return  # sent before Redis went away: it says nothing about Redis now
            now = _clock.now()
            self.down_until = 0.0
            self.up_since = now
            self._log(_RECOVERED, now, breaker=breaker, down_s=round(now - self.down_since, 3))

    def _log(self, event: str, now: float, **context: object) -> None:
        # Called with the lock held. A Redis that comes and goes must not flood the log.
        if now - self._logged[event] < self.log_interval:
            self._suppressed[event] += 1
            return
        self._logged[event] = now
        suppressed, self._suppressed[event] = self._suppressed[event], 0
        log = logger()
        emit = log.warning if event == _UNAVAILABLE else log.info
        emit(event, store=self.label, suppressed=suppressed, **context)

    async def aclose(self) -> None:
        """Close this event loop's async client (it is made again on next use)."""
        pair = self._async.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            await pair[0].aclose()  # the client made its pool: it closes it

    def close(self) -> None:
        """Close the sync client and forget every loop's async client."""
        with self._lock:
            pair, self._sync = self._sync, None
        if pair is not None:
            pair[0].close()  # the client made its pool(s): it closes them
        self._async.clear()


def redis_link(url: str) -> RedisLink:
    """The one :class:`RedisLink` of ``url`` in this process."""
    link = state.redis_links.get(url)
    if link is None:
        with state.lock:
            link = state.redis_links.setdefault(url, RedisLink(url))
    return link


def store_errors() -> tuple[type[BaseException], ...]:
    # RedisClusterException is no RedisError: the cluster client raises it
    # when no startup node answers.
    from redis.exceptions import RedisClusterException, RedisError

    return (RedisError, RedisClusterException, OSError)


class RedisStore:
    """
    A breaker's state in Redis, shared by every process that uses the same
    URL, key prefix and name; an in-process :class:`MemoryStore` stands in
    while Redis is unreachable.

    Raises:
        ImproperlyConfigured: the redis package is missing, or ``url`` is
            not a valid Redis URL (the message names the breaker, the URL
            with its password masked, and the problem).
    """

    remote: Final = True

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        url: str,
        *,
        key_prefix: str = KEY_PREFIX,
        key_ttl: float = 3600.0,
        server_clock: Callable[[], float] | None = None,
    ) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ImproperlyConfigured(
                f"circuit breaker {name!r}: store={mask_url(url)!r} needs the redis "
                "package (pip install 'django-patchboard[redis]')"
            ) from None
        try:
            self.link = redis_link(url)
        except ValueError as exc:
            raise ImproperlyConfigured(f"circuit breaker {name!r}: {exc}") from None
        self.name = name
        self.label = self.link.label
        self.kind: StoreKind = self.link.topology.kind
        self.pending: deque[Transition] = deque()
        self.fallback = MemoryStore(name, config, pending=self.pending)
        self.admitted = Ticket(self, None)
        self._errors = store_errors()
        key = state_key(name, key_prefix)
        self._keys = (key, f"{key}:probes", f"{key}:window")
        self._count_rule = config.trip_rule == "count"
        self._sync_interval = config.sync_interval
        # For tests only: the script's clock, instead of the server's TIME.
        self._server_clock = server_clock
        max_reset = config.max_reset_timeout
        self._args: tuple[str, ...] = (
            config.trip_rule,
            str(config.failure_threshold),
            str(config.rate_ppm),
            str(config.window_size),
            str(config.minimum_calls),
            str(_ms(config.reset_timeout)),
            repr(config.backoff_factor),
            # Without a cap of the project's, the longest wait there is (as in machine.py).
            str(_ms(max_reset if max_reset is not None else MAX_SECONDS)),
            str(config.half_open_max_calls),
            str(config.success_threshold),
            str(_ms(config.lease)),
            str(_ms(key_ttl)),
            config.window_type,
            str(config.slow_ppm),
        )
        self._view: _View | None = None
        self._seeded = False
        """The fallback has been in use since the last reply: Redis has not heard of it yet."""
        self._seeded_at = 0.0
        """``_clock.now()`` when it was."""

    # -- the operations: one implementation each, for both kinds of caller ---------

    def acquire(self) -> Ticket:
        """
        Admit a call (blocking I/O): see :meth:`aacquire`.

        Raises:
            CircuitOpen: the circuit is open, or every probe slot is taken.
        """
        ticket = self._decided()
        if ticket is not None:
            return ticket
        return run_blocking(self._ask(self._run_blocking))

    async def aacquire(self) -> Ticket:
        """
        Admit a call: from the fresh view, or by asking Redis; from the
        fallback while Redis is down. An answer on its way back from Redis
        when the caller is cancelled is still waited for (as a report is:
        see :meth:`arecord`), and a probe slot it granted is given back.

        Raises:
            CircuitOpen: the circuit is open, or every probe slot is taken.
        """
        ticket = self._decided()
        if ticket is not None:
            return ticket
        return await finish(self._ask(self._run_async), undo=self._give_back)

    def record(self, ticket: Ticket, result: Result) -> None:
        """Report the result of the call ``ticket`` admitted (blocking I/O)."""
        op = self._report_op(ticket, result)
        if op is not None:
            run_blocking(self._report(ticket, result, op, self._run_blocking))

    async def arecord(self, ticket: Ticket, result: Result) -> None:
        """
        Report a result. A report that goes to Redis outlives its caller's
        cancellation, whether a cancel scope's or a task's ``cancel()``
        (Django's when a client goes away, a dispatch's at its deadline): it
        is waited for, within the socket timeout, so that its probe slot is
        freed and a transition Redis made is known, logged and signalled here.
        """
        op = self._report_op(ticket, result)
        if op is not None:
            await finish(self._report(ticket, result, op, self._run_async))

    def force(self, action: Control) -> None:
        """
        Run a control operation (or ``"read"``) on Redis and on the fallback.

        Raises:
            redis.RedisError: Redis is unreachable (the fallback has changed).
        """
        run_blocking(self._force(action, self._run_blocking))

    async def aforce(self, action: Control) -> None:
        """The async twin of :meth:`force`."""
        await self._force(action, self._run_async)

    def _decided(self) -> Ticket | None:
        """
        An admission decided without I/O: the fallback's while Redis is left
        alone, or the fresh view's; None when Redis must decide.

        Raises:
            CircuitOpen: the circuit is open, or every probe slot is taken.
        """
        if not self.link.available():
            return self._fallback().acquire()
        return self._local_decision()

    async def _ask(self, execute: Execute) -> Ticket:
        """Ask Redis to admit a call (from the fallback if it fails to answer)."""
        link = self.link
        token = _new_token()
        sent = _clock.now()
        try:
            reply = await execute(self._argv("acquire", token))
        except self._errors as exc:
            link.failed(exc, self.name, sent)
            return self._fallback().acquire()
        link.succeeded(self.name, sent)
        return self._apply(reply, token, sent) or self.admitted

    async def _give_back(self, ticket: Ticket) -> None:
        """Free the probe slot of a ticket whose caller is gone."""
        if ticket.probe is not None:
            await self.arecord(ticket, RELEASE)

    def _report_op(self, ticket: Ticket, result: Result) -> str | None:
        """
        The script operation that reports ``result`` to Redis; None when
        nothing goes to Redis (the fallback admitted the call: it is told here).
        """
        if ticket.origin is not self:
            self.fallback.record(ticket, result)
            return None
        return self._result_op(ticket, result)

    async def _report(self, ticket: Ticket, result: Result, op: str, execute: Execute) -> None:
        link = self.link
        if link.available():
            sent = _clock.now()
            try:
                reply = await execute(self._argv(op, ticket.probe or ""))
            except self._errors as exc:
                link.failed(exc, self.name, sent)
            else:
                link.succeeded(self.name, sent)
                self._apply(reply, "", sent)
                return None
        if ticket.probe is None:
            fallback = self._fallback()
            fallback.record(fallback.admitted, result)
        return None

    async def _force(self, action: Control, execute: Execute) -> None:
        sent = _clock.now()
        try:
            reply = await execute(self._argv(action, ""))
        except self._errors as exc:
            self.link.failed(exc, self.name, sent)
            if action != "read":
                self._fallback().force(action)
            raise
        self.link.succeeded(self.name, sent)
        self._apply(reply, "", sent)

    async def _run_blocking(self, argv: list[str]) -> Reply:
        # Awaited by a coroutine that run_blocking() drives: this blocks, it never suspends.
        return self.link.run(self._keys, argv)

    async def _run_async(self, argv: list[str]) -> Reply:
        return await self.link.arun(self._keys, argv)

    # -- decisions without I/O -------------------------------------------------

    def refusal(self) -> CircuitOpen | None:
        """
        The ``CircuitOpen`` :meth:`aacquire` would raise now without asking
        Redis (from a fresh view, or from the fallback while Redis is down),
        or None. None too once it is time to try Redis again: that caller
        must get to try.
        """
        down_until = self.link.down_until
        if down_until:
            return None if _clock.now() >= down_until else self._fallback().refusal()
        try:
            self._local_decision()
        except CircuitOpen as refused:
            return refused
        return None

    def _local_decision(self) -> Ticket | None:
        """Admit or reject from a fresh view; ``None`` when Redis must decide."""
        view = self._view
        if view is None or self._seeded:
            return None  # none, or older than what the fallback learned since
        now = _clock.now()
        if now - view.fetched >= self._sync_interval:
            return None
        if view.state is CLOSED:
            return self.admitted
        if view.state is OPEN and (
            view.forced == "open" or self._server_now_ms(view) < view.retry_at_ms
        ):
            raise CircuitOpen(self.name, _ms_datetime(view.retry_at_ms))
        return None

    @property
    def fast(self) -> bool:
        """
        Whether a normal call is admitted, and its success reported, without
        a word to Redis: a fresh closed view with no failure counted (count
        rule), Redis up, and nothing learned by the fallback since. What
        :meth:`_local_decision` and :meth:`_result_op` decide then, told
        without their coroutines.
        """
        view = self._view
        return (
            view is not None
            and view.state is CLOSED
            and view.failures == 0
            and self._count_rule
            and not self._seeded
            and not self.link.down_until
            and _clock.now() - view.fetched < self._sync_interval
        )

    def _result_op(self, ticket: Ticket, result: Result) -> str | None:
        """The script operation a result needs; ``None`` when nothing must be written."""
        if ticket.probe is not None:
            return _OPS[result]
        if result == RELEASE:
            return None
        view = self._view
        if view is not None:
            if view.state is not CLOSED:
                if _clock.now() - view.fetched < self._sync_interval:
                    return None  # the script ignores a normal call's result unless closed
            elif view.forced == "closed" or (
                result == SUCCESS and self._count_rule and view.failures == 0
            ):
                return None
        return _OPS[result]

    def _apply(self, reply: Reply, token: str, sent: float) -> Ticket | None:
        """Keep the reply as the view; the ticket it grants (None: a normal admission)."""
        (
            decision,
            state,
            failures,
            opened_at,
            retry_at,
            server_ms,
            old,
            forced,
            probes,
            rejected,
            slow_calls,
        ) = (int(x) for x in reply)
        view = _View(
            state=_STATES[state],
            failures=failures,
            slow_calls=slow_calls,
            opened_at_ms=opened_at,
            retry_at_ms=retry_at,
            server_ms=server_ms,
            forced=_FORCED[forced],
            probes=probes,
            fetched=sent,
        )
        self._view = view
        if sent >= self._seeded_at:
            # Sent after the fallback took over, so it carried the write-back
            # (a reply to an older command, late, does not end the fallback's say).
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
        if decision == PROBE:
            return Ticket(self, token)
        if decision == REJECT:
            raise CircuitOpen(self.name, _ms_datetime(rejected))
        assert decision == ADMIT or not token
        return None

    def _fallback(self) -> MemoryStore:
        """The in-process fallback, started from the last view of the shared state."""
        if not self._seeded:
            self._seeded = True
            self._seeded_at = _clock.now()
            view = self._view
            if view is not None:
                retry_in = None
                if view.state is not CLOSED and view.forced != "open":
                    retry_in = (view.retry_at_ms - self._server_now_ms(view)) / 1000
                self.fallback.seed(
                    state=view.state, failures=view.failures, retry_in=retry_in, forced=view.forced
                )
        return self.fallback

    def _server_now_ms(self, view: _View) -> float:
        """The server's clock now, as this process knows it: the injected
        clock in tests, else an upper bound from the view's age."""
        clock = self._server_clock
        if clock is not None:
            return round(clock() * 1000)
        return view.server_now_ms(_clock.now())

    def _argv(self, op: str, token: str) -> list[str]:
        clock = self._server_clock
        now = [str(round(clock() * 1000))] if clock is not None else []
        opened = self.fallback.opened() if self._seeded else None
        if opened is None:
            return [op, token, *self._args, *now]
        # Back from an outage in which the fallback opened: write it back (see
        # the module docstring). Until a reply comes, every command carries it.
        left, reset_timeout, failures = opened
        return [
            op,
            token,
            *self._args,
            *(now or [""]),
            str(left),
            str(reset_timeout),
            str(failures),
        ]

    # -- views -----------------------------------------------------------------

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
            slow_calls=view.slow_calls,
            opened_at=view.opened_at_ms / 1000.0 if view.opened_at_ms >= 0 else None,
            retry_at=view.retry_at_ms / 1000.0 if view.retry_at_ms >= 0 else None,
            forced=view.forced,
            probes=view.probes,
            fallback=False,
        )

    def _effective(self, view: _View) -> CircuitState:
        if (
            view.state is OPEN
            and view.forced is None
            and self._server_now_ms(view) >= view.retry_at_ms
        ):
            return HALF_OPEN
        return view.state

    @property
    def state(self) -> CircuitState:
        view = self._view
        if self.using_fallback or view is None:
            return self.fallback.state
        return self._effective(view)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _ms_datetime(ms: int) -> datetime | None:
    return to_datetime(ms / 1000.0) if ms >= 0 else None
