"""
The Redis store: state shared across processes, atomic probes, round trips, outages.

Internals on purpose: ``RedisLink``'s back-off intervals are shortened
(monkeypatched) so an outage test need not wait them out, and the links in
``state`` are closed on the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection
from django.core.management import call_command
from django.test import override_settings

from patchboard import (
    CircuitBreaker,
    CircuitOpen,
    Signal,
    _deadline,
    circuit_state_changed,
    get_breaker,
)
from patchboard._breaker._redis import RedisLink, run_blocking
from patchboard._state import state
from patchboard.management.commands.patchboard import PER_PROCESS_NOTE
from patchboard.testing import VirtualClock, reset

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


class Boom(Exception):
    pass


@pytest.fixture
def name(breaker_name: str) -> str:
    return breaker_name


@pytest.fixture(autouse=True)
async def _close_async_clients() -> AsyncIterator[None]:
    """Close the Redis links' async clients on the test's own loop (reset() closes the rest)."""
    yield
    for link in list(state.redis_links.values()):
        await link.aclose()


def key(name: str) -> str:
    return f"patchboard:breaker:{{{name}}}"


async def server_ms(client: redis.asyncio.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def wait_for_server_time(client: redis.asyncio.Redis, when_ms: float) -> None:
    """Wait until the Redis server's clock (the breakers' clock) reaches ``when_ms``."""
    deadline = time.monotonic() + 10
    while await server_ms(client) < when_ms:
        assert time.monotonic() < deadline, "the Redis server clock did not advance"
        await asyncio.sleep(0.005)


async def fail(b: CircuitBreaker) -> None:
    with pytest.raises(Boom):
        async with b:
            raise Boom()


async def elsewhere[T](coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` as another caller would: a task with a context of its own."""
    return await asyncio.create_task(coro, context=contextvars.Context())


async def until_a_command_is_held(control: redis.asyncio.Redis) -> None:
    """Until the server holds a client's command back (``CLIENT PAUSE``)."""
    deadline = time.monotonic() + 10
    while (await control.info("clients"))["blocked_clients"] == 0:
        assert time.monotonic() < deadline, "no command reached the paused server"
        await asyncio.sleep(0.001)


async def refused_entry(b: CircuitBreaker) -> CircuitOpen:
    with pytest.raises(CircuitOpen) as caught:
        async with b:
            pass
    return caught.value


async def test_keys_are_namespaced_and_expire(redis_url, name) -> None:
    b = CircuitBreaker(name, failure_threshold=3, store=redis_url)
    client = redis.asyncio.Redis.from_url(redis_url)
    await fail(b)
    assert await client.hget(key(name), "f") == b"1"
    assert 0 < await client.pttl(key(name)) <= 3600 * 1000
    async with b:
        pass
    # Closed with nothing recorded: nothing is kept.
    assert await client.exists(key(name)) == 0
    await client.aclose()


CHILD_TRIP = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()
from patchboard import CircuitBreaker
url, name = sys.argv[1:3]
b = CircuitBreaker(name, failure_threshold=3, reset_timeout=60, store=url)
for _ in range(3):
    try:
        with b:
            raise ValueError("carrier down")
    except ValueError:
        pass
print(b.state)
"""


async def run_child(*args: str) -> str:
    """Run ``python -c`` in a separate process; its last line of output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    return out.decode().splitlines()[-1]


async def test_state_is_shared_between_processes(redis_url, name) -> None:
    assert await run_child(CHILD_TRIP, redis_url, name) == "open"
    b = CircuitBreaker(name, failure_threshold=3, reset_timeout=60, store=redis_url)
    calls = 0
    with pytest.raises(CircuitOpen) as caught:
        async with b:
            calls += 1
    assert calls == 0
    assert caught.value.breaker == name
    assert caught.value.retry_at is not None
    assert b.state == "open"
    assert b.statistics().failures == 3
    # And back: a reset here is seen by a fresh process.
    await b.areset()
    no_failures = CHILD_TRIP.replace("for _ in range(3)", "for _ in range(0)")
    assert await run_child(no_failures, redis_url, name) == "closed"


