"""
What a stress run must show (issue 12), judged from what it observed
(:class:`~bench.stress.run.Observed`): one :class:`Check` per promise, with
its figures, whether it passed or not.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bench.stress.config import (
    DEADLINE_GRACE,
    DOWN,
    HALF_OPEN_MAX_CALLS,
    REQUEST_BUDGET,
    SHOP_SETTINGS,
)
from bench.stress.load import TRANSPORT_ERROR
from bench.stress.run import Observed
from examples.walkthrough import BREAKER, KEYED, circuit

NEVER_RAN_OR_RAN = ("ok", "error", "timeout", "expired", "rejected", "circuit_open")
"""The outcome statuses of a listener call made in the request (``enqueued`` is not one)."""
ORDER_CALLS = 3 + 2
"""Listener calls per order: ``order_paid``'s three in the request, and ``order_completed``'s
two background ones (the shop's receipt and the run's evidence), each ``"enqueued"``."""
QUEUE_ENDINGS = (
    "completed",
    "failed",
    "circuit_open",
    "timed_out",
    "expired",
    "rejected",
    "cancelled",
)
RSS_GROWTH_LIMIT = 0.10
CARRIERS = 6
HEALTHY = sorted({*SHOP_SETTINGS["CARRIERS"]} - {DOWN})


@dataclass(frozen=True, slots=True)
class Check:
    label: str
    passed: bool
    figures: str


def judge(observed: Observed) -> list[Check]:
    """Every check, in the report's order."""
    checks: list[Check] = []
    for check in CHECKS:
        try:
            checks.append(check(observed))
        except (KeyError, ValueError, IndexError, TypeError) as exc:  # nothing to judge
            checks.append(Check(check.__name__.replace("_", " "), False, f"no data: {exc!r}"))
    return checks


def no_5xx(observed: Observed) -> Check:
    statuses = observed.load.statuses()
    codes = ", ".join(f"{code or 'no response'}: {n}" for code, n in sorted(statuses.items()))
    total = len(observed.load.samples)
    return Check(
        "no 5xx",
        total > 0 and not any(code >= 500 for code in statuses),
        f"{total} requests, {observed.load.rate():.0f}/s ({codes})",
    )


def every_request_answered(observed: Observed) -> Check:
    """A request with no response at all (refused, reset, or past the client's patience)."""
    failed = Counter(s.error for s in observed.load.samples if s.status == TRANSPORT_ERROR)
    worst = max((s.latency for s in observed.load.samples), default=math.nan)
    return Check(
        "every request answered",
        not failed,
        f"slowest answer {worst:.1f} s" + (f"; no response: {dict(failed)}" if failed else ""),
    )


def p99_within_budget(observed: Observed) -> Check:
    """
    The view's own time (``elapsed_ms``: the whole dispatch, fallbacks
    included) is what patchboard bounds; the end-to-end latency adds uvicorn,
    Django's middleware, the loopback and the load generator sharing the
    machine's cores: shown, not judged.
    """
    result = observed.load
    answered = [s for s in result.samples if s.status == 200]
    view = sorted(s.server_ms / 1000 for s in answered)
    p99_view = view[min(len(view) - 1, math.ceil(0.99 * len(view)) - 1)] if view else math.nan
    p50, p99 = result.percentile(50), result.percentile(99)
    cpu = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in observed.cpu.items())
    return Check(
        f"p99 within the request budget ({REQUEST_BUDGET:g} s deadline)",
        p99_view <= REQUEST_BUDGET * (1 + DEADLINE_GRACE),
        f"view p99 {p99_view * 1000:.0f} ms, max {max(view, default=math.nan) * 1000:.0f} ms; "
        f"end to end p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (CPU: {cpu})",
    )


def rss_flat(observed: Observed) -> Check:
    half = observed.config.duration / 2
    figures, passed = [], True
    for pid in observed.worker_pids:
        samples = [s for s in observed.procs if s.pid == pid and s.at >= half]
        first, last = samples[0].rss_kb, samples[-1].rss_kb
        growth = (last - first) / first
        passed &= growth < RSS_GROWTH_LIMIT
        figures.append(f"{pid}: {first / 1024:.0f}→{last / 1024:.0f} MB ({growth:+.1%})")
    return Check(
        f"RSS flat over the last half (< {RSS_GROWTH_LIMIT:.0%})",
        passed and bool(figures),
        ", ".join(figures),
    )


