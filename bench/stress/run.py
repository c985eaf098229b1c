"""
One stress run: the example's stack with the shop under uvicorn ``--workers``,
the breakers in a private Redis, background listeners on RQ (another private
Redis, durable as a broker is, with an ``rqworker`` and the outbox's relay
beside the shop), a closed-loop load with orders on the side, and the faults
on schedule (see :class:`~bench.stress.config.Config`). :meth:`StressRun.run`
returns everything the checks need (:class:`Observed`); it judges nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.stress import load
from bench.stress.config import DOWN, REQUEST_BUDGET, SLOW, SLOW_MS, Config
from bench.stress.reach import ask_each
from bench.stress.services import alive, cpu_seconds, proc_status, rq_busy, workers
from bench.stress.shop import ORDERS_HEADER, PID_HEADER, QUOTES_HEADER, STACKS_SIGNAL
from examples.processes import ROOT, RedisServer, StackError
from examples.stack import Stack
from examples.walkthrough import log_in

Progress = Callable[[str], None]
SNAPSHOT_WITHIN = 20.0
"""Seconds to keep asking until every worker has answered its status page."""
QUIET_TIMEOUT = 15.0
WATCH_INTERVAL = 2.0
"""Seconds between two looks at the processes (each look is a few status pages)."""
DRAIN_WITHIN = 30.0
"""Seconds after the load for every outbox entry to be claimed and the RQ queue to go idle
(the relay delivers a lost task again after ``OUTBOX_GRACE``, 2 s in the run's settings)."""
RQ_WORKER = ("rqworker", "default", "--job-class", "django_tasks_rq.Job", "--with-scheduler")
"""The shop's RQ worker, as the README runs it."""
RELAY = ("patchboard", "relay", "--interval", "0.5")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One worker process's status page (JSON) and its counts of quote and order requests."""

    pid: int
    page: dict[str, Any]
    quotes_started: int
    orders_started: int = 0


@dataclass(frozen=True, slots=True)
class ProcSample:
    at: float
    pid: int
    rss_kb: int
    os_threads: int


@dataclass(slots=True)
class Background:
    """The orders sent during the load, and what became of their background calls."""

    statuses: Counter[int] = field(default_factory=Counter)
    """The order requests' response statuses (0: no response)."""
    created: list[int] = field(default_factory=list)
    """The orders the shop answered 201 for, by id."""
    committed: list[int] = field(default_factory=list)
    """The orders in the shop's database, by id."""
    runs: Counter[int] = field(default_factory=Counter)
    """How many times the run's background listener ran for each order."""
    receipts_sent: int = 0
    """Orders the shop's own background listener (``send_receipt``) marked as sent."""
    entries: int = 0
    """The outbox's entries (two per order: a background call per listener)."""
    refused: int = 0
    """Entries whose delivery failed at least once (the broker down), relayed since."""
    relayed: int = 0
    """Entries the relay delivered while no worker had claimed them (refused, or lost)."""
    unclaimed: int = 0
    """Entries no worker had claimed (run) at the end: queued, lost, or never delivered."""
    drained_in: float = math.nan
    """Seconds after the load until every entry was claimed and the queue idle (nan: never)."""
    worker_restarts: int = 0
    """How many times the rqworker exited and was started again."""


@dataclass(slots=True)
class Observed:
    """What one run saw: the load's samples, the processes' pages, /proc and the logs."""

    config: Config
    load: load.Responses = field(default_factory=load.Responses)
    worker_pids: list[int] = field(default_factory=list)
    before: dict[int, Snapshot] = field(default_factory=dict)
    after: dict[int, Snapshot] = field(default_factory=dict)
    pages: list[Snapshot] = field(default_factory=list)
    """Status pages sampled during the load."""
    procs: list[ProcSample] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    """When each fault started and ended, in seconds since the load started."""
    wall: dict[str, datetime] = field(default_factory=dict)
    """The same moments by the wall clock (the logs' timestamps)."""
    down_requests: dict[str, int] = field(default_factory=dict)
    """The failing carrier's request count at the carrier, at the steady phase's start and end."""
    disconnected: int = 0
    answered_aside: int = 0
    """Requests of the disconnecting client that were answered before it went away."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process used (the machine's cores are shared by all of them)."""
    background: Background = field(default_factory=Background)
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """What went wrong in the harness itself (a fault that could not be applied, ...)."""


class StressRun:
    def __init__(self, config: Config, progress: Progress = lambda text: None) -> None:
        self.config = config
        self.progress = progress
        self.observed = Observed(config)
        self.started = 0.0
        self.phase = "starting"
        self.answered: dict[int, float] = {}
        """When each worker's status page last answered (seconds into the load)."""

    # -- the run ---------------------------------------------------------------------

    def run(self) -> Observed:
        """
        Start everything, load it, apply the faults, stop everything.

        Raises:
            StackError: a process did not start.
        """
        workdir = Path(tempfile.mkdtemp(prefix="patchboard-stress-"))
        # The broker keeps what it was handed across its restart, as a deployed one does:
        # a queue lost with a restart would be the broker's loss, not the outbox's.
        with RedisServer() as redis, RedisServer(durable=True) as broker:
            environment = {"STRESS_REDIS_URL": redis.url, "STRESS_BROKER_URL": broker.url}
            stack = Stack(
                workdir,
                shop_workers=self.config.shop_workers,
                settings="bench.stress.settings",
                environment={**environment, "PYTHONPATH": str(ROOT)},
                tasks_worker=False,
                # Behind a proxy a server keeps idle connections longer than the proxy does
                # (nginx: 75 s); uvicorn's 5 s would race the load's next request on them.
                shop_options=["--timeout-keep-alive", "75"],
            )
            with stack:
                # An rqworker exits when its broker goes away while it watches a job
                # (rq 3.0): restarted, as its supervisor would in a deployment.
                stack.spawn("rqworker", [*stack.manage_command(), *RQ_WORKER], restart=True)
                stack.spawn("relay", [*stack.manage_command(), *RELAY])
                asyncio.run(self.drive(stack, redis, broker))
                self.observed.events = stack.events()
        return self.observed

    async def drive(self, stack: Stack, redis: RedisServer, broker: RedisServer) -> None:
        observed, config = self.observed, self.config
        password = secrets.token_urlsafe(12)
        await asyncio.to_thread(stack.create_staff_user, "stress", password)
        deadline = time.monotonic() + SNAPSHOT_WITHIN
        await asyncio.to_thread(stack.wait_for_output, "rqworker", "Listening on", deadline)
        await asyncio.to_thread(stack.wait_for_output, "relay", "Relaying", deadline)
        self.staff = httpx.AsyncClient(base_url=stack.shop_url, timeout=30.0)
        # No keep-alive for the harness's own requests: a connection the server closed
        # while idle (uvicorn keeps one 5 s) would fail the next request on it.
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with self.staff, httpx.AsyncClient(timeout=10.0, limits=fresh) as self.http:
            await log_in(self.staff, "stress", password)
            await self.set_up_carriers(stack)
            observed.worker_pids = await self.wait_for_workers(stack)
            observed.before = await self.snapshots(stack)
            self.started = time.monotonic()
            self.mark("load")
            load_run = asyncio.create_task(
                load.run(
                    f"{stack.shop_url}/quotes",
                    concurrency=config.concurrency,
                    duration=config.duration,
                    max_requests=config.max_requests,
                    responses=observed.load,
                )
            )
            watch = asyncio.create_task(self.watch(stack, load_run))
            orders = asyncio.create_task(self.orders(stack, load_run))
            try:
                await self.faults(stack, redis, broker)
                await load_run
                await orders
                # After the load, off its schedule: a pause in it for them pushed the
                # faults after it late, and under it most requests have every call shed
                # at once and answer before any cut.
                self.phase = "clients disconnecting"
                self.mark("disconnects")
                await self.disconnect(stack)
            finally:
                watch.cancel()
                orders.cancel()
                load_run.cancel()
            self.phase = "quiescing"
            observed.after = await self.quiet(stack)
            if not all(busy(page.page) == 0 for page in observed.after.values()):
                observed.problems.append("the shop never went quiet after the load")
            self.phase = "draining the outbox"
            await self.drain(stack, broker)
            observed.cpu = {
                **{f"shop worker {pid}": cpu_seconds(pid) for pid in observed.worker_pids},
                "this process (load, checks)": time.process_time(),
            }

    # -- faults, on schedule -----------------------------------------------------------

    async def faults(self, stack: Stack, redis: RedisServer, broker: RedisServer) -> None:
        broker_outage = asyncio.create_task(self.broker_outage(broker))
        try:
            await self.outages(stack, redis)
            await broker_outage
        finally:
            broker_outage.cancel()

    async def outages(self, stack: Stack, redis: RedisServer) -> None:
        config = self.config
        await self.until(config.at(config.redis_down[0]), "warm-up")
        self.mark("redis_stopped")
        await asyncio.to_thread(redis.stop)
        await self.until(config.at(config.redis_down[1]), "Redis down")
        # Marked before the start, which returns once Redis answers the harness: by then
        # a busy shop process may already have found it again.
        self.mark("redis_started")
        await asyncio.to_thread(redis.start)
        await self.until(config.at(config.carriers_down[0]), "Redis back")
        self.mark("carriers_killed")
        await asyncio.to_thread(stack.kill, "carriers")
        await self.until(config.at(config.carriers_down[1]), "carriers down")
        # Marked before the restart: on a busy machine a probe can close a circuit as
        # soon as the carriers answer, before the harness has set them up again.
        self.mark("carriers_restarted")
        await asyncio.to_thread(stack.restart_carriers)
        await self.set_up_carriers(stack)
        await self.until(config.at(config.steady_from), "carriers back")
        self.mark("steady")
        self.observed.down_requests["start"] = await self.carrier_requests(stack, DOWN)
        await self.until(config.duration, "steady")
        self.observed.down_requests["end"] = await self.carrier_requests(stack, DOWN)
        self.mark("end")

    async def broker_outage(self, broker: RedisServer) -> None:
        """The background listeners' broker stopped and started again, beside the other faults."""
        stop, start = (self.config.at(moment) for moment in self.config.broker_down)
        await asyncio.sleep(max(0.0, stop - self.elapsed()))
        self.mark("broker_stopped")
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(max(0.0, start - self.elapsed()))
        self.mark("broker_started")
        await asyncio.to_thread(broker.start)

    async def until(self, moment: float, phase: str) -> None:
        self.phase = phase
        await asyncio.sleep(max(0.0, moment - self.elapsed()))

    async def disconnect(self, stack: Stack) -> None:
        """
        Requests whose client goes away mid-request (a read timeout closes the
        connection), sent once the shop is quiet after the load, so that each is
        cut while its slow carrier's call runs.
        """
        # A request ends within its deadline: quiet by then, or cut anyway (the check
        # then finds fewer calls cancelled, never a false pass).
        await self.quiet(stack, within=2 * REQUEST_BUDGET)
        await self.cut(stack)

    async def cut(self, stack: Stack) -> None:
        count = self.config.disconnects
        first, last = self.config.disconnect_after

        async def one(cart: int) -> bool:
            cut = first + (last - first) * cart / max(1, count - 1)
            async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=cut)) as client:
                try:
                    await client.get(f"{stack.shop_url}/quotes", params={"cart": cart})
                except httpx.ReadTimeout:
                    return True
            return False

        # One answered in time is no failure (its carriers all answered at once: circuit
        # open, or expired by the queue); only the ones cut count.
        gone = await asyncio.gather(*(one(cart) for cart in range(count)))
        self.observed.disconnected = sum(gone)
        self.observed.answered_aside = len(gone) - sum(gone)
        if not any(gone):
            self.observed.problems.append(
                f"none of {len(gone)} requests was still running after "
                f"{first:g}-{last:g} s: nothing was cut"
            )

    # -- orders and their background calls ---------------------------------------------------

    async def orders(self, stack: Stack, load_run: asyncio.Task[load.Responses]) -> None:
        """
        An order (``POST /orders``) every ``order_every`` seconds while the load
        runs, one at a time: each commits, and sends ``order_completed`` inside its
        transaction.
        """
        background = self.observed.background
        cart = 0
        while not load_run.done():
            cart += 1
            try:
                response = await self.http.post(
                    f"{stack.shop_url}/orders", json={"cart": cart, "total": "12.50"}
                )
            except httpx.HTTPError:
                background.statuses[0] += 1
            else:
                background.statuses[response.status_code] += 1
                if response.status_code == 201:
                    background.created.append(int(response.json()["id"]))
            await asyncio.sleep(self.config.order_every)

    async def drain(self, stack: Stack, broker: RedisServer) -> None:
        """
        Wait until a worker has claimed every outbox entry and the RQ queue is
        idle (DRAIN_WITHIN seconds at most), then read what the orders left in
        the shop's database.
        """
        database = Path(stack.env["SHOP_DATABASE"])
        background = self.observed.background
        started = time.monotonic()
        while True:
            stack.check_alive()
            unclaimed = await asyncio.to_thread(outbox_unclaimed, database)
            idle = partial(rq_busy, broker.url, live_workers_only=True)
            if unclaimed == 0 and await asyncio.to_thread(idle) == 0:
                # Twice, apart: a job a live worker is taking is in none of what rq_busy
                # counts for a moment (a dead worker's stays in the intermediate list).
                await asyncio.sleep(1.0)
                if await asyncio.to_thread(idle) == 0:
                    background.drained_in = time.monotonic() - started - 1.0
                    break
            if time.monotonic() - started > DRAIN_WITHIN:
                self.observed.problems.append(
                    f"after {DRAIN_WITHIN:g} s, {unclaimed} outbox entries were unclaimed "
                    f"or the RQ queue was busy"
                )
                break
            await asyncio.sleep(0.2)
        await asyncio.to_thread(read_orders, database, background)
        background.worker_restarts = stack.service("rqworker").restarts

    async def set_up_carriers(self, stack: Stack) -> None:
        """One carrier down (503 to every quote), one slow; the others healthy."""
        control = f"{stack.carriers_url}/control"
        (await self.http.post(f"{control}/{DOWN}", json={"fail_rate": 1.0})).raise_for_status()
        (await self.http.post(f"{control}/{SLOW}", json={"latency_ms": SLOW_MS})).raise_for_status()

    async def carrier_requests(self, stack: Stack, carrier: str) -> int:
        stats = (await self.http.get(f"{stack.carriers_url}/stats")).json()
        return int(stats["carriers"][carrier]["requests"])

    # -- watching the processes -----------------------------------------------------------

    async def watch(self, stack: Stack, load_run: asyncio.Task[load.Responses]) -> None:
        """Every WATCH_INTERVAL: each worker's RSS and threads, and a status page from each."""
        while not load_run.done():
            with contextlib.suppress(StackError):  # the harness's waits report it
                await asyncio.to_thread(stack.check_alive)  # restarts the rqworker if need be
            now = self.elapsed()
            for pid in self.observed.worker_pids:
                status = proc_status(pid)
                if status:
                    self.observed.procs.append(
                        ProcSample(now, pid, status["VmRSS"], status["Threads"])
                    )
            try:
                pages = await self.snapshots(stack, within=2.0, under_load=True)
            except (httpx.HTTPError, StackError):
                pages = {}  # the page is one more client: never let it stop the watch
            self.observed.pages += pages.values()
            self.progress(self.progress_line())
            await asyncio.sleep(WATCH_INTERVAL)

    def progress_line(self) -> str:
        result = self.observed.load
        statuses = result.statuses()
        errors = sum(n for code, n in statuses.items() if code >= 500 or code == 0)
        rate = len(result.samples) / max(self.elapsed(), 0.001)
        p99 = result.percentile(99)
        return (
            f"{self.elapsed():5.1f}/{self.config.duration:g} s  {len(result.samples):6d} requests "
            f"({rate:4.0f}/s)  p99 {p99:5.2f} s  errors {errors}  {self.phase}"
        )

    async def wait_for_workers(self, stack: Stack) -> list[int]:
        shop = stack.service("shop").process.pid
        deadline = time.monotonic() + 30
        while len(pids := workers(shop)) < self.config.shop_workers:
            if time.monotonic() > deadline:
                raise StackError(f"uvicorn started {pids}, not {self.config.shop_workers} workers")
            await asyncio.sleep(0.1)
        return pids

    async def snapshots(
        self, stack: Stack, within: float = SNAPSHOT_WITHIN, *, under_load: bool = False
    ) -> dict[int, Snapshot]:
        """
        The status page of every worker process, ``within`` seconds at most.
        uvicorn's workers share the listening socket, so each new connection
        goes to one of them: :func:`~bench.stress.reach.ask_each` asks on fresh
        connections and, unless ``under_load`` (where a pause would show in the
        latencies), pauses the workers that answered so that the others take
        the next one; the error then says what became of each worker that
        never answered (:meth:`whereabouts`).

        Raises:
            StackError: some worker never answered.
        """
        wanted = set(self.observed.worker_pids)
        found = await ask_each(
            wanted, partial(self.snapshot, stack), within=within, pause=not under_load
        )
        for page in found.values():
            self.answered[page.pid] = self.elapsed()
        if wanted <= found.keys():
            return found
        missing = sorted(wanted - found.keys())
        if under_load:
            raise StackError(f"status pages of {missing} never answered within {within:g} s")
        raise StackError(
            f"status pages of {missing} never answered within {within:g} s: "
            + "; ".join(self.whereabouts(stack, pid) for pid in missing)
        )

    def whereabouts(self, stack: Stack, pid: int) -> str:
        """
        What became of a worker process: still running (its CPU time), or gone,
        with what uvicorn logged about it. uvicorn's supervisor kills and
        replaces a worker that misses its health check (a ping answered by a
        thread of the worker) for ``--timeout-worker-healthcheck`` seconds. A
        worker that still runs is asked for its threads' stacks, which it writes
        to the shop's log (``bench.stress.shop``), quoted here.
        """
        seen = self.answered.get(pid)
        last = f"last answered at {seen:.1f} s" if seen is not None else "never answered"
        log = stack.service("shop").log
        lines = log.read_text(errors="replace").splitlines() if log else []
        if alive(pid):
            os.kill(pid, STACKS_SIGNAL)
            stacks = written_after(log, len(lines)) if log else []
            dumped = "\n".join(line for line in stacks if not line.startswith("{"))
            return (
                f"worker {pid} still runs ({cpu_seconds(pid):.1f} s of CPU so far, {last}); "
                f"its threads:\n{dumped or '(nothing written)'}"
            )
        told = [line.strip() for line in lines if f"[{pid}]" in line]
        return f"worker {pid} is gone ({last}); uvicorn said: {' / '.join(told) or 'nothing'}"

    async def snapshot(self, stack: Stack) -> tuple[int, Snapshot]:
        """One status page, on a fresh connection: the pid that served it, and the page."""
        async with httpx.AsyncClient(
            base_url=stack.shop_url, cookies=self.staff.cookies, timeout=30.0
        ) as fresh:
            response = await fresh.get("/patchboard/", params={"format": "json"})
        response.raise_for_status()
        page = response.json()
        assert int(response.headers[PID_HEADER]) == page["pid"]
        return page["pid"], Snapshot(
            page["pid"],
            page,
            int(response.headers[QUOTES_HEADER]),
            int(response.headers[ORDERS_HEADER]),
        )

    async def quiet(self, stack: Stack, within: float = QUIET_TIMEOUT) -> dict[int, Snapshot]:
        """Each worker's page once nothing runs or waits any more (``within`` s at most)."""
        deadline = time.monotonic() + within
        while True:
            pages = await self.snapshots(stack)
            if all(busy(page.page) == 0 for page in pages.values()):
                return pages
            if time.monotonic() > deadline:
                return pages
            await asyncio.sleep(0.2)

    # -- time ----------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0

    def mark(self, name: str) -> None:
        self.observed.marks[name] = self.elapsed()
        self.observed.wall[name] = datetime.now(UTC)


