"""
The stress run's judgement (bench/stress/checks.py) on made-up observations:
each check fails when its promise is broken.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest

from bench.stress.checks import (
    CARRIERS,
    HEALTHY,
    ORDER_CALLS,
    background_once,
    carriers_outage,
    outcomes_add_up,
    probes_shared,
    redis_outage,
    requests_accounted,
    thread_bound,
)
from bench.stress.config import CI
from bench.stress.load import Sample
from bench.stress.run import Background, Observed, ProcSample, Snapshot
from examples.walkthrough import KEYED, circuit
from patchboard import Status

pytestmark = pytest.mark.stress

STATUSES = get_args(Status)


def page(outcomes: dict[str, int], cancelled: int = 0, busy: int = 0) -> dict[str, Any]:
    outcomes = {**dict.fromkeys(STATUSES, 0), **outcomes}
    counters = {
        "submitted": sum(v for k, v in outcomes.items() if k != "submitted") + cancelled,
        "completed": 0,
        "failed": 0,
        "circuit_open": 0,
        "timed_out": 0,
        "expired": 0,
        "rejected": 0,
        "cancelled": cancelled,
    }
    return {
        "outcomes": outcomes,
        "queue": {"counters": counters, "running": 0, "waiting": 0},
        "threads": {"limit": 4, "busy": busy, "waiting": 0, "abandoned_running": 0},
        "breakers": [],
    }


def observed_with(
    after: dict[str, int], quotes: int, queue_cancelled: int = 0, orders: int = 0
) -> Observed:
    observed = Observed(CI)
    observed.after = {1: Snapshot(1, page(after, queue_cancelled), quotes, orders)}
    return observed


def test_outcomes_add_up_passes_when_every_call_ended_once() -> None:
    asked = CARRIERS * 2
    check = outcomes_add_up(observed_with({"submitted": asked, "ok": asked - 1, "cancelled": 1}, 2))
    assert check.passed


def test_outcomes_add_up_fails_on_a_lost_call() -> None:
    asked = CARRIERS * 2
    check = outcomes_add_up(observed_with({"submitted": asked, "ok": asked - 1}, 2))
    assert not check.passed


def test_outcomes_add_up_fails_on_a_call_only_the_queue_counted_cancelled() -> None:
    asked = CARRIERS * 2
    lost = observed_with({"submitted": asked, "ok": asked - 1}, 2, queue_cancelled=1)
    assert not outcomes_add_up(lost).passed


def test_outcomes_add_up_counts_each_orders_calls_and_their_enqueued_outcomes() -> None:
    asked = CARRIERS * 2 + ORDER_CALLS * 3
    ended = {"ok": CARRIERS * 2 + 3 * 3, "enqueued": 2 * 3}
    check = outcomes_add_up(observed_with({"submitted": asked, **ended}, 2, orders=3))
    assert check.passed, check.figures
    ended["enqueued"] -= 1  # a background call never said it was enqueued
    check = outcomes_add_up(observed_with({"submitted": asked, **ended}, 2, orders=3))
    assert not check.passed


def background(runs: dict[int, int], **fields: Any) -> Observed:
    """Orders 1..3 committed and their receipts sent, with ``runs`` and ``fields`` as given."""
    observed = Observed(CI)
    observed.background = Background(
        **{
            "committed": [1, 2, 3],
            "created": [1, 2, 3],
            "receipts_sent": 3,
            "entries": 6,
            "refused": 2,
            "drained_in": 0.5,
            **fields,
        }
    )
    observed.background.runs.update(runs)
    return observed


def test_background_once_passes_when_each_committed_order_ran_once() -> None:
    check = background_once(background({1: 1, 2: 1, 3: 1}))
    assert check.passed, check.figures


@pytest.mark.parametrize(
    ("runs", "fields"),
    [
        pytest.param({1: 1, 2: 1}, {}, id="one lost"),
        pytest.param({1: 1, 2: 2, 3: 1}, {}, id="one run twice"),
        pytest.param({1: 1, 2: 1, 3: 1, 4: 1}, {}, id="a run for no committed order"),
        pytest.param({1: 1, 2: 1, 3: 1}, {"created": [1, 2, 3, 4]}, id="a 201 not committed"),
        pytest.param({1: 1, 2: 1, 3: 1}, {"refused": 0}, id="the outage refused nothing"),
        pytest.param({1: 1, 2: 1, 3: 1}, {"unclaimed": 1}, id="an entry left unclaimed"),
        pytest.param({1: 1, 2: 1, 3: 1}, {"receipts_sent": 2}, id="the shop's receipt lost"),
        pytest.param({}, {"committed": [], "created": []}, id="no order at all"),
    ],
)
def test_background_once_fails(runs: dict[int, int], fields: dict[str, Any]) -> None:
    assert not background_once(background(runs, **fields)).passed


def test_requests_accounted_fails_when_more_reached_the_view_than_were_cut() -> None:
    observed = observed_with({}, quotes=5)
    observed.disconnected = 1
    assert not requests_accounted(observed).passed
    observed.disconnected = 5
    assert requests_accounted(observed).passed


def test_thread_bound_fails_on_one_sample_over_the_limit() -> None:
    observed = Observed(CI)
    observed.procs = [ProcSample(0.0, 1, 1000, 10)]
    observed.pages = [Snapshot(1, page({}, busy=4), 0), Snapshot(1, page({}, busy=5), 0)]
    assert not thread_bound(observed).passed
    observed.pages.pop()
    assert thread_bound(observed).passed


def test_probes_shared_fails_when_each_process_probes_alone() -> None:
    observed = Observed(CI)
    observed.marks = {"steady": 0.0, "end": 12.0}
    observed.down_requests = {"start": 10, "end": 18}  # 8 probes in 12 s: one per 1.5 s
    assert not probes_shared(observed).passed
    observed.down_requests["end"] = 14
    assert probes_shared(observed).passed


START = datetime(2026, 1, 1, tzinfo=UTC)
OUTAGE = {"redis_stopped": 3.0, "redis_started": 5.0, "disconnects": 6.0, "end": 24.0}


def outage_with(*events: tuple[float, int, str], serving: tuple[int, ...] = (1, 2)) -> Observed:
    """
    Two shop processes (1 and 2) through the Redis outage, ``serving`` quotes
    while it lasts; ``events``: (second, pid, name).
    """
    observed = Observed(CI)
    observed.worker_pids = [1, 2]
    observed.marks = dict(OUTAGE)
    observed.wall = {name: START + timedelta(seconds=at) for name, at in OUTAGE.items()}
    observed.load.samples = [Sample(at=4.0, latency=0.1, status=200, pid=pid) for pid in serving]
    observed.events = [
        {"event": name, "pid": pid, "timestamp": (START + timedelta(seconds=at)).isoformat()}
        for at, pid, name in events
    ]
    return observed


DOWN = [(3.1, 1, "circuit_store_unavailable"), (3.2, 2, "circuit_store_unavailable")]


def test_redis_outage_counts_a_return_that_comes_after_the_next_fault_began() -> None:
    # Process 2 tried Redis again only a second after its last failure: after `disconnects`.
    late = outage_with(
        *DOWN, (5.1, 1, "circuit_store_recovered"), (6.3, 2, "circuit_store_recovered")
    )
    assert redis_outage(late).passed


def test_redis_outage_fails_when_a_process_never_returns_to_redis() -> None:
    assert not redis_outage(outage_with(*DOWN, (5.1, 1, "circuit_store_recovered"))).passed


def test_redis_outage_asks_nothing_of_a_process_that_served_no_quote_meanwhile() -> None:
    """Its keep-alive connections all on the other worker: it called no breaker."""
    alone = [(3.1, 1, "circuit_store_unavailable"), (5.1, 1, "circuit_store_recovered")]
    assert redis_outage(outage_with(*alone, serving=(1,))).passed
    assert not redis_outage(outage_with(*alone, serving=(1, 2))).passed
    assert not redis_outage(outage_with(serving=())).passed  # nobody served: nothing shown


def test_redis_outage_fails_when_a_process_flaps_back_and_forth() -> None:
    flapping = outage_with(
        *DOWN,
        (5.1, 1, "circuit_store_recovered"),
        (5.2, 2, "circuit_store_recovered"),
        (5.5, 2, "circuit_store_recovered"),
    )
    assert not redis_outage(flapping).passed


def test_redis_outage_leaves_a_later_little_outage_its_own_pair_of_events() -> None:
    later = outage_with(
        *DOWN,
        (5.1, 1, "circuit_store_recovered"),
        (5.2, 2, "circuit_store_recovered"),
        (12.0, 2, "circuit_store_unavailable"),
        (13.0, 2, "circuit_store_recovered"),
    )
    assert redis_outage(later).passed


def carriers_with(*listed: dict[str, Any]) -> Observed:
    """Every healthy carrier's circuit opened and closed; ``listed``: each process's page."""
    observed = Observed(CI)
    observed.wall = {"carriers_killed": START, "carriers_restarted": START + timedelta(seconds=2)}
    observed.events = [
        {
            "event": event,
            "breaker": circuit(name),
            "timestamp": (START + timedelta(seconds=at)).isoformat(),
        }
        for name in HEALTHY
        for event, at in (("circuit_opened", 1), ("circuit_closed", 3))
    ]
    observed.after = {
        pid: Snapshot(pid, {**page({}), "breakers": list(breakers)}, 0)
        for pid, breakers in enumerate(listed, 1)
    }
    return observed


KEYED_CLOSED = {"name": KEYED, "state": "closed"}


def test_carriers_outage_takes_a_circuit_left_off_the_page_as_closed() -> None:
    """The page lists a keyed breaker's circuits that are not closed: none, all closed."""
    assert carriers_outage(carriers_with([KEYED_CLOSED], [KEYED_CLOSED])).passed


def test_carriers_outage_fails_on_a_circuit_still_listed() -> None:
    ups = {"name": circuit(HEALTHY[0]), "state": "half_open"}
    check = carriers_outage(carriers_with([KEYED_CLOSED], [KEYED_CLOSED, ups]))
    assert not check.passed
    assert circuit(HEALTHY[0]) in check.figures


def test_carriers_outage_fails_when_a_page_does_not_list_the_keyed_breaker() -> None:
    assert not carriers_outage(carriers_with([KEYED_CLOSED], [])).passed
