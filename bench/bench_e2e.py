"""
End to end: the example shop under uvicorn with one carrier hanging, its
circuit breakers on and off, under a closed-loop load on loopback.

Two copies of the example's stack run side by side (``examples/stack.py``:
the carriers service, the shop under uvicorn, the Tasks worker), one shop
with ``SHOP_BREAKERS=off`` (its carrier listeners connected without their
breakers), both with ``SHOP_DEBUG=0`` and the breakers' reset timeout at
``RESET_TIMEOUT`` (``SHOP_BREAKER_RESET_TIMEOUT``: the example's 3 s is for
the demo; every probe is a request that waits the full carrier timeout). In
both, the carrier ``HANGING`` stops answering (its latency set to
``HANG_MS``): each of its calls ends at the listener's ``timeout``
(``CARRIER_TIMEOUT`` in the shop's settings), or, once its breaker has
opened, at once as ``circuit_open`` with its fallback.

:mod:`bench.load` sends ``GET /quotes?cart=3`` from each of ``CONCURRENCY``
numbers of clients (8, and 50 as issue 15's load tool did), first for
``WARM_UP`` seconds (the breaker opens then), then in ``ROUNDS`` rounds of
``DURATION`` seconds alternating between the two shops. Each table gives the
median over the rounds of requests per second and latency percentiles, the
ratio breaker on / off, and how many calls reached the hanging carrier, and
says whether the breaker's shop served at least the requests per second of
the other with its p99 within the page's deadline (``QUOTES_BUDGET``); the
plot, the latency distribution of every request of every round at 8 clients.
Run ``python -m bench.bench_e2e [--quick]`` or ``python -m bench``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import load
from bench.report import SCRATCH, Output
from examples.stack import Stack
from examples.walkthrough import BREAKER, RULE, SETTINGS, TIMEOUT_S

DEADLINE_S: float = SETTINGS["QUOTES_BUDGET"]
"""The quotes page's deadline: its p99 should stay within it."""

HANGING = "dhl"
HANG_MS = 60_000
"""The carriers service's longest latency: far past the listener's timeout."""
RESET_TIMEOUT = 30.0
"""Seconds an open circuit waits before a probe (the production value the shop's settings
suggest)."""
CART = 3
QUEUE: dict[str, float] = SETTINGS["PATCHBOARD"]["SHORT_TERM_QUEUE"]
CONCURRENCY = (8, 50)
DURATION = 10.0
WARM_UP = 3.0
ROUNDS = 3
MAX_REQUESTS = 50_000
"""A bound on one round's requests, whatever the duration."""
WELL_UNDER = 0.5
"""The breaker's target: p99 at most this fraction of the carrier timeout."""
PLOT = "e2e_latency.png"
MODES: dict[str, dict[str, str]] = {
    "breaker on": {},
    "breaker off": {"SHOP_BREAKERS": "off"},
}
"""Each mode's environment, added to ``ENVIRONMENT``."""
ENVIRONMENT = {"SHOP_DEBUG": "0", "SHOP_BREAKER_RESET_TIMEOUT": str(RESET_TIMEOUT)}


@dataclass(frozen=True, slots=True)
class Round:
    """One round of load on one shop."""

    result: load.LoadResult
    hanging_calls: int
    """Requests the hanging carrier received during the round."""
    healthy_calls: int
    """Requests the other carriers received during the round: the quotes fetched."""


@dataclass(slots=True)
class Mode:
    """One shop's rounds."""

    name: str
    rounds: list[Round] = field(default_factory=list)

    def median(self, measure: Callable[[load.LoadResult], float]) -> float:
        return statistics.median(measure(r.result) for r in self.rounds)

    @property
    def throughput(self) -> float:
        return self.median(lambda result: result.throughput)

    def percentile(self, q: float) -> float:
        """Seconds: the median over the rounds of each round's ``q``-th percentile."""
        return self.median(lambda result: result.percentile(q))

    @property
    def latencies(self) -> list[float]:
        """Every request of every round, in seconds."""
        return [latency for r in self.rounds for latency in r.result.latencies]

    @property
    def requests(self) -> int:
        return sum(r.result.requests for r in self.rounds)

    @property
    def failed(self) -> int:
        """Requests without a 2xx answer."""
        return sum(r.result.requests - r.result.ok for r in self.rounds)

    @property
    def slow(self) -> int:
        """Requests that took the carrier timeout or longer."""
        return sum(latency >= TIMEOUT_S for latency in self.latencies)

    @property
    def hanging_per_request(self) -> float:
        return sum(r.hanging_calls for r in self.rounds) / max(1, self.requests)

    @property
    def quotes_per_second(self) -> float:
        """The healthy carriers' calls a second (median over the rounds): real quotes."""
        return statistics.median(r.healthy_calls / r.result.elapsed for r in self.rounds)