def written_after(log: Path, known: int, within: float = 3.0) -> list[str]:
    """
    The lines ``log`` gains after its first ``known`` lines once it stops
    growing (a stack dump is written in a moment, but on a busy machine the
    process may wait for a core first), ``within`` seconds at most.
    """
    deadline = time.monotonic() + within
    seen: list[str] = []
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = log.read_text(errors="replace").splitlines()[known:]
        if now and now == seen:
            break
        seen = now
    return seen


def outbox_unclaimed(database: Path) -> int:
    """
    The shop's outbox entries no worker has claimed (``delivered_at`` is the
    claim's stamp): queued in the broker, lost by it, or not delivered yet.
    """
    with contextlib.closing(sqlite3.connect(database, timeout=20)) as connection:
        query = "SELECT count(*) FROM patchboard_outbox WHERE delivered_at IS NULL"
        return int(connection.execute(query).fetchone()[0])


def read_orders(database: Path, background: Background) -> None:
    """The orders, the runs of their background listeners and the outbox, from the shop's file."""
    with contextlib.closing(sqlite3.connect(database, timeout=20)) as connection:
        orders = connection.execute("SELECT id, receipt_sent_at IS NOT NULL FROM shop_order")
        for order, receipt_sent in orders.fetchall():
            background.committed.append(int(order))
            background.receipts_sent += int(receipt_sent)
        runs = connection.execute(
            "SELECT order_id, count(*) FROM stress_shop_receipt GROUP BY order_id"
        )
        background.runs.update({int(order): int(n) for order, n in runs.fetchall()})
        entries, refused, relayed, unclaimed = connection.execute(
            "SELECT count(*), coalesce(sum(attempts > 0), 0), coalesce(sum(deliveries > 0), 0),"
            " coalesce(sum(delivered_at IS NULL), 0) FROM patchboard_outbox"
        ).fetchone()
        background.entries, background.refused = entries, refused
        background.relayed, background.unclaimed = relayed, unclaimed


def busy(page: dict[str, Any]) -> int:
    """Calls still running or waiting in a process: its queue's and its listener threads'."""
    queue, threads = page["queue"], page["threads"]
    return int(queue["running"] + queue["waiting"] + threads["busy"] + threads["waiting"])
