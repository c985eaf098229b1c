"""
Keyed circuits and slow calls, through ``CircuitBreaker`` and listeners, on
virtual time. (The window rules themselves are pinned on both stores in
``test_stores.py``.)
"""

from __future__ import annotations

import asyncio
from io import StringIO

import pytest
import redis
import structlog
from django.core.management import call_command
from django.test import override_settings

from patchboard import BreakerConfig, CircuitBreaker, CircuitOpen, Signal, get_breaker
from patchboard._breaker import _circuit, _redis
from patchboard._breaker._redis import RedisStore
from patchboard.testing import VirtualClock


class Boom(Exception):
    pass


async def slow_ok(seconds: float) -> str:
    await asyncio.sleep(seconds)  # virtual time: the clock jumps
    return "ok"


# -- slow calls ------------------------------------------------------------------------


async def test_calls_slower_than_the_threshold_open_the_circuit(clock: VirtualClock) -> None:
    b = CircuitBreaker(
        "slow-carrier",
        store="memory",
        trip_rule="rate",
        window_size=4,
        minimum_calls=4,
        slow_call_duration=2.0,
        slow_call_rate=0.5,
    )
    assert await b.call(slow_ok, 1.999) == "ok"
    assert await b.call(slow_ok, 0.1) == "ok"
    assert await b.call(slow_ok, 2.0) == "ok"  # at the threshold: slow
    assert b.statistics().slow_calls == 1
    assert b.state == "closed"
    assert await b.call(slow_ok, 5.0) == "ok"  # 2 slow of 4
    assert b.state == "open"
    stats = b.statistics()
    assert (stats.slow_calls, stats.failures, stats.successes) == (2, 0, 4)
    with pytest.raises(CircuitOpen):
        await b.call(slow_ok, 0)


def test_a_sync_slow_call_counts_as_slow(clock: VirtualClock) -> None:
    b = CircuitBreaker(
        "slow-sync",
        store="memory",
        trip_rule="rate",
        window_size=1,
        minimum_calls=1,
        slow_call_duration=1.0,
    )

    def work() -> str:
        clock.advance(1.5)  # stands for a sync call that took 1.5 s
        return "ok"

    assert b.call_sync(work) == "ok"
    assert b.state == "open"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"slow_call_duration": 1.0}, "slow_call_duration applies to trip_rule='rate'"),
        ({"window_type": "time"}, "window_type applies to trip_rule='rate'"),
        ({"trip_rule": "rate", "slow_call_duration": 0}, "slow_call_duration must be"),
        ({"trip_rule": "rate", "slow_call_rate": 0}, "slow_call_rate must be a fraction"),
        (
            {"trip_rule": "rate", "window_type": "hours"},
            "window_type must be 'count' or 'time', got 'hours'",
        ),
        ({"trip_rule": "rate", "window_type": "time", "window_size": 3601}, "window_size"),
        ({"key": "no.such.module.key"}, "key: cannot import 'no.such.module.key'"),
        ({"key": 3}, "key must be a function of (sender, **kwargs)"),
        ({"max_keys": 0}, "max_keys must be >= 1"),
    ],
)
def test_bad_options_name_the_option(options, message) -> None:
    with pytest.raises((TypeError, ValueError)) as raised:
        BreakerConfig(**options)
    assert message in str(raised.value)


def test_a_time_window_may_need_more_calls_than_it_has_seconds() -> None:
    config = BreakerConfig(trip_rule="rate", window_type="time", window_size=10, minimum_calls=100)
    assert config.minimum_calls == 100


# -- keyed circuits --------------------------------------------------------------------


def carrier_of(sender, **kwargs) -> str:
    return kwargs["carrier"]


async def test_each_key_has_its_own_circuit(clock: VirtualClock) -> None:
    quote = Signal()
    carriers = CircuitBreaker("carriers", store="memory", failure_threshold=2, key=carrier_of)
    down = {"dhl"}
    calls: list[str] = []

    async def listener(sender, *, carrier, **kwargs):
        calls.append(carrier)
        if carrier in down:
            raise Boom(carrier)
        return carrier

    quote.connect(listener, breaker=carriers, on_error="log")
    for _ in range(3):
        for carrier in ("dhl", "ups"):
            await quote.collect_async(sender=None, carrier=carrier)
    assert calls == ["dhl", "ups", "dhl", "ups", "ups"]
    assert carriers.circuit("dhl").state == "open"
    assert carriers.circuit("ups").state == "closed"
    assert sorted(carriers.circuits()) == ["dhl", "ups"]
    assert get_breaker("carriers[dhl]") is carriers.circuit("dhl")
    assert carriers.circuit("dhl").name == "carriers[dhl]"
    collected = await quote.collect_async(sender=None, carrier="dhl")
    assert collected[0].status == "circuit_open"
    assert collected[0].error.breaker == "carriers[dhl]"


