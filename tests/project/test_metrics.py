"""
Prometheus metrics (``PATCHBOARD["METRICS"]``): the setting, and each metric's
name, labels and values, read back through prometheus_client's own registry.

Internals on purpose: ``_metrics.Metrics`` built into a fresh
``CollectorRegistry`` per test, and the parser ``_config.parse``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from prometheus_client import CollectorRegistry, generate_latest

from patchboard import CircuitBreaker, Signal
from patchboard._config import DEFAULT_BUCKETS, MetricsSettings, parse
from patchboard._ledger import ledger
from patchboard._metrics import Metrics, forget_the_dead, quantile
from patchboard._queue import ShortTermQueue
from patchboard._state import state
from patchboard.testing import reset


class Boom(Exception):
    pass


def sync_ok(sender: Any, **kwargs: Any) -> int:
    return 1


async def async_fails(sender: Any, **kwargs: Any) -> None:
    raise Boom


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Iterator[Metrics]:
    metrics = Metrics(MetricsSettings(enabled=True), registry)
    metrics.install()
    yield metrics
    metrics.close()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- the setting ---------------------------------------------------------------------------


def test_metrics_are_off_by_default() -> None:
    settings, errors = parse({})
    assert errors == []
    assert settings.metrics == MetricsSettings(enabled=False)


@pytest.mark.parametrize(
    ("raw", "enabled"),
    [(True, True), (False, False), ({}, True), ({"ENABLED": False}, False)],
)
def test_true_or_a_dict_turns_metrics_on(raw: object, enabled: bool) -> None:
    settings, errors = parse({"METRICS": raw})
    assert errors == []
    assert settings.metrics.enabled is enabled
    assert settings.metrics.namespace == "patchboard"
    assert settings.metrics.buckets == DEFAULT_BUCKETS


def test_a_dict_sets_namespace_buckets_and_interval() -> None:
    settings, errors = parse(
        {"METRICS": {"NAMESPACE": "shop", "BUCKETS": [0.1, 1, 5], "INTERVAL": 0.5}}
    )
    assert errors == []
    assert settings.metrics == MetricsSettings(
        enabled=True, namespace="shop", buckets=(0.1, 1.0, 5.0), interval=0.5
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"NAMESPACE": "my-site"}, 'PATCHBOARD["METRICS.NAMESPACE"]: NAMESPACE must be a metric'),
        ({"NAMESPACE": "9lives"}, 'PATCHBOARD["METRICS.NAMESPACE"]: NAMESPACE must be a metric'),
        ({"BUCKETS": [1, 0.5]}, 'PATCHBOARD["METRICS.BUCKETS"]: BUCKETS must be in increasing'),
        ({"BUCKETS": []}, 'PATCHBOARD["METRICS.BUCKETS"]: BUCKETS must be a non-empty list'),
        (
            {"BUCKETS": [0.1, float("inf")]},
            'PATCHBOARD["METRICS.BUCKETS"]: BUCKETS must be a finite',
        ),
        ({"INTERVAL": 0}, 'PATCHBOARD["METRICS.INTERVAL"]: INTERVAL must be a finite number'),
        ({"ENABLED": "yes"}, 'PATCHBOARD["METRICS.ENABLED"]: ENABLED must be a bool'),
        ({"NAMSPACE": "x"}, 'PATCHBOARD["METRICS.NAMSPACE"]: unknown setting; known: BUCKETS'),
        ("on", 'PATCHBOARD["METRICS"]: must be a dict'),
    ],
)
def test_a_bad_value_names_its_key(raw: object, message: str) -> None:
    _, errors = parse({"METRICS": raw})
    assert len(errors) == 1
    assert str(errors[0]).startswith(message)


# -- the metrics -----------------------------------------------------------------------


def test_listener_calls_are_counted_by_signal_listener_and_status(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    signal = Signal(name="tests.metrics.calls")
    signal.connect(sync_ok, weak=False)
    signal.connect(async_fails, weak=False, on_error="log")
    for _ in range(3):
        signal.collect(sender="shop")
    asyncio.run(signal.collect_async(sender="shop"))

    ok = {"signal": "tests.metrics.calls", "listener": f"{__name__}.sync_ok"}
    failed = {"signal": "tests.metrics.calls", "listener": f"{__name__}.async_fails"}
    assert value(registry, "patchboard_listener_calls_total", **ok, status="ok") == 4
    assert value(registry, "patchboard_listener_calls_total", **failed, status="error") == 4
    assert value(registry, "patchboard_listener_calls_total", **ok, status="error") is None
    assert value(registry, "patchboard_listener_call_duration_seconds_count", **ok) == 4
    assert value(registry, "patchboard_listener_call_duration_seconds_bucket", **ok, le="+Inf") == 4
    assert (
        value(registry, "patchboard_dispatch_duration_seconds_count", signal="tests.metrics.calls")
        == 4
    )


def test_no_label_holds_a_sender_or_a_kwarg(metrics: Metrics, registry: CollectorRegistry) -> None:
    signal = Signal(name="tests.metrics.labels")
    signal.connect(sync_ok, weak=False)
    signal.collect(sender="sender-secret", card="kwarg-secret")
    scraped = generate_latest(registry).decode()
    assert "patchboard_listener_calls_total{" in scraped
    assert "secret" not in scraped


def _quote(index: int) -> Any:
    async def quote(sender: Any, **kwargs: Any) -> int:
        return index

    quote.__qualname__ = f"quote{index}"
    return quote


def test_the_queue_wait_is_observed_once_per_queued_call(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    signal = Signal(name="tests.metrics.queue")
    for index in range(3):
        signal.connect(_quote(index), weak=False, dispatch_uid=f"quote{index}")
    asyncio.run(signal.collect_async(sender=None, queue=True))

    assert value(registry, "patchboard_queue_wait_seconds_count") == 3
    assert value(registry, "patchboard_queue_wait_seconds_bucket", le="0.005") == 3
    metrics.sample()
    assert value(registry, "patchboard_queue_workers") == 4  # MIN_WORKERS
    assert value(registry, "patchboard_queue_running") == 0
    assert value(registry, "patchboard_queue_waiting") == 0


def test_queue_workers_reads_the_configured_pool_before_the_queue_is_built(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """A process that queued nothing yet shows the pool it starts with, not 0 workers."""
    queue = {"MIN_WORKERS": 6, "MAX_WORKERS": 12}
    with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": queue}):
        metrics.sample()
        assert state.queue is None  # reading the gauges built nothing
        assert value(registry, "patchboard_queue_workers") == 6
        assert value(registry, "patchboard_queue_running") == 0
        assert value(registry, "patchboard_queue_waiting") == 0


def test_listener_threads_busy_is_read_while_a_thread_runs(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(sender: Any, **kwargs: Any) -> None:
        started.set()
        release.wait(5)

    signal = Signal(name="tests.metrics.threads")
    signal.connect(slow, weak=False, timeout=5)
    caller = threading.Thread(target=signal.collect, kwargs={"sender": None})
    caller.start()
    try:
        assert started.wait(5)
        metrics.sample()
        assert value(registry, "patchboard_listener_threads_busy") == 1
        assert value(registry, "patchboard_listener_threads_abandoned") == 0
    finally:
        release.set()
        caller.join(5)
    metrics.sample()
    assert value(registry, "patchboard_listener_threads_busy") == 0


def test_breaker_state_and_transitions(metrics: Metrics, registry: CollectorRegistry) -> None:
    breaker = CircuitBreaker("metrics-carrier")
    metrics.sample()
    assert (
        value(registry, "patchboard_breaker_state", breaker="metrics-carrier", state="closed") == 1
    )
    assert value(registry, "patchboard_breaker_state", breaker="metrics-carrier", state="open") == 0

    breaker.force_open()
    assert value(registry, "patchboard_breaker_state", breaker="metrics-carrier", state="open") == 1
    assert (
        value(registry, "patchboard_breaker_state", breaker="metrics-carrier", state="closed") == 0
    )
    breaker.force_closed()
    transitions = "patchboard_breaker_transitions_total"
    opened = {"breaker": "metrics-carrier", "from_state": "closed", "to_state": "open"}
    closed = {"breaker": "metrics-carrier", "from_state": "open", "to_state": "closed"}
    assert value(registry, transitions, **opened) == 1
    assert value(registry, transitions, **closed) == 1


def test_namespace_and_buckets_come_from_the_setting(registry: CollectorRegistry) -> None:
    metrics = Metrics(MetricsSettings(enabled=True, namespace="shop", buckets=(0.5, 2.0)), registry)
    metrics.install()
    try:
        signal = Signal(name="tests.metrics.namespace")
        signal.connect(sync_ok, weak=False)
        signal.collect(sender=None)
        labels = {"signal": "tests.metrics.namespace", "listener": f"{__name__}.sync_ok"}
        assert value(registry, "shop_listener_calls_total", **labels, status="ok") == 1
        assert (
            value(registry, "shop_listener_call_duration_seconds_bucket", **labels, le="0.5") == 1
        )
        assert value(registry, "patchboard_listener_calls_total", **labels, status="ok") is None
        scraped = generate_latest(registry).decode()
        assert 'le="2.0"' in scraped
        assert 'le="0.005"' not in scraped
    finally:
        metrics.close()


def test_reset_turns_the_metrics_off_and_unregisters_them(registry: CollectorRegistry) -> None:
    metrics = Metrics(MetricsSettings(enabled=True), registry)
    metrics.install()
    state.metrics = metrics
    reset()
    assert state.metrics is None
    assert ledger.observers == ()
    assert ShortTermQueue.wait_observer is None
    assert generate_latest(registry) == b""


_IMPORTS = """
import sys
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["patchboard"], PATCHBOARD={PATCHBOARD})
django.setup()
import patchboard
from patchboard._state import state
print("prometheus_client" in sys.modules, state.metrics is not None)
"""


@pytest.mark.parametrize(
    ("setting", "printed"),
    [({}, "False False"), ({"METRICS": False}, "False False"), ({"METRICS": True}, "True True")],
)
def test_prometheus_client_is_imported_only_when_metrics_are_on(
    setting: dict[str, Any], printed: str
) -> None:
    code = _IMPORTS.replace("{PATCHBOARD}", repr(setting))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == printed


_EXITS = """
import os, sys
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["patchboard"], PATCHBOARD={"METRICS": True})
django.setup()
from patchboard import Signal
signal = Signal(name="tests.metrics.exit")
signal.connect(lambda sender, **kwargs: 1, weak=False)
signal.collect(sender=None)
directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
print(os.getpid(), sorted(os.listdir(directory)))
"""


def test_a_process_that_exits_leaves_the_live_gauges_in_multiprocess_mode(
    tmp_path: Path,
) -> None:
    """Its queue pool no longer adds to the fleet's; its calls still count."""
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _EXITS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=environment,
    )
    pid, while_running = done.stdout.split(" ", 1)
    assert f"gauge_livesum_{pid}.db" in while_running
    assert f"counter_{pid}.db" in while_running
    after = sorted(path.name for path in tmp_path.iterdir())
    assert f"gauge_livesum_{pid}.db" not in after
    assert f"gauge_livemax_{pid}.db" not in after
    assert f"counter_{pid}.db" in after