CHILD_PROBE = """
import asyncio, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()
import redis.asyncio
from patchboard import CircuitBreaker, CircuitOpen

url, name, ident, callers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def main():
    control = redis.asyncio.Redis.from_url(url, socket_timeout=None)  # BLPOP waits up to 120 s
    b = CircuitBreaker(name, failure_threshold=1, reset_timeout=0.001, probe_timeout=120,
                       store=url)
    release = asyncio.Event()
    decided = asyncio.Event()
    counts = {"admitted": 0, "rejected": 0}

    async def caller():
        try:
            async with b:
                counts["admitted"] += 1
                if sum(counts.values()) == callers:
                    decided.set()
                await release.wait()
        except CircuitOpen:
            counts["rejected"] += 1
            if sum(counts.values()) == callers:
                decided.set()

    await control.rpush(f"{name}:ready", ident)
    await control.blpop([f"{name}:go:{ident}"], timeout=120)
    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await decided.wait()
    await control.rpush(f"{name}:report", f"{counts['admitted']} {counts['rejected']}")
    await control.blpop([f"{name}:release:{ident}"], timeout=120)
    release.set()
    await asyncio.gather(*tasks)
    await b.aclose()
    await control.aclose()

asyncio.run(main())
"""


async def test_exactly_one_probe_across_4_processes_x_50_callers(redis_url, name) -> None:
    # BLPOP waits up to 120 s for the children: redis-py's default 5 s socket
    # timeout would end it while four interpreters start on a loaded machine.
    control = redis.asyncio.Redis.from_url(redis_url, socket_timeout=None)
    b = CircuitBreaker(
        name, failure_threshold=1, reset_timeout=0.001, probe_timeout=120, store=redis_url
    )
    await fail(b)
    retry_at = b.retry_at
    assert retry_at is not None
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD_PROBE,
            redis_url,
            name,
            str(i),
            "50",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(4)
    ]
    try:
        for _ in children:
            assert await control.blpop([f"{name}:ready"], timeout=120) is not None
        await wait_for_server_time(control, retry_at.timestamp() * 1000)
        for i in range(4):
            await control.rpush(f"{name}:go:{i}", "go")
        reports = []
        for _ in children:
            popped = await control.blpop([f"{name}:report"], timeout=120)
            assert popped is not None
            admitted, rejected = map(int, popped[1].split())
            reports.append((admitted, rejected))
        assert sum(a for a, _ in reports) == 1
        assert sum(r for _, r in reports) == 199
        assert await b.get_state() == "half_open"
        for i in range(4):
            await control.rpush(f"{name}:release:{i}", "go")
        for child in children:
            _, err = await asyncio.wait_for(child.communicate(), timeout=120)
            assert child.returncode == 0, err.decode()
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    # The probe succeeded: the circuit is closed for everyone.
    assert await b.get_state() == "closed"
    await control.aclose()


@pytest.mark.parametrize("max_calls", [1, 2])
async def test_exactly_max_calls_probes_among_200_callers_in_one_process(
    redis_url, name, max_calls
) -> None:
    control = redis.asyncio.Redis.from_url(redis_url)
    b = CircuitBreaker(
        name,
        failure_threshold=1,
        reset_timeout=0.001,
        probe_timeout=120,
        half_open_max_calls=max_calls,
        store=redis_url,
    )
    await fail(b)
    assert b.retry_at is not None
    await wait_for_server_time(control, b.retry_at.timestamp() * 1000)
    release = asyncio.Event()
    decided = asyncio.Event()
    counts = {"admitted": 0, "rejected": 0}

    def decide(outcome: str) -> None:
        counts[outcome] += 1
        if sum(counts.values()) == 200:
            decided.set()

    async def caller() -> None:
        try:
            async with b:
                decide("admitted")
                await release.wait()
        except CircuitOpen:
            decide("rejected")

    async with asyncio.TaskGroup() as tg:
        for _ in range(200):
            tg.create_task(caller())
        await decided.wait()
        assert counts == {"admitted": max_calls, "rejected": 200 - max_calls}
        assert await control.zcard(f"{key(name)}:probes") == max_calls
        release.set()
    assert await b.get_state() == "closed"
    await control.aclose()


