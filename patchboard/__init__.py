"""
patchboard: an asyncio-native dispatch engine for Django signals.

The public API, re-exported here (with ``patchboard.testing`` for test
suites); every other module is an implementation detail.
"""

import patchboard._background._feature  # plugs background listeners into the listener call
import patchboard._tracing._plug  # noqa: F401  (plugs tracing into the instrument seam)
from patchboard._breaker import BreakerStatistics as BreakerStatistics
from patchboard._breaker import CircuitBreaker as CircuitBreaker
from patchboard._breaker import circuit_state_changed as circuit_state_changed
from patchboard._breaker import get_breaker as get_breaker
from patchboard._breaker._machine import CircuitState as CircuitState
from patchboard._config import BreakerConfig as BreakerConfig
from patchboard._config import BreakerOptions as BreakerOptions
from patchboard._config import Criticality as Criticality
from patchboard._config import ExcludeRule as ExcludeRule
from patchboard._config import Guard as Guard
from patchboard._config import KeyFunction as KeyFunction
from patchboard._config import ListenerOptions as ListenerOptions
from patchboard._config import Missing as Missing
from patchboard._config import Mode as Mode
from patchboard._config import OnError as OnError
from patchboard._config import QueueSettings as QueueSettings
from patchboard._config import Retry as Retry
from patchboard._config import TripRule as TripRule
from patchboard._config import WindowType as WindowType
from patchboard._dispatch import QueueChoice as QueueChoice
from patchboard._exceptions import CircuitOpen as CircuitOpen
from patchboard._exceptions import Expired as Expired
from patchboard._exceptions import ListenerErrors as ListenerErrors
from patchboard._exceptions import ListenerTimeout as ListenerTimeout
from patchboard._exceptions import NotSerializable as NotSerializable
from patchboard._exceptions import PatchboardError as PatchboardError
from patchboard._exceptions import Rejected as Rejected
from patchboard._exceptions import SyncCallInEventLoop as SyncCallInEventLoop
from patchboard._ledger import outcome_counts as outcome_counts
from patchboard._listeners import Listener as Listener
from patchboard._listeners import receiver as receiver
from patchboard._outcomes import Collected as Collected
from patchboard._outcomes import Outcome as Outcome
from patchboard._outcomes import Status as Status
from patchboard._queue import QueueStatistics as QueueStatistics
from patchboard._queue import ShortTermQueue as ShortTermQueue
from patchboard._queue import queue_stats as queue_stats
from patchboard._retry import RetryStatistics as RetryStatistics
from patchboard._retry import retry_stats as retry_stats
from patchboard._signals import Signal as Signal
from patchboard._signals import Unset as Unset
from patchboard._stream import Stream as Stream
from patchboard._threads import ThreadStatistics as ThreadStatistics
from patchboard._threads import thread_stats as thread_stats

__all__ = [
    "BreakerConfig",
    "BreakerOptions",
    "BreakerStatistics",
    "CircuitBreaker",
    "CircuitOpen",
    "CircuitState",
    "Collected",
    "Criticality",
    "ExcludeRule",
    "Expired",
    "Guard",
    "KeyFunction",
    "Listener",
    "ListenerErrors",
    "ListenerOptions",
    "ListenerTimeout",
    "Missing",
    "Mode",
    "NotSerializable",
    "OnError",
    "Outcome",
    "PatchboardError",
    "QueueChoice",
    "QueueSettings",
    "QueueStatistics",
    "Rejected",
    "Retry",
    "RetryStatistics",
    "ShortTermQueue",
    "Signal",
    "Status",
    "Stream",
    "SyncCallInEventLoop",
    "ThreadStatistics",
    "TripRule",
    "Unset",
    "WindowType",
    "circuit_state_changed",
    "get_breaker",
    "outcome_counts",
    "queue_stats",
    "receiver",
    "retry_stats",
    "thread_stats",
]
