"""
The stress run's load: bench/load.py's closed-loop generator (``concurrency``
clients on loopback, each sending its next request when the previous one is
answered, stopping by itself after ``duration`` or ``max_requests``), sending
``GET /quotes?cart=<random>``.

Each response is also kept here as a :class:`Sample` with what the stress
checks read from it: the process that served it, each carrier's outcome in
it, and the view's own time.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from bench import load as generator
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
class Responses:
    """Every response of one load, as it comes in (the progress line reads it live)."""

    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    result: generator.LoadResult | None = None
    """bench/load.py's own record of the run, once it is over."""

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the answered requests' latency, in seconds."""
        if self.result is not None and self.result.requests:
            return self.result.percentile(q)
        ordered = sorted(s.latency for s in self.samples)  # so far, nearest rank
        return ordered[math.ceil(q / 100 * len(ordered)) - 1] if ordered else math.nan

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
        return self.result.throughput if self.result is not None else math.nan

    def sender(self, url: str, carts: int) -> generator.Request:
        """bench/load.py's request function: a random cart's quotes, recorded here."""

        async def send(client: httpx.AsyncClient, n: int) -> httpx.Response:
            before = time.monotonic()
            try:
                response = await client.get(url, params={"cart": random.randrange(carts)})
            except httpx.TransportError as exc:
                now = time.monotonic()
                self.samples.append(
                    Sample(now - self.started, now - before, TRANSPORT_ERROR, None, error=repr(exc))
                )
                raise
            now = time.monotonic()
            self.samples.append(sample(response, now - self.started, now - before))
            return response

        return send


def sample(response: httpx.Response, at: float, latency: float) -> Sample:
    pid = response.headers.get(PID_HEADER)
    if response.status_code != 200:
        return Sample(at, latency, response.status_code, int(pid) if pid else None)
    body = response.json()
    quotes = body["carriers"]
    slowest = max(quotes, key=lambda q: q["elapsed_ms"])
    return Sample(
        at,
        latency,
        response.status_code,
        int(pid) if pid else None,
        tuple(q["status"] for q in quotes),
        body["elapsed_ms"],
        (slowest["carrier"], slowest["status"], slowest["elapsed_ms"]),
    )


async def run(
    url: str,
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    responses: Responses,
    carts: int = 1000,
) -> Responses:
    """
    Load ``url`` with bench/load.py's generator; ``responses`` fills up while it runs.

    Raises:
        ValueError: ``concurrency``, ``duration`` or ``max_requests`` out of range.
    """
    responses.started = time.monotonic()
    responses.result = await generator.run(
        responses.sender(url, carts),
        concurrency=concurrency,
        duration=duration,
        max_requests=max_requests,
    )
    return responses