async def test_a_cancelled_probe_frees_its_redis_slot(redis_url, name) -> None:
    control = redis.asyncio.Redis.from_url(redis_url)
    b = CircuitBreaker(
        name, failure_threshold=1, reset_timeout=0.001, probe_timeout=120, store=redis_url
    )
    await fail(b)
    assert b.retry_at is not None
    await wait_for_server_time(control, b.retry_at.timestamp() * 1000)
    entered = asyncio.Event()

    async def probe() -> None:
        async with b:
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(probe())
    await entered.wait()
    with pytest.raises(CircuitOpen):
        async with b:
            pass
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await control.zcard(f"{key(name)}:probes") == 0
    # Cancelled by an enclosing anyio scope (level-triggered: every await in
    # it is cancelled), the probe still reports.
    with anyio.move_on_after(0.05) as scope:
        async with b:
            assert await control.zcard(f"{key(name)}:probes") == 1
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert await control.zcard(f"{key(name)}:probes") == 0
    async with b:  # the next caller is the probe, at once
        pass
    assert await b.get_state() == "closed"
    await control.aclose()


@pytest.fixture
def transitions() -> Iterator[list[str]]:
    """The ``new_state`` of every ``circuit_state_changed`` sent during the test."""
    changes: list[str] = []

    def changed(sender: object, *, new_state: str, **kwargs: Any) -> None:
        changes.append(new_state)

    circuit_state_changed.connect(changed, weak=False)
    yield changes
    circuit_state_changed.disconnect(changed)


@pytest.fixture
async def held(private_redis) -> AsyncIterator[tuple[CircuitBreaker, redis.asyncio.Redis]]:
    """
    A breaker on a private Redis (whose ``CLIENT PAUSE`` holds every client),
    opened and due for its probe, with a socket timeout that waits out a pause;
    and a client to control that Redis.
    """
    control = redis.asyncio.Redis.from_url(private_redis.url)
    store = f"{private_redis.url}?socket_timeout=10"
    b = CircuitBreaker(
        "held", failure_threshold=1, reset_timeout=0.001, probe_timeout=120, store=store
    )
    await fail(b)
    assert b.retry_at is not None
    await wait_for_server_time(control, b.retry_at.timestamp() * 1000)
    yield b, control
    await control.aclose()


@pytest.mark.parametrize("cut", ["task.cancel()", "asyncio.timeout"])
async def test_a_probe_cut_while_redis_holds_its_report_still_reports(
    held, transitions, logs, cut
) -> None:
    """
    Regression (seen in a stress run: a circuit Redis had closed, with no
    ``circuit_closed`` logged): a native cancellation (Django's when a client
    goes away, a dispatch's at its deadline, ``asyncio.timeout``) went
    through the anyio shield of the report, so a success that closed the
    circuit in Redis was never applied here, logged nor signalled.
    """
    b, control = held
    timer = asyncio.timeout(None)

    async def probe() -> None:
        async with timer, b:
            # Every write waits at the server until the pause ends: the report too.
            await control.client_pause(300, all=False)

    task = asyncio.create_task(probe())
    await until_a_command_is_held(control)  # the report, on the wire
    if cut == "task.cancel()":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        timer.reschedule(asyncio.get_running_loop().time())
        with pytest.raises(TimeoutError):  # the cut still reaches the caller, as itself
            await task
    assert transitions == ["half_open", "closed"]
    closed = [e for e in logs.entries if e["event"] == "circuit_closed"]
    assert [e["breaker"] for e in closed] == [b.name]
    assert b.state == "closed"
    assert await control.zcard(f"{key(b.name)}:probes") == 0


async def test_a_caller_cut_while_redis_holds_its_admission_gives_the_probe_slot_back(
    held, transitions, logs
) -> None:
    """
    The admission's twin of the test above: the probe slot Redis granted a
    caller cancelled meanwhile is given back at once (not held until its
    lease ends), and the transition to half-open is logged and signalled.
    """
    b, control = held
    ran = False

    async def probe() -> None:
        nonlocal ran
        async with b:
            ran = True

    await control.client_pause(300, all=False)  # the admission's script writes: held
    task = asyncio.create_task(probe())
    await until_a_command_is_held(control)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ran
    assert transitions == ["half_open"]
    half_opened = [e for e in logs.entries if e["event"] == "circuit_half_opened"]
    assert [e["breaker"] for e in half_opened] == [b.name]
    assert await control.zcard(f"{key(b.name)}:probes") == 0  # given back
    await probe()  # so the next caller is the probe, at once
    assert ran
    assert transitions == ["half_open", "closed"]


