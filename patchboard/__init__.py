"""
patchboard: an asyncio-native dispatch engine for Django signals.

The public API, re-exported here (with ``patchboard.testing`` for test
suites); every other module is an implementation detail.
"""

import patchboard.background  # noqa: F401  (plugs background listeners into the listener call)
from patchboard._config import BreakerConfig as BreakerConfig
from patchboard._config import ListenerOptions as ListenerOptions
from patchboard._exceptions import CircuitOpen as CircuitOpen
from patchboard._exceptions import Expired as Expired
from patchboard._exceptions import ListenerTimeout as ListenerTimeout
from patchboard._exceptions import NotSerializable as NotSerializable
from patchboard._exceptions import PatchboardError as PatchboardError
from patchboard._exceptions import Rejected as Rejected
from patchboard._exceptions import SyncCallInEventLoop as SyncCallInEventLoop
from patchboard._listeners import Listener as Listener
from patchboard._listeners import receiver as receiver
from patchboard._outcomes import Collected as Collected
from patchboard._outcomes import Outcome as Outcome
from patchboard._outcomes import Status as Status
from patchboard._queue import QueueStatistics as QueueStatistics
from patchboard._queue import ShortTermQueue as ShortTermQueue
from patchboard._queue import queue_stats as queue_stats
from patchboard._signals import Signal as Signal
from patchboard._state import outcome_counts as outcome_counts
from patchboard._stream import Stream as Stream
from patchboard._threads import ThreadStatistics as ThreadStatistics
from patchboard._threads import thread_stats as thread_stats
from patchboard.breaker import BreakerStatistics as BreakerStatistics
from patchboard.breaker import CircuitBreaker as CircuitBreaker
from patchboard.breaker import circuit_state_changed as circuit_state_changed
from patchboard.breaker import get_breaker as get_breaker

__all__ = [
    "BreakerConfig",
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
    "Stream",
    "SyncCallInEventLoop",
    "ThreadStatistics",
    "circuit_state_changed",
    "get_breaker",
    "outcome_counts",
    "queue_stats",
    "receiver",
    "thread_stats",
]
