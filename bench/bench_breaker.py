"""
patchboard's circuit breaker against pybreaker, aiobreaker, purgatory and
circuitbreaker, in the same process and run.

Overhead (closed circuit, no failures, a guarded no-op): microseconds a call
spends in the breaker, i.e. a loop of guarded calls minus the same loop of
bare calls, for an async no-op coroutine and for a sync no-op function, in
each library's idiomatic forms. pybreaker has no asyncio form (its
``call_async`` needs Tornado).

Redis (when reachable at ``PATCHBOARD_BENCH_REDIS_URL``, default
``redis://127.0.0.1:6379/15``): round trips per guarded call, counted on the
client (every command or pipeline written to a Redis connection in this
process), with microseconds per call, for a success with no failures
recorded, a failure, and a success right after a failure; patchboard with its
default ``sync_interval`` (1 s) and with ``sync_interval=0``, pybreaker's
``CircuitRedisStorage`` and purgatory's ``AsyncRedisUnitOfWork``. The
``INFO commandstats`` column is the server's count over the same calls; it
includes any other client of that server.

Method: each case is warmed up, its loop count calibrated to ~50 ms a block,
then timed in 7 rounds with the cases interleaved; the garbage collector runs
before each block and is off inside it. Tables give the best and the median
round. Run ``python -m bench.bench_breaker`` (``--quick`` for fewer rounds) or
``python -m bench``. Not a test: nothing is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from time import perf_counter
from typing import Any, cast

REPEAT = 7
BLOCK_SECONDS = 0.05
REDIS_URL = os.environ.get("PATCHBOARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
REDIS_CALLS = 200


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a table."""

    table: str
    case: str
    library: str
    best: float
    """µs per call (overhead tables: over the bare call; Redis: whole call)."""
    median: float
    round_trips: float | None = None
    server_commands: float | None = None


def setup_django() -> None:
    try:
        from bench.bench_dispatch import setup_django as setup
    except ImportError:  # pragma: no cover - run on its own
        import django
        from django.conf import settings

        if not settings.configured:
            settings.configure(DEBUG=False, INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
            django.setup()
        return
    setup()


# -- timing -----------------------------------------------------------------------------

Loop = Callable[[int], float]
"""Runs a case ``n`` times and returns the seconds it took."""


def _block(loop: Loop, n: int) -> float:
    gc.collect()
    gc.disable()
    try:
        return loop(n)
    finally:
        gc.enable()


def _calibrate(loop: Loop, block: float) -> int:
    n = 100
    while True:
        if _block(loop, n) >= block or n >= 10_000_000:
            return n
        n *= 2


def _time_cases(cases: dict[str, Loop], rounds: int, block: float) -> dict[str, list[float]]:
    """µs per call of each case, one value per round, the cases interleaved."""
    counts = {name: _calibrate(loop, block) for name, loop in cases.items()}
    per_call: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, loop in cases.items():
            per_call[name].append(_block(loop, counts[name]) / counts[name] * 1e6)
    return per_call


def _async_loop(body: Callable[[], Awaitable[Any]]) -> Callable[[int], Awaitable[float]]:
    async def loop(n: int) -> float:
        started = perf_counter()
        for _ in range(n):
            await body()
        return perf_counter() - started

    return loop


# -- the contenders, closed state ----------------------------------------------------------


async def _noop() -> None:
    return None


def _sync_noop() -> None:
    return None


def _async_cases() -> dict[str, tuple[str, Callable[[], Awaitable[Any]]]]:
    import aiobreaker
    import circuitbreaker
    import purgatory

    from patchboard import CircuitBreaker

    tag = uuid.uuid4().hex[:8]
    pb = CircuitBreaker(f"bench-async-{tag}", store="memory")
    pb_noop = pb(_noop)

    async def pb_with() -> None:
        async with pb:
            await _noop()

    def pb_call() -> Awaitable[None]:
        return pb.call(_noop)

    aio = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=60))

    def aio_call() -> Awaitable[None]:
        return cast(Awaitable[None], aio.call_async(_noop))  # aiobreaker is untyped

    cb_noop = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)(_noop)
    purgatory_factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    purgatory_noop = purgatory_factory(f"bench-{tag}")(_noop)
    return {
        "bare await": ("-", _noop),
        "patchboard `async with`": ("patchboard", pb_with),
        "patchboard `await call()`": ("patchboard", pb_call),
        "patchboard decorator": ("patchboard", pb_noop),
        "aiobreaker `call_async()`": ("aiobreaker", aio_call),
        "circuitbreaker decorator": ("circuitbreaker", cb_noop),
        "purgatory decorator": ("purgatory", purgatory_noop),
    }


