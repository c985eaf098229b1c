"""
Breakers on a Redis Cluster and on Sentinel-watched Redis, each started by the
tests (tests/breaker/topologies.py): state shared, one round trip per
decision (counted on the servers), a primary failover during calls.

Internals on purpose: ``RedisStore`` stands in for a second process (a store
of its own, on a link of its own), and ``Topology`` is read directly.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator

import pytest
from django.core.checks import run_checks
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from patchboard import CircuitBreaker, CircuitOpen, get_breaker
from patchboard._breaker import listed_breakers
from patchboard._breaker._checks import E010_ID
from patchboard._breaker._redis import RedisLink, RedisStore, check_url, name_of_key, state_key
from patchboard._breaker._topology import Topology, store_kind
from patchboard._config import BreakerConfig
from tests.breaker.topologies import RedisClusterNodes, SentinelSetup, commands, until


def test_cluster_and_sentinel_urls_are_read_as_written() -> None:
    assert Topology.parse("redis+cluster://:pw@a:7000,b,[::1]:7002/?socket_timeout=0.1") == (
        Topology(
            kind="redis_cluster",
            url="redis://:pw@a:7000/0?socket_timeout=0.1",
            nodes=(("a", 7000), ("b", 6379), ("::1", 7002)),
        )
    )
    assert Topology.parse("rediss+sentinel://s1,s2:26380/mymaster/3") == Topology(
        kind="redis_sentinel",
        url="rediss://s1:26379/3",
        nodes=(("s1", 26379), ("s2", 26380)),
        service="mymaster",
    )
    assert Topology.parse("redis://h/2") == Topology(kind="redis", url="redis://h/2")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis+sentinel://:hunter2@s1:26379",
            "store 'redis+sentinel://:***@s1:26379' is not a valid Redis Sentinel URL: "
            "the service name (the path: /mymaster/0) is missing",
        ),
        (
            "redis+cluster://a:7000,b:7001/3",
            "store 'redis+cluster://a:7000,b:7001/3' is not a valid Redis Cluster URL: "
            "a cluster has database 0 only, got '3'",
        ),
        (
            "redis+cluster://a:7000,b:x/",
            "store 'redis+cluster://a:7000,b:x/' is not a valid Redis Cluster URL: "
            "node 'b:x': the port must be a number in 1-65535",
        ),
        (
            "redis+sentinel://s1,/mymaster",
            "store 'redis+sentinel://s1,/mymaster' is not a valid Redis Sentinel URL: "
            "node '': a host is missing (host:port,host:port)",
        ),
        (
            "redis+sentinel://s1/mymaster/0?socket_timout=1",
            "store 'redis+sentinel://s1/mymaster/0?socket_timout=1' is not a valid Redis "
            "Sentinel URL: AbstractConnection.__init__() got an unexpected keyword argument "
            "'socket_timout'",
        ),
    ],
)
def test_a_malformed_cluster_or_sentinel_url_is_reported_with_its_kind(url, message) -> None:
    # Python 3.13 adds a suggestion to an unexpected keyword's TypeError; 3.12 does not.
    told = re.escape(message) + r"(\. Did you mean '\w+'\?)?"
    with pytest.raises(ValueError) as caught:
        check_url(url)
    assert re.fullmatch(told, str(caught.value))
    with override_settings(PATCHBOARD={"BREAKERS": {"ups": {"store": url}}}):
        errors = [e for e in run_checks() if e.id == E010_ID]
        assert len(errors) == 1
        assert re.fullmatch("circuit breaker 'ups': " + told, errors[0].msg)
        assert get_breaker("ups").statistics().store_kind == store_kind(url)


def slots(name: str) -> set[int]:
    """The cluster hash slots of the breaker ``name``'s keys."""
    store = RedisStore(name, BreakerConfig(), "redis+cluster://127.0.0.1:7000/")
    return {key_slot(key.encode()) for key in store._keys}


