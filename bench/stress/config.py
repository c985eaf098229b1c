"""The stress run's two configurations and when its faults happen."""

from __future__ import annotations

import runpy
from dataclasses import dataclass
from typing import Any

from examples.stack import SHOP
from examples.walkthrough import BREAKER

SHOP_SETTINGS: dict[str, Any] = runpy.run_path(str(SHOP / "shop" / "settings.py"))
CARRIER_TIMEOUT: float = SHOP_SETTINGS["CARRIER_TIMEOUT"]
QUEUE: dict[str, float] = SHOP_SETTINGS["PATCHBOARD"]["SHORT_TERM_QUEUE"]
HALF_OPEN_MAX_CALLS = int(BREAKER.get("half_open_max_calls", 1))
REQUEST_BUDGET: float = SHOP_SETTINGS["QUOTES_BUDGET"]
"""The quotes page's deadline: whatever the carriers do, its dispatch ends within it."""
DEADLINE_GRACE = 0.05
"""How far past its deadline a dispatch may answer: the event loop runs the deadline's
timer late when it is busy, then the fallbacks of the calls it cut (a 5 % grace)."""


DOWN, SLOW = "fedex", "dhl"
"""The carrier that answers every quote with a 503, and the one that takes SLOW_MS."""
SLOW_MS = 800
"""Slow, yet under the carrier timeout: its calls succeed and hold their queue workers."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """One configuration: the load, and when each fault starts and ends (fractions of it)."""

    name: str
    concurrency: int
    duration: float
    max_requests: int
    shop_workers: int = 2
    disconnects: int = 20
    """Requests whose client goes away mid-request."""
    disconnect_after: tuple[float, float] = (0.1, 0.6)
    """When they go away: spread evenly over this range, after the load, while the slow
    carrier holds each view for 0.8 s (under the load most calls are shed at once)."""
    warm_up: float = 0.15
    redis_down: tuple[float, float] = (0.15, 0.25)
    carriers_down: tuple[float, float] = (0.34, 0.40)
    broker_down: tuple[float, float] = (0.26, 0.36)
    """The background listeners' broker (RQ's Redis), stopped and started again."""
    order_every: float = 0.4
    """Seconds between two orders (``POST /orders``) during the load: each commits and sends
    ``order_completed``, whose two background listeners go through the outbox to RQ. A few
    a second: each is a work horse forked by the rqworker, on the cores the shop shares."""
    steady_from: float = 0.5
    """From here to the end no fault happens: the probes are counted and RSS must stay flat."""

    def at(self, fraction: float) -> float:
        return fraction * self.duration


FULL = Config(name="full", concurrency=200, duration=60.0, max_requests=200_000)
CI = Config(
    name="ci",
    concurrency=50,
    duration=24.0,
    max_requests=50_000,
    # Seconds matter more than fractions here: each carrier's circuit needs three failures
    # while the carriers are down, and fewer calls run in a short, shed run.
    redis_down=(0.12, 0.22),
    carriers_down=(0.30, 0.46),
)