@override_settings(
    PATCHBOARD={
        "BREAKERS": {
            "declared-carriers": {
                "key": "tests.breaker.test_keyed_and_slow.carrier_of",
                "failure_threshold": 1,
                "store": "memory",
            }
        }
    }
)
async def test_a_declared_breaker_takes_its_key_as_a_dotted_path(clock: VirtualClock) -> None:
    quote = Signal()

    async def listener(sender, **kwargs):
        raise Boom()

    quote.connect(listener, breaker="declared-carriers", on_error="log")
    await quote.collect_async(sender=None, carrier="fedex")
    assert get_breaker("declared-carriers[fedex]").state == "open"


async def test_a_failing_key_function_fails_the_call_not_the_dispatch(clock) -> None:
    quote = Signal()
    carriers = CircuitBreaker("carriers-nokey", store="memory", key=carrier_of)

    async def listener(sender, **kwargs):
        return "never"

    async def other(sender, **kwargs):
        return "other"

    quote.connect(listener, breaker=carriers, on_error="log")
    quote.connect(other)
    collected = await quote.collect_async(sender=None)  # no carrier: KeyError in the key
    assert [o.status for o in collected] == ["error", "ok"]
    assert "carriers-nokey" in str(collected[0].error)
    assert isinstance(collected[0].error.__cause__, KeyError)


def test_a_keyed_breaker_guards_nothing_itself(clock) -> None:
    carriers = CircuitBreaker("carriers-direct", store="memory", key=carrier_of)
    keyed = r"is keyed: guard a call with breaker.circuit\(key\)"
    with pytest.raises(TypeError, match=keyed), carriers:
        pass
    plain = CircuitBreaker("plain", store="memory")
    with pytest.raises(TypeError, match="has no key"):
        plain.circuit("x")
    with pytest.raises(ValueError, match="1 to 200 characters"):
        carriers.circuit("")


def test_the_bound_drops_the_least_recently_used_closed_circuit(clock) -> None:
    carriers = CircuitBreaker(
        "carriers-lru", store="memory", failure_threshold=1, key=carrier_of, max_keys=3
    )
    with pytest.raises(Boom), carriers.circuit("a"):
        raise Boom()  # "a" is open, and the least recently used
    carriers.circuit("b")
    carriers.circuit("c")
    carriers.circuit("b")  # used again: "c" is now the least recently used closed one
    with structlog.testing.capture_logs() as logs:
        carriers.circuit("d")
    assert list(carriers.circuits()) == ["a", "b", "d"]
    assert carriers.circuit("a").state == "open", "an open circuit is kept"
    assert logs == []


def test_at_the_bound_with_every_circuit_open_the_oldest_is_dropped_and_logged(clock) -> None:
    carriers = CircuitBreaker(
        "carriers-full", store="memory", failure_threshold=1, key=carrier_of, max_keys=2
    )
    for key in ("a", "b"):
        with pytest.raises(Boom), carriers.circuit(key):
            raise Boom()
    with structlog.testing.capture_logs() as logs:
        carriers.circuit("c")
    assert list(carriers.circuits()) == ["b", "c"]
    assert [(e["event"], e["key"], e["state"], e["shared"]) for e in logs] == [
        ("circuit_key_evicted", "a", "open", False)
    ]