def test_the_live_gauges_of_a_process_killed_by_a_signal_are_swept_by_the_others(
    tmp_path: Path,
) -> None:
    """
    A uvicorn worker re-raises SIGTERM after its graceful shutdown, so its
    ``atexit`` never runs: the live processes' sampler removes what it left.
    """
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    killed = _EXITS + "import signal; os.kill(os.getpid(), signal.SIGTERM)\n"
    done = subprocess.run(
        [sys.executable, "-c", killed], capture_output=True, text=True, timeout=60, env=environment
    )
    assert done.returncode == -signal.SIGTERM
    pid = int(done.stdout.split(" ", 1)[0])
    assert f"gauge_livesum_{pid}.db" in os.listdir(tmp_path)  # its atexit did not run
    assert forget_the_dead(str(tmp_path)) == [pid]
    left = os.listdir(tmp_path)
    assert f"gauge_livesum_{pid}.db" not in left
    assert f"gauge_livemax_{pid}.db" not in left
    assert f"counter_{pid}.db" in left
    assert forget_the_dead(str(tmp_path)) == []


def test_the_reader_thread_writes_the_gauges_by_itself(registry: CollectorRegistry) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(sender: Any, **kwargs: Any) -> None:
        started.set()
        release.wait(5)

    metrics = Metrics(MetricsSettings(enabled=True, interval=0.01), registry)
    metrics.install()
    signal = Signal(name="tests.metrics.reader")
    signal.connect(slow, weak=False, timeout=5)
    caller = threading.Thread(target=signal.collect, kwargs={"sender": None})
    try:
        assert value(registry, "patchboard_listener_threads_busy") == 0
        caller.start()
        assert started.wait(5)
        # Polled, no sample() here: only the reader thread can write it.
        deadline = time.monotonic() + 5
        while value(registry, "patchboard_listener_threads_busy") != 1:
            assert time.monotonic() < deadline, "the reader thread never wrote the gauge"
            time.sleep(0.01)
    finally:
        release.set()
        if caller.is_alive():
            caller.join(5)
        metrics.close()
    assert not any(thread.name == "patchboard-metrics" for thread in threading.enumerate())