async def test_a_silent_probe_loses_its_slot_when_the_lease_ends(redis_url, name) -> None:
    control = redis.asyncio.Redis.from_url(redis_url)
    b = CircuitBreaker(
        name,
        failure_threshold=1,
        reset_timeout=0.001,
        backoff_factor=60_000.0,  # a failed probe reopens for 60 s
        probe_timeout=0.05,
        store=redis_url,
    )
    await fail(b)
    assert b.retry_at is not None
    await wait_for_server_time(control, b.retry_at.timestamp() * 1000)
    async with b:  # the probe ...
        refused = await elsewhere(refused_entry(b))  # another caller: no slot
        lease_end = refused.retry_at
        assert lease_end is not None
        await wait_for_server_time(control, lease_end.timestamp() * 1000)
        await elsewhere(fail(b))  # ... outlived its lease: another caller probes, and fails
        assert await b.get_state() == "open"
    # The first probe's late success is ignored.
    assert await b.get_state() == "open"
    await control.aclose()


async def test_a_failed_probe_reopens_with_backoff(redis_url, name) -> None:
    control = redis.asyncio.Redis.from_url(redis_url)
    b = CircuitBreaker(
        name,
        failure_threshold=1,
        reset_timeout=0.01,
        backoff_factor=3.0,
        probe_timeout=60,
        store=redis_url,
    )
    await fail(b)
    assert b.retry_at is not None
    await wait_for_server_time(control, b.retry_at.timestamp() * 1000)
    await fail(b)  # the probe
    stats = b.statistics()
    assert stats.state == "open"
    assert stats.retry_at is not None and stats.opened_at is not None
    assert (stats.retry_at - stats.opened_at).total_seconds() == pytest.approx(0.03)
    await control.aclose()


async def test_a_late_caller_is_judged_on_redis_answer_not_on_a_stale_view(redis_url, name) -> None:
    """
    Regression: a caller the deadline left short was refused on this
    process's view of the circuit, which only an admission refreshes: once
    every caller was short, a circuit reset elsewhere stayed open here.
    """
    control = redis.asyncio.Redis.from_url(redis_url)
    b = CircuitBreaker(
        name, failure_threshold=1, reset_timeout=60, sync_interval=0.05, store=redis_url
    )
    await fail(b)
    assert b.state == "open"
    await control.delete(key(name))  # reset elsewhere: another process, the command
    signal = Signal(name=f"tests.redis.late.{name}")

    async def quote(sender: Any, **kwargs: Any) -> str:
        return "quote"

    signal.connect(quote, weak=False, breaker=b, timeout=5, on_error="log")
    # Moved by hand (Redis answers on real time): the view is 0.6 s old, the budget 60 % spent.
    with VirtualClock(autojump=False) as clock, _deadline.budget(1.0):
        clock.advance(0.6)  # most of the budget spent: this call starts late
        late = await signal.collect_async(sender=None)
    assert late[0].status == "ok" and b.state == "closed"
    await control.aclose()


