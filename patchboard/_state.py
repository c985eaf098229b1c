"""
Everything patchboard keeps per process, in one object: :data:`state`.

Two kinds of state live here.

*Runtime state* is what a process accumulates while it serves: the parsed
``PATCHBOARD`` setting, the outcome counters, the short-term queue, the
listener threads' bound, the circuit breakers and their Redis links, the log
limiter and the dispatch observers. :meth:`State.reset` starts all of it
afresh (``patchboard.testing.reset()`` calls it between tests), and
:meth:`State.settings_changed` drops what was built from the settings.

*Connection state* mirrors what is connected to signals right now: the
wrappers of listeners connected with options (kept alive by their functions),
the background listeners a worker may run, the names of signals. Connecting
and disconnecting change it; ``reset()`` leaves it alone, because clearing it
would silently disconnect the listeners a project connected in
``AppConfig.ready()``.

This module sits at the bottom of the package: at run time it imports
nothing of patchboard, and holds the upper layers' objects (the ledger,
queues, breakers, links) calling nothing of them but what reset needs
(``_forget()``, ``close()``, ``reset()``). Their types are imported for the
type checker only.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal

    from patchboard._background._registry import Registration
    from patchboard._breaker._circuit import CircuitBreaker
    from patchboard._breaker._redis import RedisLink
    from patchboard._config import Settings
    from patchboard._ledger import Ledger
    from patchboard._listeners import Listener
    from patchboard._log import Limiter
    from patchboard._metrics import Metrics
    from patchboard._outcomes import Outcome
    from patchboard._queue import ShortTermQueue
    from patchboard._retry import RetryBudget
    from patchboard._threads import ListenerThreads


class State:
    """The process's patchboard state; see the module docstring."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        """Guards the lazily built members (settings, queue, threads, breakers, links)."""

        # -- runtime state (reset) --------------------------------------------------
        self.settings: Settings | None = None
        """The parsed ``PATCHBOARD`` setting, or None until first read."""
        self.ledger: Ledger | None = None
        """The outcome ledger (``_ledger``): the counts, zeroed here, and their observers."""
        self.logger: tuple[bool, Any] | None = None
        """The ``patchboard`` logger, chosen on first use (see ``_log``): (whether
        structlog was configured then, the logger: structlog's or logging's)."""
        self.queue: ShortTermQueue | None = None
        """The process's ``ShortTermQueue``, built on first use."""
        self.threads: ListenerThreads | None = None
        """The process's bounded listener threads (``_threads``), built on first use."""
        self.breakers: dict[str, CircuitBreaker] = {}
        """Circuit breakers by name."""
        self.declared: set[str] = set()
        """Names of the breakers built from ``PATCHBOARD["BREAKERS"]``."""
        self.redis_links: dict[str, RedisLink] = {}
        """The Redis clients of each store URL."""
        self.observers: list[Callable[[DjangoSignal, Any, list[Outcome]], None]] = []
        """Called with (signal, sender, outcomes) after every dispatch (``patchboard.testing``)."""
        self.limiter: Limiter | None = None
        """The rate limiter of per-item log events (see ``_log``)."""
        self.metrics: Metrics | None = None
        """The Prometheus metrics, while ``PATCHBOARD["METRICS"]`` has them on (``_metrics``)."""
        self.retry_budgets: weakref.WeakKeyDictionary[object, RetryBudget] = (
            weakref.WeakKeyDictionary()
        )
        """Each signal's retry budget and hedging counts (``_retry``), built on first use."""

        # -- hooks (kept across resets: plugged in at import) -------------------------
        self.on_settings: list[Callable[[Settings], None]] = []
        """Called with the settings each time ``PATCHBOARD`` is parsed (``_config.get_settings``):
        the tracing seam chooses its instrument there."""
        self.retry_waits = True
        """Whether retries wait between attempts (``patchboard.testing.set_retry_waits``: a
        test suite's switch, as stamina's ``set_testing``, kept across resets)."""

        # -- connection state (kept by reset) -----------------------------------------
        self.signal_names: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
        """The names logs and task payloads use for signals."""
        self.plain_listeners: weakref.WeakKeyDictionary[Callable[..., Any], Listener] = (
            weakref.WeakKeyDictionary()
        )
        """Receivers connected without options, wrapped once with the default options."""
        self.keepalive: dict[
            int, tuple[weakref.finalize[Any, Any], dict[tuple[int, Hashable], Listener]]
        ] = {}
        """Weakly connected listeners, kept as long as their function (or its bound
        instance), by its id: (the finalizer that drops the entry, the listeners)."""
        self.named_breakers: weakref.WeakSet[Listener] = weakref.WeakSet()
        """Listeners that name their breaker (``patchboard.E011`` checks the names)."""
        self.background: dict[str, list[Registration]] = {}
        """Background listeners connected in this process, by dotted path."""
        self.signal_keys: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
        """How task payloads name signals that have no name (found once per signal)."""

    def reset(self) -> None:
        """
        Start the runtime state afresh: forget every circuit breaker (shared
        Redis state is left alone), close the Redis clients, drop the
        short-term queue and the parsed settings, zero the counters, choose
        the logger again, remove the observers and turn the metrics off.
        """
        with self.lock:
            breakers = list(self.breakers.values())
            links = list(self.redis_links.values())
            limiter = self.limiter
            metrics = self.metrics
            self.metrics = None
            self.breakers.clear()
            self.declared.clear()
            self.redis_links.clear()
            self.settings = None
            self.queue = None
            self.threads = None
            self.logger = None
            self.limiter = None
            self.observers.clear()
            self.retry_budgets.clear()
            if self.ledger is not None:
                self.ledger.reset()
        for breaker in breakers:
            breaker._forget()
        for link in links:
            link.close()
        if limiter is not None:
            limiter.close()  # its timer would log a previous test's drops into the next
        if metrics is not None:
            metrics.close()  # its hooks are gone with the observers: unregister the rest

    def settings_changed(self) -> None:
        """``PATCHBOARD`` changed: drop what was built from it (calls in flight finish)."""
        with self.lock:
            self.settings = None
            self.queue = None
            self.threads = None
            for name in self.declared:
                self.breakers.pop(name, None)
            self.declared.clear()


state = State()
"""The one instance."""


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting == "PATCHBOARD":
        state.settings_changed()


setting_changed.connect(_on_setting_changed, dispatch_uid="patchboard.state.settings_changed")
