"""
End to end: the example shop under ``uvicorn --workers 2`` with
prometheus_client's multiprocess directory. A known number of quote requests,
served by both workers, then one scrape of ``/metrics``: the listener-call
counters it returns add up every worker's calls, and equal what was sent
(each quote request calls each carrier's listener once).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from examples.stack import Stack

CARRIERS = ["ups", "fedex", "dhl", "usps", "dpd", "gls"]  # shop.settings.CARRIERS
LISTENERS = {f"shop.receivers.quote_{name}" for name in CARRIERS}
CALLS = "patchboard_listener_calls_total"
MIN_WORKERS, MAX_WORKERS = 6, 12  # shop.settings.PATCHBOARD["SHORT_TERM_QUEUE"]
BATCH = 8
"""Requests sent at once: two workers accept from one socket, so both get some."""


def quote_calls_by_listener(samples: list[tuple[str, dict[str, str], float]]) -> Counter[str]:
    """Listener calls of ``shop.quote_requested``, by listener, every status added up."""
    calls: Counter[str] = Counter()
    for name, labels, value in samples:
        if name == CALLS and labels["signal"] == "shop.quote_requested":
            calls[labels["listener"]] += int(value)
    return calls


def calls_per_worker(directory: Path) -> dict[str, int]:
    """The quote calls each process wrote to its own file of the multiprocess directory."""
    per_worker = {}
    for path in sorted(directory.glob("counter_*.db")):
        samples = [
            (sample.name, sample.labels, sample.value)
            for metric in MultiProcessCollector.merge([str(path)])
            for sample in metric.samples
        ]
        if total := sum(quote_calls_by_listener(samples).values()):
            per_worker[path.stem] = total
    return per_worker


async def send_quotes(shop_url: str, directory: Path) -> int:
    """
    Send batches of quote requests until both workers served some (the second
    may still be starting when the first answers); how many were sent.
    """
    sent = 0
    # A new connection per request: a kept-alive one stays with the worker that accepted it.
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=shop_url, timeout=30.0, limits=no_keepalive) as client:
        for _ in range(60):
            replies = await asyncio.gather(
                *(client.get("/quotes", params={"cart": sent + i}) for i in range(BATCH))
            )
            assert [reply.status_code for reply in replies] == [200] * BATCH
            sent += BATCH
            if len(calls_per_worker(directory)) == 2:
                break
    return sent


def gauge_per_process(directory: Path, name: str) -> list[float]:
    """Gauge ``name`` as each process wrote it to its own file, where not 0."""
    values = []
    for path in sorted(directory.glob("gauge_livesum_*.db")):
        for metric in MultiProcessCollector.merge([str(path)]):
            values += [s.value for s in metric.samples if s.name == name and s.value]
    return values


def scraped_gauge(shop_url: str, name: str) -> float | None:
    scrape = httpx.get(f"{shop_url}/metrics", timeout=30.0)
    families = text_string_to_metric_families(scrape.text)
    return next((s.value for f in families for s in f.samples if s.name == name), None)


def queue_workers(shop_url: str, directory: Path) -> tuple[float | None, list[float]]:
    """
    The scraped ``patchboard_queue_workers`` and each worker's own, once both
    workers wrote theirs (their reader threads do every second) and the
    scrape adds them up, or after 15 s: the last of both.
    """
    name = "patchboard_queue_workers"
    deadline = time.monotonic() + 15
    while True:
        own = gauge_per_process(directory, name)
        scraped = scraped_gauge(shop_url, name)
        if (len(own) == 2 and scraped == sum(own)) or time.monotonic() > deadline:
            return scraped, own
        time.sleep(0.2)


def test_one_scrape_adds_up_both_workers(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    environment = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    # No tasks worker: it would add its own pool to the workers gauge (every live process
    # counts its pool); ``manage.py migrate``'s, which ran with the same environment, left
    # the live gauges when it exited.
    stack = Stack(tmp_path / "stack", shop_workers=2, environment=environment, tasks_worker=False)
    with stack:
        sent = asyncio.run(send_quotes(stack.shop_url, directory))
        per_worker = calls_per_worker(directory)
        scrape = httpx.get(f"{stack.shop_url}/metrics", timeout=30.0)
        workers, own_workers = queue_workers(stack.shop_url, directory)

    assert len(per_worker) == 2, per_worker  # both workers called the carriers
    assert sum(per_worker.values()) == sent * len(CARRIERS)
    assert scrape.status_code == 200
    samples = [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
    ]
    assert quote_calls_by_listener(samples) == dict.fromkeys(LISTENERS, sent)
    durations = {
        labels["listener"]: value
        for name, labels, value in samples
        if name == "patchboard_listener_call_duration_seconds_count"
        and labels["signal"] == "shop.quote_requested"
    }
    assert durations == dict.fromkeys(LISTENERS, sent)
    waits = [value for name, _, value in samples if name == "patchboard_queue_wait_seconds_count"]
    # The shop queues every carrier call: each one a worker took (it ran: whatever its
    # status but a refusal, an expiry or a rejection) waited in line once.
    ran = sum(
        value
        for name, labels, value in samples
        if name == CALLS
        and labels["signal"] == "shop.quote_requested"
        and labels["status"] in {"ok", "error", "timeout"}
    )
    assert waits == [ran]
    assert ran > 0
    # A gauge of the live processes: each web worker's pool, added up (nothing of migrate's).
    assert len(own_workers) == 2, own_workers
    assert all(MIN_WORKERS <= each <= MAX_WORKERS for each in own_workers)
    assert workers == sum(own_workers)