def _sync_cases() -> dict[str, tuple[str, Callable[[], Any]]]:
    import aiobreaker
    import circuitbreaker
    import purgatory
    import pybreaker

    from patchboard import CircuitBreaker

    tag = uuid.uuid4().hex[:8]
    pb = CircuitBreaker(f"bench-sync-{tag}", store="memory")
    pb_noop = pb(_sync_noop)

    def pb_with() -> None:
        with pb:
            _sync_noop()

    def pb_call() -> None:
        pb.call_sync(_sync_noop)

    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    pyb_noop = pyb(_sync_noop)

    def pyb_call() -> None:
        pyb.call(_sync_noop)

    aio = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=60))

    def aio_call() -> None:
        aio.call(_sync_noop)

    cb = circuitbreaker.CircuitBreaker(failure_threshold=5, recovery_timeout=30)
    cb_noop = cb(_sync_noop)

    def cb_with() -> None:
        with cb:
            _sync_noop()

    purgatory_factory = purgatory.SyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    purgatory_noop = purgatory_factory(f"bench-{tag}")(_sync_noop)
    return {
        "bare call": ("-", _sync_noop),
        "patchboard `with`": ("patchboard", pb_with),
        "patchboard `call_sync()`": ("patchboard", pb_call),
        "patchboard decorator": ("patchboard", pb_noop),
        "pybreaker `call()`": ("pybreaker", pyb_call),
        "pybreaker decorator": ("pybreaker", pyb_noop),
        "aiobreaker `call()`": ("aiobreaker", aio_call),
        "circuitbreaker decorator": ("circuitbreaker", cb_noop),
        "circuitbreaker `with`": ("circuitbreaker", cb_with),
        "purgatory decorator": ("purgatory", purgatory_noop),
    }


def _sync_loop(body: Callable[[], Any]) -> Loop:
    def loop(n: int) -> float:
        started = perf_counter()
        for _ in range(n):
            body()
        return perf_counter() - started

    return loop


def _overhead_rows(
    table: str,
    cases: dict[str, tuple[str, Loop]],
    rounds: int,
    block: float,
) -> list[Row]:
    timed = _time_cases({name: loop for name, (_, loop) in cases.items()}, rounds, block)
    bare_name = next(iter(cases))
    bare_best = min(timed[bare_name])
    bare_median = statistics.median(timed[bare_name])
    rows = [Row(table, bare_name, "-", bare_best, bare_median)]
    for name, (library, _) in list(cases.items())[1:]:
        rows.append(
            Row(
                table,
                name,
                library,
                min(timed[name]) - bare_best,
                statistics.median(timed[name]) - bare_median,
            )
        )
    return rows


def overhead(quick: bool = False) -> list[Row]:
    rounds = 3 if quick else REPEAT
    block = BLOCK_SECONDS / 5 if quick else BLOCK_SECONDS
    loop = asyncio.new_event_loop()
    try:
        async_cases = {
            name: (library, _run_in(loop, _async_loop(body)))
            for name, (library, body) in _async_cases().items()
        }
        rows = _overhead_rows("async", async_cases, rounds, block)
    finally:
        loop.close()
    sync_cases = {
        name: (library, _sync_loop(body)) for name, (library, body) in _sync_cases().items()
    }
    rows += _overhead_rows("sync", sync_cases, rounds, block)
    return rows


