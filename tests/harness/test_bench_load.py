"""
bench/load.py, the load generator of ``make bench`` (and of the stress
harness): against a tiny ASGI app in this process (``httpx.ASGITransport``),
on a virtual clock the app moves, so counts and percentiles are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import pytest

from bench import load

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Clock:
    """Virtual seconds: they pass only when the app says its work took time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def app_answering(respond: Callable[[int], Awaitable[int]]) -> Any:
    """An ASGI app: the status of the n-th request (from 0) is ``await respond(n)``."""
    count = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal count
        n, count = count, count + 1
        status = await respond(n)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    return app


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_stops_after_max_requests_with_every_status_recorded() -> None:
    async def respond(n: int) -> int:
        return 503 if n % 4 == 0 else 200

    async with client_of(app_answering(respond)) as client:
        result = await load.run(
            "http://test/", concurrency=3, duration=60.0, max_requests=10, client=client
        )
    assert result.requests == 10
    assert result.statuses() == {200: 7, 503: 3}
    assert result.ok == 7
    assert result.concurrency == 3


async def test_stops_when_the_duration_has_passed() -> None:
    clock = Clock()

    async def respond(n: int) -> int:
        clock.now += 0.25  # each request takes a quarter of a (virtual) second
        return 200

    async with client_of(app_answering(respond)) as client:
        result = await load.run(
            "http://test/", concurrency=1, duration=2.0, client=client, clock=clock
        )
    # Started at 0, 0.25, ..., 1.75; none at 2.0.
    assert result.requests == 8
    assert result.elapsed == 2.0
    assert result.throughput == 4.0


async def test_latencies_and_percentiles() -> None:
    clock = Clock()

    async def respond(n: int) -> int:
        clock.now += (n + 1) / 1000  # request n takes n + 1 ms: 1, 2, ..., 100 ms
        return 200

    async with client_of(app_answering(respond)) as client:
        result = await load.run(
            "http://test/", concurrency=1, duration=60.0, max_requests=100, client=client,
            clock=clock,
        )  # fmt: skip
    assert result.latencies == pytest.approx([ms / 1000 for ms in range(1, 101)])
    assert result.percentile(0) == pytest.approx(0.001)
    assert result.percentile(50) == pytest.approx(0.0505)  # between 50 and 51 ms
    assert result.percentile(99) == pytest.approx(0.09901)
    assert result.percentile(100) == pytest.approx(0.100)


async def test_the_workers_send_concurrently() -> None:
    """Every request waits until ``concurrency`` are in the app at once: fewer would hang."""
    barrier = asyncio.Barrier(5)

    async def respond(n: int) -> int:
        await barrier.wait()
        return 200

    async with client_of(app_answering(respond)) as client, asyncio.timeout(10):
        result = await load.run(
            "http://test/", concurrency=5, duration=60.0, max_requests=15, client=client
        )
    assert result.requests == 15


async def test_a_request_function_and_transport_errors() -> None:
    sent: list[int] = []

    async def request(client: httpx.AsyncClient, n: int) -> httpx.Response:
        sent.append(n)
        if n == 1:
            raise httpx.ConnectError("refused")
        return await client.post(f"http://test/orders/{n}", json={"n": n})

    async def respond(n: int) -> int:
        return 201

    async with client_of(app_answering(respond)) as client:
        result = await load.run(
            request, concurrency=2, duration=60.0, max_requests=4, client=client
        )
    assert sorted(sent) == [0, 1, 2, 3]
    assert result.statuses() == {201: 3, "ConnectError": 1}
    [failed] = [sample for sample in result.samples if sample.status is None]
    assert failed.error == "ConnectError" and not failed.ok


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"duration": 0.0}, "duration"),
        ({"duration": float("inf")}, "duration"),
        ({"max_requests": 0}, "max_requests"),
        ({"request_timeout": -1.0}, "request_timeout"),
    ],
)
async def test_bad_arguments_are_named(options: dict[str, Any], named: str) -> None:
    arguments: dict[str, Any] = {"concurrency": 1, "duration": 1.0, **options}
    with pytest.raises(ValueError, match=f"^{named} must be"):
        await load.run("http://127.0.0.1:9/", **arguments)


def test_percentile_of_nothing_or_out_of_range() -> None:
    empty = load.LoadResult((), 0.0, 1)
    with pytest.raises(ValueError, match="no request"):
        empty.percentile(50)
    with pytest.raises(ValueError, match=r"^q must be between 0 and 100, got 101"):
        empty.percentile(101)
    assert empty.throughput == 0.0
