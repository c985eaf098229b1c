"""
A closed-loop HTTP load generator for servers on loopback.

Picture ``concurrency`` users, each sending a request, waiting for its answer,
and sending the next one at once: the offered load follows the server's speed
(a *closed* loop), so a slow server gets fewer requests instead of a growing
backlog. All the users share one ``httpx.AsyncClient`` (one connection pool,
``concurrency`` connections) in one event loop.

The run stops by itself: no user starts a request once ``duration`` seconds
have passed, nor once ``max_requests`` requests were started; requests in
flight at that moment finish (each within ``request_timeout``) and are recorded.
Every request is recorded with its latency and its HTTP status, or the name
of the transport error that ended it::

    result = await load.run("http://127.0.0.1:8000/quotes?cart=3",
                            concurrency=8, duration=10.0, max_requests=5000)
    result.throughput, result.percentile(99), result.statuses()

``bench.bench_e2e`` drives the example shop with it. Only use it against
servers on this machine's loopback addresses.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]
"""Sends request number ``n`` (0, 1, ...) with the shared client and returns its response."""

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it started (clock seconds), how long it took, how it ended."""

    started: float
    latency: float
    """Seconds from sending the request to having read the whole response."""
    status: int | None
    """The HTTP status code, or ``None`` if a transport error ended the request."""
    error: str | None = None
    """The transport error's class name (``ReadTimeout``, ``ConnectError``, ...)."""

    @property
    def ok(self) -> bool:
        """Whether the server answered with a 2xx status."""
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a :func:`run` measured: every request, and the run's wall-clock time."""

    samples: tuple[Sample, ...]
    """In the order the requests finished."""
    elapsed: float
    """Seconds from the first request sent to the last response read."""
    concurrency: int

    @property
    def requests(self) -> int:
        return len(self.samples)

    @property
    def ok(self) -> int:
        """How many requests got a 2xx answer."""
        return sum(sample.ok for sample in self.samples)

    @property
    def throughput(self) -> float:
        """Requests completed per second (every status), over :attr:`elapsed`."""
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def latencies(self) -> list[float]:
        """Every request's latency in seconds, sorted."""
        return sorted(sample.latency for sample in self.samples)

    def percentile(self, q: float) -> float:
        """
        The ``q``-th percentile of the latencies in seconds, interpolated
        linearly between the closest ranks (numpy's default method).

        Raises:
            ValueError: ``q`` is not between 0 and 100, or nothing was recorded.
        """
        if not 0 <= q <= 100:
            raise ValueError(f"q must be between 0 and 100, got {q!r}")
        latencies = self.latencies
        if not latencies:
            raise ValueError("percentile of a run that recorded no request")
        rank = (len(latencies) - 1) * q / 100
        low, high = math.floor(rank), math.ceil(rank)
        return latencies[low] + (latencies[high] - latencies[low]) * (rank - low)

    def statuses(self) -> Counter[int | str]:
        """How many requests ended with each HTTP status, or each transport error's name."""
        return Counter(
            sample.status if sample.status is not None else str(sample.error)
            for sample in self.samples
        )


async def run(
    target: str | Request,
    *,
    concurrency: int,
    duration: float,
    max_requests: int | None = None,
    request_timeout: float = 30.0,
    client: httpx.AsyncClient | None = None,
    clock: Clock = time.perf_counter,
) -> LoadResult:
    """
    Send requests from ``concurrency`` concurrent workers, each one after the
    other, until ``duration`` seconds have passed or ``max_requests`` were
    started, whichever comes first; wait for those in flight; return them all.

    ``target`` is a URL to ``GET``, or a :data:`Request` function for anything
    else (a method, a body, a URL that changes per request). ``client``: the
    shared client to use (it is left open), e.g. one with an
    ``httpx.ASGITransport``; by default one is made for the run, with
    ``concurrency`` connections and ``request_timeout`` seconds per request. ``clock`` times
    the run and every request.

    Raises:
        ValueError: ``concurrency``, ``duration``, ``max_requests`` or
            ``request_timeout`` out of range (the message names it and its value).
    """
    _check(
        concurrency=concurrency,
        duration=duration,
        max_requests=max_requests,
        request_timeout=request_timeout,
    )
    send = _get(target) if isinstance(target, str) else target
    if client is not None:
        return await _run(client, send, concurrency, duration, max_requests, clock)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=request_timeout, limits=limits) as own:
        return await _run(own, send, concurrency, duration, max_requests, clock)


def _check(
    *, concurrency: int, duration: float, max_requests: int | None, request_timeout: float
) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    if not duration > 0 or math.isinf(duration):
        raise ValueError(f"duration must be a finite number of seconds > 0, got {duration!r}")
    if max_requests is not None and (
        isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1
    ):
        raise ValueError(f"max_requests must be None or an integer >= 1, got {max_requests!r}")
    if not request_timeout > 0:
        raise ValueError(f"request_timeout must be > 0 seconds, got {request_timeout!r}")


def _get(url: str) -> Request:
    def send(client: httpx.AsyncClient, n: int) -> Awaitable[httpx.Response]:
        return client.get(url)

    return send


async def _run(
    client: httpx.AsyncClient,
    send: Request,
    concurrency: int,
    duration: float,
    max_requests: int | None,
    clock: Clock,
) -> LoadResult:
    samples: list[Sample] = []
    started = clock()
    deadline = started + duration
    budget = max_requests if max_requests is not None else math.inf
    issued = 0

    async def worker() -> None:
        nonlocal issued
        # One event loop: checking and taking a ticket happen without a suspension between.
        while issued < budget and clock() < deadline:
            n, issued = issued, issued + 1
            samples.append(await _one(client, send, n, clock))

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return LoadResult(tuple(samples), clock() - started, concurrency)


async def _one(client: httpx.AsyncClient, send: Request, n: int, clock: Clock) -> Sample:
    started = clock()
    try:
        response = await send(client, n)
        await response.aread()
    except httpx.TransportError as exc:
        return Sample(started, clock() - started, None, type(exc).__name__)
    return Sample(started, clock() - started, response.status_code)