def _run_in(loop: asyncio.AbstractEventLoop, make: Callable[[int], Awaitable[float]]) -> Loop:
    def run(n: int) -> float:
        return loop.run_until_complete(make(n))

    return run


# -- Redis round trips ---------------------------------------------------------------------


class _Boom(Exception):
    pass


@contextmanager
def _counting_sends() -> Iterator[list[int]]:
    """Count every command or pipeline this process writes to Redis."""
    import redis.asyncio.connection
    import redis.connection

    sent = [0]
    async_class = redis.asyncio.connection.AbstractConnection
    sync_class = redis.connection.AbstractConnection
    async_send = async_class.send_packed_command
    sync_send = sync_class.send_packed_command

    async def counting_async(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent[0] += 1
        return await async_send(self, *args, **kwargs)

    def counting_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent[0] += 1
        return sync_send(self, *args, **kwargs)  # type: ignore[no-untyped-call]

    async_class.send_packed_command = counting_async  # type: ignore[method-assign]
    sync_class.send_packed_command = counting_sync  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        async_class.send_packed_command = async_send  # type: ignore[method-assign]
        sync_class.send_packed_command = sync_send  # type: ignore[method-assign]


def _server_commands(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


Scenario = Callable[[], Awaitable[None]]


async def _measure(
    library: str, case: str, call: Scenario, sent: list[int], server: Any, calls: int
) -> Row:
    await call()  # warm: connect, load scripts, first view
    before_server = _server_commands(server)
    before_sent = sent[0]
    durations = []
    for _ in range(calls):
        started = perf_counter()
        await call()
        durations.append((perf_counter() - started) * 1e6)
    after_sent = sent[0]
    after_server = _server_commands(server)  # INFO itself is not counted
    return Row(
        "redis",
        case,
        library,
        min(durations),
        statistics.median(durations),
        round_trips=(after_sent - before_sent) / calls,
        server_commands=(after_server - before_server) / calls,
    )


def _scenarios(
    success: Callable[[], Awaitable[None]], failure: Callable[[], Awaitable[None]]
) -> dict[str, Scenario]:
    async def fail_then_succeed() -> None:
        await failure()
        await success()

    return {
        "success, no failures recorded": success,
        "failure (stays closed)": failure,
        "failure + success (2 calls)": fail_then_succeed,
    }


async def _patchboard_scenarios(tag: str, sync_interval: float) -> dict[str, Scenario]:
    from patchboard import CircuitBreaker

    b = CircuitBreaker(
        f"bench-{tag}-{sync_interval:g}",
        failure_threshold=1_000_000,
        sync_interval=sync_interval,
        store=REDIS_URL,
    )

    async def success() -> None:
        async with b:
            pass

    async def failure() -> None:
        try:
            async with b:
                raise _Boom()
        except _Boom:
            pass

    return _scenarios(success, failure)


def _pybreaker_scenarios(tag: str, client: Any) -> dict[str, Scenario]:
    import pybreaker

    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=f"bench-{tag}"
    )
    b = pybreaker.CircuitBreaker(fail_max=1_000_000, reset_timeout=60, state_storage=storage)

    async def success() -> None:
        b.call(_sync_noop)

    def boom() -> None:
        raise _Boom()

    async def failure() -> None:
        with contextlib.suppress(_Boom):
            b.call(boom)

    return _scenarios(success, failure)


async def _purgatory_scenarios(tag: str) -> dict[str, Scenario]:
    import purgatory

    factory = purgatory.AsyncCircuitBreakerFactory(
        default_threshold=1_000_000, default_ttl=60, uow=purgatory.AsyncRedisUnitOfWork(REDIS_URL)
    )
    await factory.initialize()

    async def success() -> None:
        async with await factory.get_breaker(f"bench-{tag}"):
            pass

    async def failure() -> None:
        try:
            async with await factory.get_breaker(f"bench-{tag}"):
                raise _Boom()
        except _Boom:
            pass

    return _scenarios(success, failure)


async def _redis_rows(calls: int) -> list[Row]:
    import redis

    tag = uuid.uuid4().hex[:8]
    server = redis.Redis.from_url(REDIS_URL)
    rows = []
    try:
        with _counting_sends() as sent:
            contenders: list[tuple[str, dict[str, Scenario]]] = [
                ("patchboard", await _patchboard_scenarios(tag, 1.0)),
                ("patchboard, sync_interval=0", await _patchboard_scenarios(tag, 0.0)),
                ("pybreaker CircuitRedisStorage", _pybreaker_scenarios(tag, server)),
                ("purgatory AsyncRedisUnitOfWork", await _purgatory_scenarios(tag)),
            ]
            for case in contenders[0][1]:
                for library, scenarios in contenders:
                    rows.append(await _measure(library, case, scenarios[case], sent, server, calls))
    finally:
        keys = [
            *server.scan_iter(match=f"patchboard:breaker:{{bench-{tag}*"),
            *server.scan_iter(match=f"pybreaker:bench-{tag}:*"),
            *server.scan_iter(match=f"cbr::bench-{tag}*"),
        ]
        if keys:
            server.delete(*keys)
        server.close()
    return rows


def redis_round_trips(quick: bool = False) -> list[Row]:
    import redis

    from patchboard.testing import reset as reset_breakers

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        print(f"_Redis at {REDIS_URL} is not reachable ({exc}): round trips skipped._")
        return []
    try:
        return asyncio.run(_redis_rows(REDIS_CALLS // 4 if quick else REDIS_CALLS))
    finally:
        reset_breakers()


# -- report ------------------------------------------------------------------------------


def _markdown(rows: list[Row]) -> str:
    out: list[str] = []
    for table, title in (
        ("async", "Closed-state overhead, async no-op coroutine (µs per call over `await noop()`)"),
        ("sync", "Closed-state overhead, sync no-op function (µs per call over `noop()`)"),
    ):
        section = [r for r in rows if r.table == table]
        if not section:
            continue
        patchboard = [r.median for r in section if r.library == "patchboard"]
        fastest_peer = min(
            (r.median for r in section if r.library not in ("patchboard", "-")), default=None
        )
        out += [f"### {title}", ""]
        out += [
            "| case | best µs | median µs | x fastest peer (medians) |",
            "|---|---:|---:|---:|",
        ]
        for r in section:
            if r.library == "-":
                out.append(f"| {r.case} (the baseline, total) | {r.best:.3f} | {r.median:.3f} | |")
                continue
            ratio = f"{r.median / fastest_peer:.2f}" if fastest_peer else ""
            out.append(f"| {r.case} | {r.best:.3f} | {r.median:.3f} | {ratio} |")
        if patchboard and fastest_peer:
            out += [
                "",
                f"patchboard's fastest form: {min(patchboard):.3f} µs; the fastest peer: "
                f"{fastest_peer:.3f} µs (medians).",
            ]
        out.append("")
    redis_rows = [r for r in rows if r.table == "redis"]
    if not redis_rows:
        out.append(f"_Redis round trips: skipped, no Redis server at {REDIS_URL}._")
    if redis_rows:
        out += [
            "### Redis round trips per guarded call (closed state)",
            "",
            "| case | library | round trips / call "
            "| server commands / call (Lua-internal included) | best µs | median µs |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in redis_rows:
            out.append(
                f"| {r.case} | {r.library} | {r.round_trips:.2f} | {r.server_commands:.2f} "
                f"| {r.best:.0f} | {r.median:.0f} |"
            )
        out.append("")
    return "\n".join(out)


def main(*, quick: bool = False) -> str:
    """Run every case; print and return the markdown."""
    setup_django()
    rows = overhead(quick) + redis_round_trips(quick)
    text = "## Circuit breaker\n\n" + _markdown(rows)
    print(text)
    return text


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