@given(st.text(min_size=1, max_size=50))
def test_a_breakers_keys_share_one_hash_slot(name: str) -> None:
    """Whatever the name (braces anywhere in it included), the script's keys are one slot."""
    assert len(slots(name)) == 1


def test_a_name_starting_with_a_closing_brace_keeps_one_slot() -> None:
    """Once known and failing: ``}carrier`` made the hash tag ``{}``, empty, so Redis
    hashed each whole key and a cluster refused the script's keys as cross-slot."""
    assert len(slots("}carrier")) == 1


@given(st.text(min_size=1, max_size=50))
def test_a_state_key_reads_back_as_its_name(name: str) -> None:
    assert name_of_key(state_key(name)) == name


def test_a_name_without_braces_keeps_the_key_it_always_had() -> None:
    """So the state in Redis outlives an upgrade; only names with a brace are escaped."""
    assert state_key("carriers[dhl.example]") == "patchboard:breaker:{carriers[dhl.example]}"
    assert state_key("50%") == "patchboard:breaker:{50%}"
    assert state_key("}a{%") == "patchboard:breaker:%{%7Da%7B%25}"
    assert name_of_key("patchboard:breaker:{a}:probes") is None
    assert name_of_key("patchboard:breaker:%{%7D}") == "}"
    assert name_of_key("patchboard:breaker:%{a}") is None  # not a form state_key writes
    assert name_of_key("patchboard:breaker:%{%FF}") is None


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    with RedisClusterNodes() as nodes:
        yield nodes


def names_on_each_node(cluster: RedisClusterNodes) -> dict[int, str]:
    """A breaker name whose keys each node serves."""
    names: dict[int, str] = {}
    for i in range(1000):
        owner = cluster.owner(f"patchboard:breaker:{{node-{i}}}")
        names.setdefault(owner, f"node-{i}")
        if len(names) == len(cluster.ports):
            return names
    raise AssertionError("no name found for some node")


async def calls(breaker: CircuitBreaker, form: str, n: int, *, fail: bool) -> None:
    """``n`` calls through ``breaker`` in its sync or async form, failing or not."""
    for _ in range(n):
        try:
            if form == "sync":
                with breaker:
                    if fail:
                        raise ConnectionError
            else:
                async with breaker:
                    if fail:
                        raise ConnectionError
        except ConnectionError:
            pass


@pytest.mark.redis
@pytest.mark.parametrize("form", ["sync", "async"])
def test_a_cluster_shares_each_breaker_one_round_trip_per_decision(cluster, form) -> None:
    for port, name in names_on_each_node(cluster).items():
        name = f"{name}-{form}"
        port = cluster.owner(f"patchboard:breaker:{{{name}}}")
        breaker = CircuitBreaker(name, store=cluster.url(), sync_interval=0, failure_threshold=3)
        # Another process: a link of its own (the same nodes, named in another order).
        other = RedisStore(name, breaker.config, cluster.url(order=(2, 0, 1)))
        assert other.link is not breaker._remote.link  # type: ignore[union-attr]
        other.acquire()  # warm: its client knows the slots, the script is loaded

        async def scenario(breaker: CircuitBreaker = breaker) -> None:
            await calls(breaker, form, 1, fail=False)  # warm: this loop's client
            cluster.reset_stats()
            await calls(breaker, form, 10, fail=False)  # closed, sync_interval=0: one each
            await calls(breaker, form, 3, fail=True)  # a failure: admission, then its report

        asyncio.run(scenario())
        counted = {p: commands(p).get("evalsha", 0) for p in cluster.ports}
        assert counted == {p: (16 if p == port else 0) for p in cluster.ports}
        with pytest.raises(CircuitOpen):
            other.acquire()  # the other process sees the circuit this one opened


@pytest.fixture
def sentinels() -> Iterator[SentinelSetup]:
    with SentinelSetup() as setup:
        yield setup