def thread_bound(observed: Observed) -> Check:
    pages = [s.page["threads"] for s in observed.pages]
    limit = max(page["limit"] for page in pages)
    peak = max(page["busy"] for page in pages)
    os_threads = max(s.os_threads for s in observed.procs)
    over = [p for p in pages if p["busy"] > p["limit"]]
    return Check(
        "listener threads never above MAX_THREADS",
        not over and bool(pages),
        f"busy ≤ {peak} of {limit} in {len(pages)} samples; OS threads per process ≤ {os_threads}",
    )


def outcomes_add_up(observed: Observed) -> Check:
    """
    In each process: every listener call asked for (CARRIERS per quote
    request that reached the view, ORDER_CALLS per order request, or the
    ``submitted`` counter where the status page has one) ended as exactly one
    outcome. ``cancelled`` is the outcome where the page has it, else the
    queue's counter (every carrier call is queued).
    """
    figures, passed = [], True
    for pid in observed.after:
        outcomes = counted(observed, pid, "outcomes")
        queue = counted(observed, pid, "queue", "counters")
        asked = CARRIERS * quotes_started(observed, pid) + ORDER_CALLS * orders_started(
            observed, pid
        )
        cancelled = outcomes["cancelled"] if "cancelled" in outcomes else queue["cancelled"]
        ended = sum(outcomes.get(status, 0) for status in (*NEVER_RAN_OR_RAN, "enqueued"))
        ended += cancelled
        submitted = outcomes.get("submitted", asked)
        ok = asked == ended == submitted
        uncounted = queue["cancelled"] - cancelled
        passed &= ok
        figures.append(
            f"{pid}: {asked} asked = {ended} ended"
            + ("" if ok else f" (submitted {submitted}, {uncounted} cancelled uncounted)")
            + f", {cancelled} cancelled"
        )
    return Check("outcomes add up in each process", passed and bool(figures), "; ".join(figures))


def queue_adds_up(observed: Observed) -> Check:
    figures, passed = [], True
    for pid, after in observed.after.items():
        counters = after.page["queue"]["counters"]
        ended = sum(counters[name] for name in QUEUE_ENDINGS)
        passed &= counters["submitted"] == ended
        figures.append(f"{pid}: submitted {counters['submitted']} = ended {ended}")
    return Check("queue counters add up in each process", passed, "; ".join(figures))


def requests_accounted(observed: Observed) -> Check:
    """Quote requests that reached a view = those answered + the disconnected ones that did."""
    started = sum(quotes_started(observed, pid) for pid in observed.after)
    answered = sum(1 for s in observed.load.samples if s.pid is not None)
    answered += observed.answered_aside
    lost = started - answered
    return Check(
        "every quote request accounted for",
        0 <= lost <= observed.disconnected,
        f"{started} reached the view = {answered} answered + {lost} of "
        f"{observed.disconnected} disconnected",
    )


def seen_by_clients(observed: Observed) -> Check:
    """The outcomes the responses reported never exceed what each process counted."""
    figures, passed = [], True
    for pid, seen in observed.load.outcomes_by_pid().items():
        server = counted(observed, pid, "outcomes")
        over = {s: n for s, n in seen.items() if n > server.get(s, 0)}
        passed &= not over
        shown = ", ".join(f"{s} {n}" for s, n in sorted(seen.items()))
        figures.append(f"{pid}: {shown}" + (f" OVER {over}" if over else ""))
    return Check("responses agree with the counters", passed and bool(figures), "; ".join(figures))


def probes_shared(observed: Observed) -> Check:
    marks = observed.marks
    window = marks["end"] - marks["steady"]
    reset = float(BREAKER["reset_timeout"])
    bound = (math.floor(window / reset) + 1) * HALF_OPEN_MAX_CALLS
    probes = observed.down_requests["end"] - observed.down_requests["start"]
    return Check(
        f"{DOWN}'s circuit shared: ≤ 1 probe per {reset:g} s at the carrier",
        1 <= probes <= bound,
        f"{probes} requests reached {DOWN} in {window:.0f} s (bound {bound}; "
        f"each process probing alone: ~{2 * window / reset:.0f})",
    )