def test_sync_guard_shares_the_redis_state_from_threads(redis_url, name) -> None:
    b = CircuitBreaker(name, failure_threshold=20, reset_timeout=60, store=redis_url)
    start = threading.Barrier(4)
    rejected: list[int] = []

    def worker() -> None:
        start.wait()
        for _ in range(10):
            try:
                with b:
                    raise Boom()
            except Boom:
                pass
            except CircuitOpen:
                rejected.append(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert b.get_state_sync() == "open"
    assert b.statistics().failures_total + len(rejected) == 40
    assert b.statistics().failures_total >= 20
    # Another instance in "another process" (a fresh breaker object) sees it.
    reset()
    other = CircuitBreaker(name, failure_threshold=20, reset_timeout=60, store=redis_url)
    with pytest.raises(CircuitOpen), other:
        pass


# -- the management command ----------------------------------------------------------

CHILD_CALL = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()
from patchboard import CircuitOpen
from patchboard import CircuitBreaker
url, name = sys.argv[1:3]
b = CircuitBreaker(name, failure_threshold=1, store=url)
try:
    with b:
        print("admitted")
except CircuitOpen:
    print("rejected", b.statistics().forced)
"""


def test_the_command_opens_a_redis_breaker_for_every_process(redis_url, name) -> None:
    declared = {"BREAKERS": {name: {"store": redis_url, "failure_threshold": 1}}}
    out, err = StringIO(), StringIO()
    with override_settings(PATCHBOARD=declared):
        call_command("patchboard", "breakers", "--open", name, stdout=out, stderr=err)
        done, header, row, note = out.getvalue().splitlines()
        assert done == f"Forced circuit {name!r} open."
        assert err.getvalue() == ""  # no "this process only" warning: the state is shared
        starred = [title for title in header.split() if title.endswith("*")]
        assert starred == ["rejected*", "successes*", "failures_total*"]
        assert row.split() == [name, "open", "(forced)", "0", "-", "0", "0", "0", redis_url]
        assert note == PER_PROCESS_NOTE

        # Another process sees it open ...
        child = subprocess.run(
            [sys.executable, "-c", CHILD_CALL, redis_url, name],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr
        assert child.stdout.splitlines()[-1] == "rejected open"
        # ... and so does a fresh instance here, whose own counters start from zero.
        reset()
        with pytest.raises(CircuitOpen), get_breaker(name):
            pass
        stats = get_breaker(name).statistics()
        assert (stats.state, stats.forced, stats.rejected, stats.fallback) == (
            "open",
            "open",
            1,
            False,
        )
        call_command("patchboard", "breakers", "--reset", name, stdout=StringIO())
        reset()
        with get_breaker(name):
            pass


# -- round trips ---------------------------------------------------------------------


@pytest.fixture
def round_trips(monkeypatch) -> list[int]:
    """Counts every command (or pipeline) sent to Redis, sync or async."""
    sent = [0]
    async_send = redis.asyncio.connection.AbstractConnection.send_packed_command
    sync_send = redis.connection.AbstractConnection.send_packed_command

    async def counting_async(self, *args, **kwargs):
        sent[0] += 1
        return await async_send(self, *args, **kwargs)

    def counting_sync(self, *args, **kwargs):
        sent[0] += 1
        return sync_send(self, *args, **kwargs)

    monkeypatch.setattr(
        redis.asyncio.connection.AbstractConnection, "send_packed_command", counting_async
    )
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_sync)
    return sent


async def test_at_most_one_round_trip_per_guarded_call(redis_url, name, round_trips) -> None:
    b = CircuitBreaker(
        name, failure_threshold=3, reset_timeout=60, sync_interval=60, store=redis_url
    )
    await b.get_state()  # connect, load the script, take a first view

    async def trips(body) -> int:
        before = round_trips[0]
        try:
            async with b:
                body()
        except (Boom, CircuitOpen):
            pass
        return round_trips[0] - before

    def ok() -> None:
        pass

    def boom() -> None:
        raise Boom()

    assert [await trips(ok) for _ in range(20)] == [0] * 20  # closed, no failures: no writes
    assert await trips(boom) == 1
    assert await trips(boom) == 1
    assert await trips(ok) == 1  # resets the shared count
    assert await trips(ok) == 0
    assert [await trips(boom) for _ in range(3)] == [1, 1, 1]  # the third opens it
    assert b.state == "open"
    assert [await trips(ok) for _ in range(20)] == [0] * 20  # rejected from the view
    assert b.statistics().rejected == 20

    sync = CircuitBreaker(f"{name}-sync", failure_threshold=3, sync_interval=60, store=redis_url)
    sync.get_state_sync()
    before = round_trips[0]
    for _ in range(10):
        with sync:
            pass
    with pytest.raises(Boom), sync:
        raise Boom()
    assert round_trips[0] - before == 1


async def trip_elsewhere(client: redis.asyncio.Redis, name: str) -> None:
    """Open the shared circuit as another process would, behind this one's back."""
    now = await server_ms(client)
    await client.hset(key(name), mapping={"s": "o", "f": 3, "oa": now, "ra": now + 60_000})


async def test_a_view_is_trusted_for_sync_interval_or_until_the_next_failure(
    redis_url, name
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    lazy = CircuitBreaker(name, failure_threshold=3, sync_interval=60, store=redis_url)
    strict = CircuitBreaker(f"{name}-strict", failure_threshold=3, sync_interval=0, store=redis_url)
    for b in (lazy, strict):
        async with b:
            pass
        await trip_elsewhere(client, b.name)
    with pytest.raises(CircuitOpen):  # sync_interval=0: every call asks Redis
        async with strict:
            pass
    async with lazy:  # its closed view is fresh: admitted without asking
        pass
    await fail(lazy)  # the failure's write returns the shared state ...
    with pytest.raises(CircuitOpen):  # ... so the next call is refused
        async with lazy:
            pass
    await client.delete(key(strict.name))
    await client.aclose()


async def test_a_call_is_refused_before_the_queue_only_on_what_needs_no_round_trip(
    redis_url, name, round_trips, full_queue
) -> None:
    """
    The short-term queue asks a call's breaker before the call takes a place
    in line (here the line is full): a fresh open view answers without Redis
    ("circuit_open", counted as rejected); a view too old to trust answers
    nothing (Redis would decide once the call runs): the call needs a place.
    """
    client = redis.asyncio.Redis.from_url(redis_url)
    lazy = CircuitBreaker(
        name, failure_threshold=1, reset_timeout=60, sync_interval=60, store=redis_url
    )
    strict = CircuitBreaker(f"{name}-strict", failure_threshold=3, sync_interval=0, store=redis_url)
    await fail(lazy)
    async with strict:
        pass
    await trip_elsewhere(client, strict.name)

    async def queued(b: CircuitBreaker) -> Any:
        signal = Signal()
        signal.connect(Boom, weak=False, breaker=b, on_error="log")
        [outcome] = await signal.collect_async(sender=None, queue=True)
        return outcome

    before = round_trips[0]
    refused = await queued(lazy)
    assert refused.status == "circuit_open"
    assert isinstance(refused.error, CircuitOpen)
    assert refused.error.breaker == name
    assert (await queued(strict)).status == "rejected"
    assert round_trips[0] == before
    assert (lazy.statistics().rejected, strict.statistics().rejected) == (1, 0)
    await client.delete(key(strict.name))
    await client.aclose()


# -- Redis unreachable -----------------------------------------------------------------


@pytest.mark.parametrize("guard", ["async", "sync"])
async def test_unreachable_redis_falls_back_to_process_state(logs, guard) -> None:
    b = CircuitBreaker("down", failure_threshold=5, reset_timeout=60, store="redis://127.0.0.1:1/0")
    durations = []
    for i in range(200):
        started = time.perf_counter()
        try:
            if guard == "async":
                async with b:
                    if i < 5:
                        raise Boom()
            else:
                with b:
                    if i < 5:
                        raise Boom()
        except (Boom, CircuitOpen):
            pass
        durations.append(time.perf_counter() - started)
    assert max(durations) < 0.5
    stats = b.statistics()
    # The in-process fallback counted the failures and opened.
    assert (stats.state, stats.fallback, stats.failures_total, stats.rejected) == (
        "open",
        True,
        5,
        195,
    )
    unavailable = [e for e in logs.entries if e["event"] == "circuit_store_unavailable"]
    assert len(unavailable) == 1
    assert unavailable[0]["store"] == "redis://127.0.0.1:1/0"
    assert unavailable[0]["breaker"] == "down"
    assert "fallback" in repr(b)


async def test_a_redis_that_never_answers_costs_one_timeout_per_back_off(logs) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts connections (in the kernel), never answers
    port = silent.getsockname()[1]
    try:
        b = CircuitBreaker("silent", store=f"redis://127.0.0.1:{port}/0")
        durations = []
        for _ in range(100):
            started = time.perf_counter()
            async with b:
                pass
            durations.append(time.perf_counter() - started)
    finally:
        silent.close()
    assert max(durations) < 0.9  # one socket timeout (0.25 s), with room for a slow machine
    assert sum(d > 0.1 for d in durations) <= 2  # then the fallback, without touching Redis
    assert b.statistics().successes == 100
    assert [e["event"] for e in logs.entries].count("circuit_store_unavailable") == 1


class Proxy:
    """A TCP proxy to the real Redis that the test can take down and bring back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def store_events(logs) -> list[tuple[str, int]]:
    """The store's events logged so far, with how many of each were not logged before."""
    return [
        (e["event"], e["suppressed"])
        for e in logs.entries
        if e["event"].startswith("circuit_store")
    ]


async def test_the_store_recovers_by_itself(redis_url, name, logs, monkeypatch) -> None:
    monkeypatch.setattr(RedisLink, "retry_after", 0.0)  # retry Redis on the next call
    target = redis.asyncio.Redis.from_url(redis_url)
    port = target.connection_pool.connection_kwargs["port"]
    db = target.connection_pool.connection_kwargs["db"]
    proxy = Proxy(port)
    await proxy.up()
    url = f"redis://127.0.0.1:{proxy.port}/{db}"
    b = CircuitBreaker(name, failure_threshold=3, reset_timeout=60, sync_interval=0, store=url)
    await fail(b)
    assert await target.hget(key(name), "f") == b"1"

    await proxy.down()
    await fail(b)  # the fallback starts from the last view (1 failure) and counts this one
    stats = b.statistics()
    assert (stats.fallback, stats.state, stats.failures) == (True, "closed", 2)

    await proxy.up()
    await fail(b)  # Redis again: the fallback's failure is not replayed
    assert b.statistics().fallback is False
    assert await target.hget(key(name), "f") == b"2"
    await fail(b)
    assert await target.hget(key(name), "s") == b"o"

    await proxy.down()
    with pytest.raises(CircuitOpen):  # the fallback starts open, as the circuit was
        async with b:
            pass
    assert b.statistics().fallback is True
    await proxy.up()
    with pytest.raises(CircuitOpen):
        async with b:
            pass
    assert b.statistics().fallback is False
    # The second outage is within log_interval of the first: neither of its
    # events is logged ...
    assert store_events(logs) == [
        ("circuit_store_unavailable", 0),
        ("circuit_store_recovered", 0),
    ]
    monkeypatch.setattr(RedisLink, "log_interval", 0.0)
    await proxy.down()
    with pytest.raises(CircuitOpen):
        async with b:
            pass
    await proxy.up()
    with pytest.raises(CircuitOpen):
        async with b:
            pass
    # ... and the next ones logged say so.
    assert store_events(logs)[2:] == [
        ("circuit_store_unavailable", 1),
        ("circuit_store_recovered", 1),
    ]
    await b.aclose()
    await proxy.down()
    await target.aclose()


def test_a_blocking_operation_that_suspends_is_reported_as_the_bug_it_is() -> None:
    async def suspends() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match=r"^a blocking Redis store operation suspended$"):
        run_blocking(suspends())


def test_the_sync_forms_go_without_redis_while_the_view_is_fresh_and_closed(
    redis_url, name, round_trips
) -> None:
    """A fresh closed view with no failure counted: the store is ``fast``, and every sync
    form takes the fast path (no round trip, each success counted once); a stale view,
    a failure, or a circuit opened elsewhere send the next call to Redis."""
    with VirtualClock(autojump=False) as clock:
        b = CircuitBreaker(name, failure_threshold=3, sync_interval=5, store=redis_url)
        guarded = b(lambda: "ok")
        b.get_state_sync()
        assert b._store.fast
        before = round_trips[0]
        for _ in range(5):
            with b:
                assert guarded() == b.call_sync(lambda: "ok") == "ok"
            assert guarded() == b.call_sync(lambda: "ok") == "ok"
        assert round_trips[0] - before == 0
        assert b.statistics().successes == 15

        clock.advance(5)  # the view is stale: the next call asks Redis
        assert not b._store.fast
        before = round_trips[0]
        assert guarded() == "ok"
        assert (round_trips[0] - before, b._store.fast) == (1, True)

        with pytest.raises(Boom), b:  # admitted on the fast path; its failure is written
            raise Boom()
        assert (b.statistics().failures, b._store.fast) == (1, False)
        assert b.statistics().failures_total == 1
