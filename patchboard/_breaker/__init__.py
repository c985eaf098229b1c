"""
Circuit breakers: stop calling what keeps failing, and probe it now and then.

Picture a fuse in front of a remote service. While it is *closed*, calls go
through and their failures are counted; when the count (or, with
``trip_rule="rate"``, the failure rate over the last ``window_size`` calls)
crosses the line, the circuit *opens*: every call fails at once with
:class:`~patchboard.CircuitOpen` and the guarded code is not called. After
``reset_timeout`` seconds it is *half-open*: exactly ``half_open_max_calls``
callers are let through as probes, however many arrive together (in one
process, or across many with the Redis store); ``success_threshold``
successful probes close it, a failed probe opens it again for
``backoff_factor`` times longer (up to ``max_reset_timeout``). A probe that
never reports (cancelled, or its process died) holds its slot for
``probe_timeout`` seconds at most.

What counts:

* the guarded code returns: a success;
* it raises an ``Exception`` (a ``TimeoutError``, so also
  :class:`~patchboard.ListenerTimeout`, included): a failure, and the
  exception reaches the caller unchanged;
* it raises something matching ``exclude`` (exception classes, predicates
  ``Callable[[BaseException], bool]`` or dotted paths): neither;
* a ``BaseException`` that is not an ``Exception`` (cancellation,
  ``KeyboardInterrupt``): nothing at all, and a probe slot it held is freed.

The same breaker guards async code (``async with``, ``await breaker.call()``,
an ``async def`` decorated with it) and sync code (``with``,
``breaker.call_sync()``, a decorated ``def``), from any number of tasks and
threads at once: what one entry was handed (a probe slot or not) lives on a
contextvar stack, never on the breaker.

State changes are logged (``circuit_opened``, ``circuit_half_opened``,
``circuit_closed``, with ``breaker``, ``failures`` and ``retry_at``) and sent
as :data:`circuit_state_changed`. Rejected calls are only counted (see
:meth:`CircuitBreaker.statistics`).

Breakers have names and one instance per name: :func:`get_breaker` returns it,
building it from ``PATCHBOARD["BREAKERS"][name]`` on first use.

The package: :mod:`._machine` holds the rules; :mod:`._memory` runs them in
this process and :mod:`._redis` as ``breaker.lua`` on the server (the stores
make every decision); :mod:`._circuit` classifies results, counts, logs and
signals, and answers the listener call (``resolve``, ``refusal``);
:mod:`._checks` checks the declared breakers. The package sits under the
listener call: it knows nothing of dispatch.
"""

from patchboard._breaker._circuit import BreakerStatistics as BreakerStatistics
from patchboard._breaker._circuit import CircuitBreaker as CircuitBreaker
from patchboard._breaker._circuit import all_breakers as all_breakers
from patchboard._breaker._circuit import circuit_state_changed as circuit_state_changed
from patchboard._breaker._circuit import for_call as for_call
from patchboard._breaker._circuit import get_breaker as get_breaker
from patchboard._breaker._circuit import listed_breakers as listed_breakers
from patchboard._breaker._circuit import listed_circuits as listed_circuits
from patchboard._breaker._circuit import refusal as refusal
from patchboard._breaker._circuit import resolve as resolve

__all__ = [
    "BreakerStatistics",
    "CircuitBreaker",
    "all_breakers",
    "circuit_state_changed",
    "for_call",
    "get_breaker",
    "listed_breakers",
    "listed_circuits",
    "refusal",
    "resolve",
]