def redis_outage(observed: Observed) -> Check:
    marks, wall = observed.marks, observed.wall
    during = [
        s for s in observed.load.samples if marks["redis_stopped"] <= s.at < marks["redis_started"]
    ]
    answered = sum(1 for s in during if s.status == 200)
    down = (wall["redis_stopped"], wall["redis_started"])
    unavailable = per_pid(observed, "circuit_store_unavailable", *down)
    # Only a process that called its breakers while Redis was down can have noticed:
    # the load's keep-alive connections may all belong to one worker (the other then
    # serves the orders' connection alone, which calls no breaker).
    serving = {s.pid for s in during}
    pids = [pid for pid in observed.worker_pids if pid in serving]
    idle = [pid for pid in observed.worker_pids if pid not in serving]
    # A process tries Redis again only `retry_after` (1 s) after its last failure, so
    # its return may come after the next fault has started: each process's returns are
    # counted up to its own next `circuit_store_unavailable`. Later, a Redis command of
    # a saturated process may time out (0.25 s) on its own, a separate little outage
    # with its own pair of events.
    recovered = Counter[int]()
    for pid in pids:
        again = [
            datetime.fromisoformat(event["timestamp"])
            for event in events_since(observed, "circuit_store_unavailable", down[1])
            if int(event.get("pid", 0)) == pid
        ]
        until = min(again, default=wall["end"])
        recovered[pid] = per_pid(observed, "circuit_store_recovered", down[1], until)[pid]
    later = sum(per_pid(observed, "circuit_store_unavailable", down[1], wall["end"]).values())
    return Check(
        "Redis stopped and restarted: served throughout, back to Redis once",
        answered > 0
        and len(during) == answered
        and bool(pids)
        and all(unavailable[pid] >= 1 for pid in pids)
        and all(recovered[pid] == 1 for pid in pids),
        f"{answered}/{len(during)} answered while down; per process serving quotes: "
        f"unavailable {[unavailable[p] for p in pids]}, recovered {[recovered[p] for p in pids]}"
        + (f"; {len(idle)} process(es) served no quote meanwhile" if idle else "")
        + (f"; later, {later} Redis command(s) timed out (0.25 s) in a busy loop" if later else ""),
    )


def carriers_outage(observed: Observed) -> Check:
    """
    Each healthy carrier's circuit (``carriers[<name>]``) opened while the
    carriers were down and closed after they came back. The status page lists
    the keyed ``carriers`` breaker followed by its circuits that are *not*
    closed: a circuit left out of a page that lists the breaker is closed.
    """
    wall = observed.wall
    opened = breakers_in(observed, "circuit_opened", wall["carriers_killed"])
    closed = breakers_in(observed, "circuit_closed", wall["carriers_restarted"])
    healthy = {circuit(name) for name in HEALTHY}
    pages = [page.page["breakers"] for page in observed.after.values()]
    listed = bool(pages) and all(any(b["name"] == KEYED for b in page) for page in pages)
    still_open = sorted(
        {b["name"] for page in pages for b in page if b["name"] in healthy}
    )  # listed: not closed
    return Check(
        "carriers killed and restarted: circuits opened, probes closed them",
        healthy <= opened and healthy <= closed and listed and not still_open,
        f"opened {len(opened & healthy)}/{len(healthy)}, closed again "
        f"{len(closed & healthy)}/{len(healthy)}"
        + (f", still open: {still_open}" if still_open else ", all closed at the end")
        + ("" if listed else f"; a status page did not list {KEYED!r}"),
    )


def disconnects_leave_nothing(observed: Observed) -> Check:
    cancelled = sum(
        counted(observed, pid, "queue", "counters")["cancelled"] for pid in observed.after
    )
    left = {
        pid: {k: v for k, v in leftovers(page.page).items() if v}
        for pid, page in observed.after.items()
    }
    clean = all(not found for found in left.values())
    return Check(
        "clients gone mid-request: calls cancelled, nothing left",
        observed.disconnected > 0 and cancelled > 0 and clean,
        f"{observed.disconnected} of {observed.config.disconnects} cut at "
        f"{'-'.join(f'{s:g}' for s in observed.config.disconnect_after)} s, "
        f"{cancelled} calls cancelled; after the run: "
        + ("nothing running, waiting or abandoned" if clean else f"left {left}"),
    )