INF = float("inf")


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # 50 calls up to 0.1 s, 49 more up to 0.5 s, 1 up to 1 s (cumulative counts).
        (0.5, [(0.1, 50), (0.5, 99), (1.0, 100), (INF, 100)], 0.1),
        (0.99, [(0.1, 50), (0.5, 99), (1.0, 100), (INF, 100)], 0.5),
        (0.25, [(0.1, 50), (0.5, 99), (1.0, 100), (INF, 100)], 0.05),
        (0.995, [(0.1, 50), (0.5, 99), (1.0, 100), (INF, 100)], 0.75),
        # The rank in the +Inf bucket: the highest finite bound, as Prometheus says.
        (0.99, [(0.1, 10), (1.0, 10), (INF, 20)], 1.0),
        # Empty buckets below the rank are skipped: interpolated from the last bound.
        (0.5, [(0.1, 0), (0.2, 0), (0.4, 4), (INF, 4)], 0.3),
    ],
)
def test_quantile_estimates_within_the_buckets_as_prometheus_does(
    q: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    assert quantile(q, buckets) == pytest.approx(expected)


def test_latencies_come_from_each_listeners_histogram(registry: CollectorRegistry) -> None:
    metrics = Metrics(MetricsSettings(enabled=True, buckets=(0.1, 0.5, 1.0)), registry)
    for elapsed in [0.05] * 50 + [0.3] * 49 + [0.8]:
        metrics.call_duration.labels("orders", "shop.listeners.bill").observe(elapsed)
    metrics.call_duration.labels("orders", "shop.listeners.ship").observe(2.0)
    try:
        assert metrics.latencies() == [
            {
                "signal": "orders",
                "listener": "shop.listeners.bill",
                "calls": 100,
                "p50_s": pytest.approx(0.1),
                "p99_s": pytest.approx(0.5),
            },
            {
                "signal": "orders",
                "listener": "shop.listeners.ship",
                "calls": 1,
                "p50_s": 1.0,
                "p99_s": 1.0,
            },
        ]
    finally:
        metrics.close()