@dataclass(frozen=True, slots=True)
class Plan:
    concurrency: int
    duration: float
    warm_up: float
    rounds: int


def plans(*, quick: bool) -> list[Plan]:
    """One plan per number of clients."""
    if quick:
        return [Plan(clients, duration=2.0, warm_up=2.0, rounds=1) for clients in CONCURRENCY]
    return [Plan(clients, DURATION, WARM_UP, ROUNDS) for clients in CONCURRENCY]


# -- running ------------------------------------------------------------------------------


def stacks(
    workdir: Path, exits: ExitStack, modes: Mapping[str, dict[str, str]] = MODES
) -> Iterator[tuple[str, Stack]]:
    """Start one stack per mode, its environment added to ``ENVIRONMENT`` (stopped
    when ``exits`` closes)."""
    for name, environment in modes.items():
        folder = workdir / name.replace(" ", "-").replace(",", "")
        stack = Stack(folder, environment={**ENVIRONMENT, **environment})
        yield name, exits.enter_context(stack)


async def carrier_requests(client: httpx.AsyncClient, stack: Stack) -> tuple[int, int]:
    """Requests the carriers received so far: (the hanging one, the others)."""
    response = await client.get(f"{stack.carriers_url}/stats")
    response.raise_for_status()
    counts = {name: int(c["requests"]) for name, c in response.json()["carriers"].items()}
    hanging = counts.pop(HANGING)
    return hanging, sum(counts.values())