@pytest.mark.redis
def test_a_keyed_circuit_in_redis_expires_and_survives_eviction(
    redis_url: str, breaker_name: str
) -> None:
    with VirtualClock(autojump=False):
        carriers = CircuitBreaker(
            breaker_name,
            store=redis_url,
            trip_rule="rate",
            window_type="time",
            window_size=60,
            minimum_calls=1,
            key=carrier_of,
            max_keys=1,
        )
        with pytest.raises(Boom), carriers.circuit("dhl"):
            raise Boom()
        client = redis.Redis.from_url(redis_url)
        try:
            state_key = f"patchboard:breaker:{{{breaker_name}[dhl]}}"
            assert client.hget(state_key, "s") == b"o"
            assert 0 < client.pttl(state_key) <= 3_600_000 + 30_000
            assert 0 < client.pttl(f"{state_key}:window") <= 3_600_000 + 60_000
        finally:
            client.close()
        carriers.circuit("ups")  # drops "dhl" here; Redis keeps its state
        assert list(carriers.circuits()) == ["ups"]
        assert carriers.circuit("dhl").get_state_sync() == "open"


@pytest.mark.redis
def test_the_command_lists_the_keyed_circuits_open_in_redis_and_says_when_capped(
    redis_url: str, breaker_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    carriers = CircuitBreaker(breaker_name, store=redis_url, key=carrier_of)
    config = BreakerConfig(failure_threshold=1)
    # Another process's circuits: stores of their own, which this breaker has never used.
    for key in ("dhl", "ups", "}fedex"):
        RedisStore(f"{breaker_name}[{key}]", config, redis_url).force("force_open")
    RedisStore(f"{breaker_name}[tnt]", config, redis_url).force("force_closed")
    out = StringIO()
    call_command("patchboard", "breakers", stdout=out)
    listed = [line.split()[:2] for line in out.getvalue().splitlines()[1:-1]]
    assert listed == [
        [breaker_name, "closed"],
        [f"{breaker_name}[dhl]", "open"],
        [f"{breaker_name}[tnt]", "closed"],  # forced: listed until it is reset
        [f"{breaker_name}[ups]", "open"],
        [f"{breaker_name}[}}fedex]", "open"],
    ]
    assert carriers.circuits() == {}

    monkeypatch.setattr(_circuit, "LISTED_FROM_STORE", 1)
    out = StringIO()
    call_command("patchboard", "breakers", stdout=out)
    *rows, note, _ = out.getvalue().splitlines()
    assert len(rows) == 1 + 1 + 1  # the header, the keyed breaker, one circuit
    assert note == (
        f"Note: {breaker_name}: more than 1 of its circuits are open, half-open or forced "
        "in Redis; 1 of them are listed."
    )


@pytest.mark.redis
def test_the_listing_reads_redis_in_batches_and_stops_once_capped(
    redis_url: str, breaker_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of two keys (of 1000 in production): several batches, and the cap
    # reached in the middle of the scan.
    monkeypatch.setattr(_redis, "SCAN_COUNT", 2)
    CircuitBreaker(breaker_name, store=redis_url, key=carrier_of)
    keys = ["a", "b", "c", "d", "e"]
    for key in keys:
        RedisStore(f"{breaker_name}[{key}]", BreakerConfig(), redis_url).force("force_open")
    listed, notes = _circuit.listed_breakers()
    assert [b.name for b in listed] == [breaker_name, *(f"{breaker_name}[{k}]" for k in keys)]
    assert notes == []

    monkeypatch.setattr(_circuit, "LISTED_FROM_STORE", 2)
    listed, notes = _circuit.listed_breakers()
    circuits = [b.name for b in listed][1:]
    assert len(circuits) == 2
    assert set(circuits) <= {f"{breaker_name}[{k}]" for k in keys}
    assert len(notes) == 1


@pytest.mark.redis
def test_keys_of_other_shapes_under_the_prefix_are_left_out_of_the_listing(
    redis_url: str, breaker_name: str
) -> None:
    CircuitBreaker(breaker_name, store=redis_url, key=carrier_of)
    RedisStore(f"{breaker_name}[dhl]", BreakerConfig(), redis_url).force("force_open")
    client = redis.Redis.from_url(redis_url)
    try:
        # Not a hash, not UTF-8: written by something else under the same prefix.
        client.set(f"patchboard:breaker:{{{breaker_name}[ups]}}", "x", ex=60)
        not_utf8 = b"patchboard:breaker:{" + breaker_name.encode() + b"[\xff]}"
        client.hset(not_utf8, "s", "o")
        client.expire(not_utf8, 60)
        listed, notes = _circuit.listed_breakers()
    finally:
        client.close()
    assert [b.name for b in listed] == [breaker_name, f"{breaker_name}[dhl]"]
    assert notes == []
