"""
Prometheus metrics (``PATCHBOARD["METRICS"]``, the ``prometheus`` extra).

Imported only when the setting turns metrics on (``patchboard.apps`` does it
at start-up): with them off, nothing of ``prometheus_client`` is imported
and the dispatch path is untouched.

Where each figure comes from, so that nothing new runs on the hot path:

- Listener calls and their duration: one :class:`~patchboard._ledger.Ended`
  per call that ends, from ``ledger.observe`` (the ledger's observers).
- A dispatch's duration: the dispatch observers (``state.observers``, as
  ``patchboard.testing.capture_dispatches`` uses), as the longest of its calls.
- The queue wait: ``ShortTermQueue.wait_observer``, set while metrics are on.
- Breaker transitions: a receiver of ``circuit_state_changed``.
- The gauges (queue, listener threads, breaker states): read from the
  statistics every ``INTERVAL`` seconds by a daemon thread of each process.

In prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), a
collector runs only in the process that answers the scrape, so every value
is written as it changes (or as it is read, for the gauges), by the process
it belongs to, into its files; the gauges say how their processes add up
(``multiprocess_mode``).

Labels are bounded: a signal's name, a listener's dotted path, a status, a
breaker's name and state; never a sender or a kwarg's value.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
from typing import Any, Final, TypedDict

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from patchboard._breaker import CircuitBreaker, circuit_state_changed
from patchboard._breaker._machine import CircuitState
from patchboard._config import MetricsSettings, get_settings
from patchboard._ledger import Ended, ledger
from patchboard._log import signal_label
from patchboard._outcomes import Outcome
from patchboard._queue import ShortTermQueue
from patchboard._state import state

STATES: Final[tuple[CircuitState, ...]] = ("closed", "open", "half_open")

_UID: Final = "patchboard.metrics.transitions"


class Metrics:
    """
    Every patchboard metric of one registry, and the hooks that feed them.

    Built from a :class:`MetricsSettings` into ``registry`` (prometheus_client's
    default ``REGISTRY`` unless a test hands its own); :meth:`install` starts
    feeding them, :meth:`close` stops and unregisters them.
    """

    def __init__(
        self, config: MetricsSettings, registry: CollectorRegistry | None = REGISTRY
    ) -> None:
        self.config = config
        self.registry = registry
        ns, buckets = config.namespace, config.buckets
        common: dict[str, Any] = {"namespace": ns, "registry": registry}
        self.calls = Counter(
            "listener_calls",
            "Listener calls that ended, by signal, listener and status.",
            ["signal", "listener", "status"],
            **common,
        )
        self.call_duration = Histogram(
            "listener_call_duration_seconds",
            "Seconds from a dispatch reaching a listener call to its end (queue wait included).",
            ["signal", "listener"],
            buckets=buckets,
            **common,
        )
        self.dispatch_duration = Histogram(
            "dispatch_duration_seconds",
            "The longest listener call of each dispatch, by signal.",
            ["signal"],
            buckets=buckets,
            **common,
        )
        self.queue_wait = Histogram(
            "queue_wait_seconds",
            "Seconds a call waited in the short-term queue's line before a worker took it.",
            buckets=buckets,
            **common,
        )
        self.queue_workers = Gauge(
            "queue_workers",
            "Workers of the short-term queue.",
            multiprocess_mode="livesum",
            **common,
        )
        self.queue_running = Gauge(
            "queue_running", "Queued calls running.", multiprocess_mode="livesum", **common
        )
        self.queue_waiting = Gauge(
            "queue_waiting", "Calls waiting in line.", multiprocess_mode="livesum", **common
        )
        self.queue_oldest_wait = Gauge(
            "queue_oldest_wait_seconds",
            "How long the head of the line has waited.",
            multiprocess_mode="livemax",
            **common,
        )
        self.threads_busy = Gauge(
            "listener_threads_busy",
            "Listener threads running a call, abandoned ones included.",
            multiprocess_mode="livesum",
            **common,
        )
        self.threads_abandoned = Gauge(
            "listener_threads_abandoned",
            "Listener threads still running a call their caller abandoned.",
            multiprocess_mode="livesum",
            **common,
        )
        self.breaker_state = Gauge(
            "breaker_state",
            "1 for a circuit breaker's current state (closed, open, half_open), else 0.",
            ["breaker", "state"],
            multiprocess_mode="livesum",
            **common,
        )
        self.breaker_transitions = Counter(
            "breaker_transitions",
            "Circuit breaker state changes seen by this process.",
            ["breaker", "from_state", "to_state"],
            **common,
        )
        self._collectors = (
            self.calls,
            self.call_duration,
            self.dispatch_duration,
            self.queue_wait,
            self.queue_workers,
            self.queue_running,
            self.queue_waiting,
            self.queue_oldest_wait,
            self.threads_busy,
            self.threads_abandoned,
            self.breaker_state,
            self.breaker_transitions,
        )
        self._children: dict[tuple[Any, str, str], tuple[Any, Any]] = {}
        """The counter's and the histogram's children of each (signal, listener, status):
        as many as the labels themselves, which prometheus_client keeps anyway."""
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Metrics {self.config.namespace}_*, {'on' if self._sampler else 'off'}>"

    # -- feeding -----------------------------------------------------------------------

    def install(self) -> None:
        """Feed the metrics from now on, and read the gauges every ``INTERVAL`` seconds."""
        ledger.observe(self.ended)
        state.observers.append(self.dispatched)
        ShortTermQueue.wait_observer = self.queue_wait.observe
        circuit_state_changed.connect(self.transition, weak=False, dispatch_uid=_UID)
        self.sample()
        self._start_sampler()

    def close(self) -> None:
        """Stop feeding the metrics and unregister them (``state.reset()`` calls it)."""
        self._stop.set()
        sampler = self._sampler
        if sampler is not None and sampler is not threading.current_thread():
            sampler.join(timeout=5)  # it wakes at once; a reading under way ends first
        ledger.unobserve(self.ended)
        if self.dispatched in state.observers:
            state.observers.remove(self.dispatched)
        if ShortTermQueue.wait_observer == self.queue_wait.observe:
            ShortTermQueue.wait_observer = None
        circuit_state_changed.disconnect(dispatch_uid=_UID)
        if self.registry is not None:
            for collector in self._collectors:
                self.registry.unregister(collector)

    def ended(self, ended: Ended) -> None:
        """A listener call ended (a ledger observer)."""
        key = (ended.signal, ended.listener, ended.status)
        children = self._children.get(key)
        if children is None:
            # Found once per (signal, listener, status): a signal's label and
            # prometheus_client's ``labels()`` (a lock, a dict) cost more than the call.
            signal = signal_label(ended.signal)
            children = self._children[key] = (
                self.calls.labels(signal, ended.listener, ended.status),
                self.call_duration.labels(signal, ended.listener),
            )
        count, duration = children
        count.inc()
        if ended.elapsed is not None:
            duration.observe(ended.elapsed)

    def dispatched(self, signal: Any, sender: Any, outcomes: list[Outcome]) -> None:
        """A dispatch returned (a dispatch observer)."""
        if outcomes:
            longest = max(outcome.elapsed for outcome in outcomes)
            self.dispatch_duration.labels(signal_label(signal)).observe(longest)

    def transition(
        self,
        sender: Any,
        *,
        breaker: CircuitBreaker,
        old_state: CircuitState,
        new_state: CircuitState,
        **kwargs: Any,
    ) -> None:
        """A ``circuit_state_changed`` receiver: count it, and show the new state at once."""
        self.breaker_transitions.labels(breaker.name, old_state, new_state).inc()
        self._show_state(breaker.name, new_state)

    def sample(self) -> None:
        """
        Read the queue, the listener threads and the breakers into the gauges.
        Reads what exists: nothing is built for it. A process that has not
        built its queue yet (no call queued, no status page served) shows an
        idle queue with the pool it will start with, ``MIN_WORKERS``: summed
        over the fleet, the workers gauge then counts every process's pool,
        not only those that happened to queue a call.

        Raises:
            SettingError: if ``PATCHBOARD`` is invalid (read only while no queue is built).
        """
        queue = state.queue
        if queue is not None:
            stats = queue.statistics()
            self.queue_workers.set(stats.workers)
            self.queue_running.set(stats.running)
            self.queue_waiting.set(stats.waiting)
            self.queue_oldest_wait.set(stats.oldest_wait)
        else:
            self.queue_workers.set(get_settings().short_term_queue.min_workers)
        threads = state.threads
        if threads is not None:
            thread_stats = threads.statistics()
            self.threads_busy.set(thread_stats.busy)
            self.threads_abandoned.set(thread_stats.abandoned_running)
        for name, breaker in list(state.breakers.items()):
            self._show_state(name, breaker.state)

    def latencies(self) -> list[Latency]:
        """
        Each listener's calls in this process and their p50 and p99 (seconds),
        from its call-duration histogram as Prometheus's ``histogram_quantile``
        would estimate them (see :func:`quantile`); by signal, then listener.
        """
        buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for family in self.call_duration.collect():
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    labels = sample.labels
                    found = buckets.setdefault((labels["signal"], labels["listener"]), [])
                    found.append((float(labels["le"]), sample.value))
        found_latencies: list[Latency] = []
        for (signal, listener), counts in sorted(buckets.items()):
            counts.sort()
            calls = int(counts[-1][1])  # the +Inf bucket counts them all
            if calls:
                found_latencies.append(
                    {
                        "signal": signal,
                        "listener": listener,
                        "calls": calls,
                        "p50_s": quantile(0.5, counts),
                        "p99_s": quantile(0.99, counts),
                    }
                )
        return found_latencies

    def _show_state(self, name: str, current: CircuitState) -> None:
        for each in STATES:
            self.breaker_state.labels(name, each).set(1 if each == current else 0)

    # -- the sampler -------------------------------------------------------------------

    def _start_sampler(self) -> None:
        self._stop = threading.Event()
        thread = threading.Thread(
            target=self._sample_until_stopped,
            args=(self._stop,),
            name="patchboard-metrics",
            daemon=True,  # a process never waits for its metrics to exit
        )
        self._sampler = thread
        thread.start()

    def _sample_until_stopped(self, stop: threading.Event) -> None:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        while not stop.wait(self.config.interval):
            try:
                self.sample()
                if directory:
                    forget_the_dead(directory)
            except Exception:
                # A reading that fails (a breaker's store mid-change) is retried next time:
                # the sampler never dies while the process serves.
                continue

    def restart_after_fork(self) -> None:
        """In a forked child (gunicorn's workers): the parent's sampler thread is not there."""
        if not self._stop.is_set():
            self._start_sampler()


class Latency(TypedDict):
    """One listener's calls and latency quantiles, in seconds (see :meth:`Metrics.latencies`)."""

    signal: str
    listener: str
    calls: int
    p50_s: float
    p99_s: float


def quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """
    The ``q`` quantile of a histogram's cumulative ``buckets`` (upper bound,
    count; increasing, ``+Inf`` last), as Prometheus's ``histogram_quantile``
    estimates it: linearly within the bucket its rank falls in, from the
    bucket below's bound (0 for the first); a rank in the ``+Inf`` bucket is
    given the highest finite bound.
    """
    rank = q * buckets[-1][1]
    below_bound, below_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return below_bound
            if count == below_count:
                return bound
            return below_bound + (bound - below_bound) * (rank - below_count) / (
                count - below_count
            )
        below_bound, below_count = bound, count
    return below_bound


def install(config: MetricsSettings) -> Metrics:
    """
    Turn the process's metrics on, into prometheus_client's default registry
    (once: a second call returns the metrics already installed). In
    multiprocess mode, the process's live gauges leave the directory when it
    exits (see :func:`_leave_at_exit`).
    """
    with state.lock:
        if state.metrics is None:
            metrics = Metrics(config)
            metrics.install()
            state.metrics = metrics
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                atexit.register(_leave_at_exit)
        return state.metrics


def _leave_at_exit() -> None:
    """
    At exit, in multiprocess mode: this process's live gauges (``livesum``,
    ``livemax``) are removed from the directory, as gunicorn's ``child_exit``
    hook would, so that a process that ended (a ``manage.py migrate`` run
    with the server's environment, a worker uvicorn replaced) no longer adds
    its queue pool or its view of a breaker to the fleet's. Its counters and
    histograms stay: they still count. A process that cannot (killed, or
    ended by a signal) is swept by the others (:func:`forget_the_dead`).
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def forget_the_dead(directory: str) -> list[int]:
    """
    Remove the live gauges of every process that no longer exists from the
    multiprocess ``directory``, as gunicorn's ``child_exit`` hook would; the
    pids removed. Each live process sweeps at each sampling: a worker that
    could not remove its own (killed outright, or a uvicorn worker, which
    re-raises SIGTERM after its graceful shutdown, so ``atexit`` never runs)
    stops adding its queue pool or its view of a breaker to the fleet's.
    """
    from prometheus_client import multiprocess

    pids = set()
    for name in os.listdir(directory):
        if name.startswith("gauge_live") and name.endswith(".db"):
            tail = name.removesuffix(".db").rpartition("_")[2]
            if tail.isdigit():
                pids.add(int(tail))
    gone = sorted(pid for pid in pids if not _alive(pid))
    for pid in gone:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def _after_fork() -> None:
    metrics = state.metrics
    if metrics is not None:
        metrics.restart_after_fork()


os.register_at_fork(after_in_child=_after_fork)