async def measure(running: dict[str, Stack], plan: Plan) -> list[Mode]:
    """Hang the carrier, warm every shop up, then play the rounds, alternating shops."""
    modes = {name: Mode(name) for name in running}
    async with httpx.AsyncClient(timeout=10.0) as client:
        for stack in running.values():
            hang = await client.post(
                f"{stack.carriers_url}/control/{HANGING}", json={"latency_ms": HANG_MS}
            )
            hang.raise_for_status()
        for stack in running.values():
            await load.run(quotes_url(stack), concurrency=plan.concurrency, duration=plan.warm_up)
        for number in range(plan.rounds):
            for name, stack in running.items():
                before = await carrier_requests(client, stack)
                result = await load.run(
                    quotes_url(stack),
                    concurrency=plan.concurrency,
                    duration=plan.duration,
                    max_requests=MAX_REQUESTS,
                )
                after = await carrier_requests(client, stack)
                modes[name].rounds.append(Round(result, after[0] - before[0], after[1] - before[1]))
                print(
                    f"  e2e: {plan.concurrency} clients, round {number + 1}, {name}: "
                    f"{result.throughput:.0f} req/s, "
                    f"p99 {result.percentile(99) * 1000:.0f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    return list(modes.values())


def quotes_url(stack: Stack) -> str:
    return f"{stack.shop_url}/quotes?cart={CART}"


# -- report -------------------------------------------------------------------------------


def table(modes: list[Mode], plan: Plan) -> str:
    on, off = modes
    ms = 1000
    lines = [
        f"### `GET /quotes` with {HANGING} hanging, {plan.concurrency} clients: breaker on vs off",
        "",
        f"{plan.concurrency} concurrent clients (closed loop, one shared `httpx.AsyncClient`), "
        f"{plan.rounds} rounds of {plan.duration:g} s per shop, alternating, after "
        f"{plan.warm_up:g} s of warm-up; medians over the rounds. The carrier timeout is "
        f"{TIMEOUT_S * ms:.0f} ms; a carrier's circuit opens once {RULE} "
        f"and lets a probe (a request that waits the full timeout) through every "
        f"{RESET_TIMEOUT:g} s (`SHOP_BREAKER_RESET_TIMEOUT`; the demo's "
        f"{BREAKER['reset_timeout']:g} s would make one request in every few dozen a probe).",
        f"The shop sends its carrier calls through the short-term queue (MIN_WORKERS "
        f"{QUEUE['MIN_WORKERS']}, MAX_WORKERS {QUEUE['MAX_WORKERS']}): with the breaker, a "
        "request's latency is the queue's waves of the five healthy carriers (30-80 ms each).",
        "",
        f"| shop | requests/s | p50 ms | p90 ms | p99 ms | max ms | requests | non-2xx "
        f"| ≥ {TIMEOUT_S * ms:.0f} ms | calls to {HANGING} per request "
        "| quotes fetched/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in modes:
        lines.append(
            f"| {mode.name} | {mode.throughput:.1f} | {mode.percentile(50) * ms:.0f} "
            f"| {mode.percentile(90) * ms:.0f} | {mode.percentile(99) * ms:.0f} "
            f"| {max(mode.latencies) * ms:.0f} | {mode.requests} | {mode.failed} "
            f"| {mode.slow} | {mode.hanging_per_request:.3f} | {mode.quotes_per_second:.0f} |"
        )
    ratios = [on.throughput / off.throughput]
    ratios += [on.percentile(q) / off.percentile(q) for q in (50, 90, 99)]
    cells = [f"{ratio:.2f}x" for ratio in ratios] + [""] * 5
    cells.append(f"{on.quotes_per_second / off.quotes_per_second:.2f}x")
    lines.append("| on ÷ off | " + " | ".join(cells) + " |")
    p99 = on.percentile(99)
    verdict = "met" if p99 <= WELL_UNDER * TIMEOUT_S else "MISSED"
    faster = on.throughput >= off.throughput
    in_time = on.percentile(99) <= DEADLINE_S
    holds = "holds" if faster and in_time else "does NOT hold"
    lines += [
        "",
        f"Target: with the breaker, p99 at most {WELL_UNDER}x the carrier timeout "
        f"({WELL_UNDER * TIMEOUT_S * ms:.0f} ms): **{verdict}** ({p99 * ms:.0f} ms, "
        f"{p99 / TIMEOUT_S:.2f}x).",
        "",
        f"At {plan.concurrency} clients, the breaker's shop serving at least the requests/s "
        f"of the other with its p99 within the deadline ({DEADLINE_S * ms:.0f} ms) "
        f"**{holds}** ({on.throughput:.1f} vs {off.throughput:.1f} requests/s, "
        f"p99 {p99 * ms:.0f} ms). Quotes fetched from the healthy carriers: "
        f"{on.quotes_per_second:.0f} vs {off.quotes_per_second:.0f} a second "
        f"({on.quotes_per_second / off.quotes_per_second:.2f}x). (Where the machine is the "
        "limit, as at 50 clients on 2 cores with the load generator beside the shop, "
        "requests/s counts how cheap an answer is: a shop that sheds more of its carrier "
        "calls answers sooner, with fewer quotes.)",
    ]
    return "\n".join(lines)


def plot(modes: list[Mode], path: Path) -> None:
    """The latency distribution of each shop (every request, every round), as a CDF."""
    from bench.plots import figure, log_scale

    title = f"GET /quotes with {HANGING} hanging: latency distribution"
    with figure(path, title) as axes:
        for mode, style in zip(modes, ("-", "--"), strict=False):
            latencies = [latency * 1000 for latency in mode.latencies]
            axes.ecdf(latencies, linestyle=style, label=f"{mode.name} ({len(latencies)} requests)")
        axes.axvline(TIMEOUT_S * 1000, color="k", linestyle=":", label="carrier timeout")
        log_scale(axes, "x")
        axes.set_xlabel("latency (ms, log scale)")
        axes.set_ylabel("fraction of requests")
        axes.legend(loc="best")


def main(*, quick: bool = False, output: Output | None = None) -> str:
    """Start the stacks, measure, stop them; print and return the markdown."""
    measured: list[tuple[Plan, list[Mode]]] = []
    with tempfile.TemporaryDirectory(prefix="patchboard-bench-") as workdir, ExitStack() as exits:
        running = dict(stacks(Path(workdir), exits))
        for plan in plans(quick=quick):
            measured.append((plan, asyncio.run(measure(running, plan))))
    sections = ["## End to end: the example shop under uvicorn"]
    sections += [table(modes, plan) for plan, modes in measured]
    if output is not None:
        plot(measured[0][1], output.plot(PLOT))
        sections.append(
            output.image(
                PLOT,
                f"Latency CDF of GET /quotes, breaker on vs off, "
                f"{measured[0][0].concurrency} clients",
            )
        )
    text = "\n\n".join(sections)
    print(text)
    return text


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:], output=SCRATCH)
