"""
patchboard: an asyncio-native dispatch engine for Django signals.

The public API, re-exported here; every module behind it is an
implementation detail.
"""

from patchboard.breaker import BreakerStatistics as BreakerStatistics
from patchboard.breaker import CircuitBreaker as CircuitBreaker
from patchboard.breaker import circuit_state_changed as circuit_state_changed
from patchboard.exceptions import CircuitOpen as CircuitOpen
from patchboard.exceptions import Expired as Expired
from patchboard.exceptions import ListenerTimeout as ListenerTimeout
from patchboard.exceptions import NotSerializable as NotSerializable
from patchboard.exceptions import PatchboardError as PatchboardError
from patchboard.exceptions import Rejected as Rejected
from patchboard.exceptions import SyncCallInEventLoop as SyncCallInEventLoop
from patchboard.listeners import Listener as Listener
from patchboard.listeners import ListenerOptions as ListenerOptions
from patchboard.listeners import receiver as receiver
from patchboard.outcomes import Collected as Collected
from patchboard.outcomes import Outcome as Outcome
from patchboard.outcomes import Status as Status
from patchboard.outcomes import outcome_counts as outcome_counts
from patchboard.queue import QueueStatistics as QueueStatistics
from patchboard.queue import ShortTermQueue as ShortTermQueue
from patchboard.queue import queue_stats as queue_stats
from patchboard.signals import Signal as Signal

__all__ = [
    "BreakerStatistics",
    "CircuitBreaker",
    "CircuitOpen",
    "Collected",
    "Expired",
    "Listener",
    "ListenerOptions",
    "ListenerTimeout",
    "NotSerializable",
    "Outcome",
    "PatchboardError",
    "QueueStatistics",
    "Rejected",
    "ShortTermQueue",
    "Signal",
    "Status",
    "SyncCallInEventLoop",
    "circuit_state_changed",
    "outcome_counts",
    "queue_stats",
    "receiver",
]