def background_once(observed: Observed) -> Check:
    """
    Every committed order's background call ran exactly once, counted by the
    evidence its listener left keyed by the order (0 lost, 0 run twice), the
    broker's outage included: some deliveries were refused while it was down
    (else the outage tested nothing), and a worker had claimed every outbox
    entry at the end. Every order the shop answered 201 for is committed.
    """
    background = observed.background
    committed = set(background.committed)
    once = sum(1 for order in committed if background.runs[order] == 1)
    lost = sum(1 for order in committed if background.runs[order] == 0)
    twice = sum(1 for order in committed if background.runs[order] > 1)
    strays = sum(n for order, n in background.runs.items() if order not in committed)
    unseen = set(background.created) - committed
    statuses = ", ".join(
        f"{code or 'no response'}: {n}" for code, n in sorted(background.statuses.items())
    )
    return Check(
        "broker stopped and restarted: each committed order's background call ran once",
        bool(committed)
        and once == len(committed)
        and not (lost or twice or strays or unseen)
        and background.refused > 0
        and background.unclaimed == 0
        and background.receipts_sent == len(committed),
        f"{len(committed)} orders committed ({statuses}): {once} ran once, {lost} lost, "
        f"{twice} twice; outbox: {background.entries} entries, {background.refused} refused "
        f"while the broker was down, {background.relayed} relayed unclaimed, "
        f"{background.unclaimed} unclaimed "
        f"{background.drained_in:.1f} s after the load; the shop's receipt sent for "
        f"{background.receipts_sent}; the rqworker restarted {background.worker_restarts} times"
        + (f"; {len(unseen)} answered 201 and not committed" if unseen else "")
        + (f"; {strays} runs for no committed order" if strays else ""),
    )


def harness(observed: Observed) -> Check:
    return Check(
        "the harness did what it meant to", not observed.problems, "; ".join(observed.problems)
    )


CHECKS: list[Callable[[Observed], Check]] = [
    no_5xx,
    every_request_answered,
    p99_within_budget,
    rss_flat,
    thread_bound,
    outcomes_add_up,
    queue_adds_up,
    requests_accounted,
    seen_by_clients,
    probes_shared,
    redis_outage,
    carriers_outage,
    disconnects_leave_nothing,
    background_once,
    harness,
]


# -- helpers ---------------------------------------------------------------------------


def counted(observed: Observed, pid: int, *path: str) -> dict[str, int]:
    """Counters of process ``pid`` at ``path`` in its status page, grown during the run."""
    after: dict[str, int] = page_at(observed.after[pid].page, path)
    before = page_at(observed.before[pid].page, path) if pid in observed.before else {}
    return {key: value - before.get(key, 0) for key, value in after.items()}


def page_at(page: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        page = page[key]
    return page


def quotes_started(observed: Observed, pid: int) -> int:
    before = observed.before[pid].quotes_started if pid in observed.before else 0
    return observed.after[pid].quotes_started - before


def orders_started(observed: Observed, pid: int) -> int:
    before = observed.before[pid].orders_started if pid in observed.before else 0
    return observed.after[pid].orders_started - before


def leftovers(page: dict[str, Any]) -> dict[str, int]:
    queue, threads = page["queue"], page["threads"]
    return {
        "queue running": queue["running"],
        "queue waiting": queue["waiting"],
        "threads busy": threads["busy"],
        "threads waiting": threads["waiting"],
        "abandoned threads running": threads["abandoned_running"],
    }


def events_since(
    observed: Observed, name: str, since: datetime, until: datetime | None = None
) -> Iterable[dict[str, Any]]:
    for event in observed.events:
        if event.get("event") != name:
            continue
        at = datetime.fromisoformat(event["timestamp"])
        if at >= since and (until is None or at < until):
            yield event


def per_pid(observed: Observed, name: str, since: datetime, until: datetime) -> Counter[int]:
    found = events_since(observed, name, since, until)
    return Counter(int(event.get("pid", 0)) for event in found)


def breakers_in(observed: Observed, name: str, since: datetime) -> set[str]:
    return {str(event.get("breaker")) for event in events_since(observed, name, since)}
