"""
A closed-loop load generator on loopback: ``concurrency`` clients, each
sending its next request when the previous one is answered, until
``duration`` seconds have passed or ``max_requests`` were sent, whichever
comes first. It stops by itself.

Each response is kept as a :class:`Sample` with what the stress checks read
from it: the status code, the latency, the process that served it and each
carrier's outcome in it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from bench.stress.shop import PID_HEADER

TRANSPORT_ERROR = 0
"""A sample's ``status`` when no HTTP response came back (refused, reset, timed out)."""


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    """When it was answered, in seconds since the load started."""
    latency: float
    status: int
    pid: int | None
    outcomes: tuple[str, ...] = ()
    """Each carrier's outcome status, in the response's order."""
    server_ms: int = 0
    """How long the shop's view took (its ``elapsed_ms``)."""
    slowest: tuple[str, str, int] = ("", "", 0)
    """The carrier whose outcome took longest: (carrier, status, elapsed_ms)."""
    error: str = ""
    """Why no response came back (``status`` TRANSPORT_ERROR): the exception's class."""


@dataclass(slots=True)
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    elapsed: float = 0.0

    def latencies(self) -> list[float]:
        return sorted(s.latency for s in self.samples if s.status == 200)

    def percentile(self, fraction: float) -> float:
        """The ``fraction`` quantile of the successful requests' latency (nearest rank)."""
        ordered = self.latencies()
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]

    def statuses(self) -> Counter[int]:
        return Counter(s.status for s in self.samples)

    def outcomes_by_pid(self) -> dict[int, Counter[str]]:
        """The carrier outcomes the responses reported, by the process that served them."""
        found: dict[int, Counter[str]] = {}
        for sample in self.samples:
            if sample.pid is not None:
                found.setdefault(sample.pid, Counter()).update(sample.outcomes)
        return found

    def rate(self) -> float:
        return len(self.samples) / self.elapsed if self.elapsed else 0.0


async def run(
    url: str,
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    result: LoadResult | None = None,
    carts: int = 1000,
    request_timeout: float = 30.0,
) -> LoadResult:
    """
    Send ``GET url?cart=<random>`` from ``concurrency`` clients until
    ``duration`` or ``max_requests``; ``result`` fills up while it runs
    (for a progress line).
    """
    result = result if result is not None else LoadResult()
    sent = itertools.count()
    started = time.monotonic()
    deadline = started + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=request_timeout) as client:

        async def one_client() -> None:
            while time.monotonic() < deadline and next(sent) < max_requests:
                sample = await request(client, url, random.randrange(carts), started)
                result.samples.append(sample)

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    result.elapsed = time.monotonic() - started
    return result


async def request(client: httpx.AsyncClient, url: str, cart: int, since: float) -> Sample:
    """One quote request, as a sample (``since``: when the load started)."""
    clock = time.monotonic
    before = clock()
    try:
        response = await client.get(url, params={"cart": cart})
    except httpx.TransportError as exc:
        now = clock()
        return Sample(now - since, now - before, TRANSPORT_ERROR, None, error=type(exc).__name__)
    now = clock()
    pid = response.headers.get(PID_HEADER)
    if response.status_code != 200:
        return Sample(now - since, now - before, response.status_code, int(pid) if pid else None)
    body = response.json()
    quotes = body["carriers"]
    slowest = max(quotes, key=lambda q: q["elapsed_ms"])
    return Sample(
        now - since,
        now - before,
        response.status_code,
        int(pid) if pid else None,
        tuple(q["status"] for q in quotes),
        body["elapsed_ms"],
        (slowest["carrier"], slowest["status"], slowest["elapsed_ms"]),
    )