@pytest.mark.redis
def test_a_primary_failover_during_calls(sentinels, record_property, monkeypatch) -> None:
    # A broken connection is retried at once; past that, the fallback for 50 ms.
    monkeypatch.setattr(RedisLink, "retry_after", 0.05)
    breaker = CircuitBreaker("failover", store=sentinels.url(), sync_interval=0)
    link = breaker._remote.link  # type: ignore[union-attr]
    old, new = sentinels.primary, sentinels.replica
    stop = threading.Event()
    waits: list[float] = []
    fallbacks = [0]
    errors: list[BaseException] = []

    def caller() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                with breaker:  # closed before, during and after: every call goes through
                    pass
            except BaseException as exc:
                errors.append(exc)
            waits.append(time.perf_counter() - started)
            fallbacks[0] += bool(link.down_until)

    async def async_caller() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                async with breaker:
                    pass
            except BaseException as exc:
                errors.append(exc)
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0)

    threads = [threading.Thread(target=caller) for _ in range(2)]
    loop_thread = threading.Thread(target=lambda: asyncio.run(async_caller()))
    for thread in [*threads, loop_thread]:
        thread.start()
    try:
        until(lambda: commands(old).get("evalsha", 0) > 20, "calls on the old primary")
        sentinels.failover()
        until(lambda: sentinels.primary_port() == new, "the sentinels naming the new primary")
        until(lambda: sentinels.role(old) == "slave", "the old primary demoted")
        until(lambda: commands(new).get("evalsha", 0) > 20, "calls on the new primary")
    finally:
        stop.set()
        for thread in [*threads, loop_thread]:
            thread.join(timeout=30)
    assert errors == []
    record_property("calls", len(waits))
    record_property("max_wait_s", round(max(waits), 4))
    record_property("calls_on_fallback", fallbacks[0])
    # After it: every decision is one EVALSHA on the new primary, none on the old.
    before = {port: commands(port).get("evalsha", 0) for port in (old, new)}
    asked = {port: commands(port).get("sentinel", 0) for port in sentinels.sentinels}
    for _ in range(25):
        with breaker:
            pass
    assert {port: commands(port).get("evalsha", 0) for port in (old, new)} == {
        old: before[old],
        new: before[new] + 25,
    }
    assert {port: commands(port).get("sentinel", 0) for port in sentinels.sentinels} == asked
    # And what it writes is what the other processes read: the new primary's.
    breaker.force_open()
    other = RedisStore("failover", breaker.config, sentinels.url(reverse=True))
    with pytest.raises(CircuitOpen):
        other.acquire()


@pytest.mark.redis
def test_a_name_with_braces_is_shared_through_a_cluster(cluster) -> None:
    """``}carrier``'s keys fell in different slots: the cluster refused the script
    (CROSSSLOT) and the breaker ran on its in-process fallback, shared with nobody."""
    for name in ("}carrier", "{dhl}[}]"):
        breaker = CircuitBreaker(name, store=cluster.url(), sync_interval=0, failure_threshold=1)
        with pytest.raises(ConnectionError), breaker:
            raise ConnectionError
        assert (breaker.state, breaker.statistics().fallback) == ("open", False)
        other = RedisStore(name, breaker.config, cluster.url(order=(2, 0, 1)))
        with pytest.raises(CircuitOpen):
            other.acquire()  # another process sees it open


@pytest.mark.redis
def test_a_keyed_breakers_open_circuits_are_listed_from_every_primary(cluster) -> None:
    family = "listed-carriers"
    keys: dict[int, str] = {}
    for i in range(1000):
        owner = cluster.owner(state_key(f"{family}[k{i}]"))
        keys.setdefault(owner, f"k{i}")
        if len(keys) == len(cluster.ports):
            break
    assert len(keys) == len(cluster.ports)
    carriers = CircuitBreaker(family, store=cluster.url(), key=lambda sender, **kwargs: "")
    for key in keys.values():  # another process's circuits, one on each primary
        RedisStore(f"{family}[{key}]", carriers.config, cluster.url()).force("force_open")

    listed, notes = listed_breakers()

    assert [b.name for b in listed] == [family, *sorted(f"{family}[{k}]" for k in keys.values())]
    assert notes == []
