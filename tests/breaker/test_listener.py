"""
Listeners with a circuit breaker: "circuit_open" outcomes, fallbacks, what counts.

Internal on purpose: ``E011_ID``, the check's id, compared as Django's own
tests compare check messages.
"""

from __future__ import annotations

import asyncio

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from patchboard import (
    CircuitBreaker,
    CircuitOpen,
    Signal,
    get_breaker,
    receiver,
)
from patchboard._breaker._checks import E011_ID
from patchboard.testing import VirtualClock


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_open_circuit_gives_circuit_open_outcomes_with_the_fallback(kind, clock) -> None:
    quote = Signal()
    breaker = CircuitBreaker("carrier-test", failure_threshold=2, reset_timeout=30)
    calls = []

    def fallback(sender, **kwargs):
        return "cached quote"

    if kind == "async":

        async def ups(sender, **kwargs):
            calls.append(1)
            raise ConnectionError("ups down")

    else:

        def ups(sender, **kwargs):
            calls.append(1)
            raise ConnectionError("ups down")

    quote.connect(ups, breaker=breaker, on_error="log", default=None, fallback=fallback)

    first = await quote.collect_async(sender=None)
    second = await quote.collect_async(sender=None)
    third = await quote.collect_async(sender=None)

    assert [first[0].status, second[0].status] == ["error", "error"]
    assert third[0].status == "circuit_open"
    assert third[0].value == "cached quote"
    assert isinstance(third[0].error, CircuitOpen)
    assert third[0].error.breaker == "carrier-test"
    assert third[0].error.retry_at is not None
    assert len(calls) == 2, "the guarded listener is not called while the circuit is open"
    assert breaker.state == "open"


async def test_probe_after_reset_timeout_closes_the_circuit_on_success(clock) -> None:
    quote = Signal()
    breaker = CircuitBreaker("probe-test", failure_threshold=1, reset_timeout=10)
    healthy = False

    @receiver(quote, breaker=breaker, on_error="log")
    async def ups(sender, **kwargs):
        if not healthy:
            raise ConnectionError("down")
        return "quote"

    await quote.collect_async(sender=None)
    assert breaker.state == "open"
    assert (await quote.collect_async(sender=None))[0].status == "circuit_open"

    clock.advance(10)
    healthy = True
    collected = await quote.collect_async(sender=None)

    assert collected.values() == ["quote"]
    assert breaker.state == "closed"


async def test_timeouts_count_as_failures(clock) -> None:
    quote = Signal()
    breaker = CircuitBreaker("slow-test", failure_threshold=2, reset_timeout=30)

    @receiver(quote, breaker=breaker, timeout=0.01, on_error="log")
    async def slow(sender, **kwargs):
        await asyncio.sleep(5)

    statuses = [(await quote.collect_async(sender=None))[0].status for _ in range(3)]

    assert statuses == ["timeout", "timeout", "circuit_open"]


async def test_async_fallback_and_raise_policy_without_fallback(clock) -> None:
    quote = Signal()
    breaker = CircuitBreaker("policy-test", failure_threshold=1, reset_timeout=30)
    breaker.force_open()

    async def fallback(sender, **kwargs):
        return "from fallback"

    @receiver(quote, breaker=breaker, fallback=fallback)
    async def with_fallback(sender, **kwargs):
        return "live"

    assert (await quote.collect_async(sender=None)).values() == ["from fallback"]
    quote.disconnect(with_fallback)

    @receiver(quote, breaker=breaker, on_error="raise")
    async def strict(sender, **kwargs):
        return "live"

    with pytest.raises(CircuitOpen):
        await quote.collect_async(sender=None)


@override_settings(PATCHBOARD={"BREAKERS": {"carrier-ups": {"failure_threshold": 1}}})
def test_a_listener_refers_to_a_declared_breaker_by_name() -> None:
    quote = Signal()

    @receiver(quote, breaker="carrier-ups", on_error="log", default="n/a")
    def ups(sender, **kwargs):
        raise ConnectionError("down")

    assert [o.status for o in quote.send_sync(sender=None)] == ["error"]
    assert [o.status for o in quote.send_sync(sender=None)] == ["circuit_open"]
    assert get_breaker("carrier-ups").state == "open"


def test_unknown_breaker_name_is_a_check_error_and_a_loud_failure() -> None:
    quote = Signal()

    @receiver(quote, breaker="nobody-declared-me", on_error="log")
    def ups(sender, **kwargs):
        return 1

    errors = [m for m in run_checks() if m.id == E011_ID and "nobody-declared-me" in m.msg]
    assert len(errors) == 1
    assert "nobody-declared-me" in errors[0].msg
    assert errors[0].obj.endswith("ups")
    with pytest.raises(ImproperlyConfigured, match="no circuit breaker named 'nobody-declared-me'"):
        quote.send_sync(sender=None)


def carrier_of(sender, *, carrier, **kwargs) -> str:
    return carrier


KEYED = {"key": f"{__name__}.carrier_of", "store": "memory"}


@override_settings(PATCHBOARD={"BREAKERS": {"declared-keyed": KEYED}})
def test_a_listener_may_name_one_circuit_of_a_keyed_breaker() -> None:
    """No E011 for ``"<keyed>[<key>]"``, declared or created; the call goes through that circuit."""
    quote = Signal()
    CircuitBreaker("created-keyed", store="memory", key=carrier_of)

    @receiver(quote, breaker="declared-keyed[ups]", on_error="log")
    def ups(sender, **kwargs):
        raise ConnectionError("down")

    @receiver(quote, breaker="created-keyed[dhl]")
    def dhl(sender, **kwargs):
        return "dhl"

    @receiver(quote, breaker="not-keyed-at-all[dhl]")
    def typo(sender, **kwargs):
        return "never"

    errors = [m for m in run_checks() if m.id == E011_ID and "-keyed" in m.msg]
    assert [m.obj.rpartition(".")[2] for m in errors] == ["typo"]
    assert "'not-keyed-at-all[dhl]'" in errors[0].msg
    quote.disconnect(typo)
    assert [o.status for o in quote.send_sync(sender=None)] == ["error", "ok"]
    assert get_breaker("declared-keyed[ups]").statistics().failures_total == 1
    assert get_breaker("created-keyed").circuits().keys() == {"dhl"}


async def test_a_queued_call_is_refused_before_it_takes_a_place_only_while_its_circuit_is_open(
    full_queue,
) -> None:
    """
    The short-term queue asks a call's breaker before the call takes a place
    in line. With the line full, a call whose circuit is open is answered
    "circuit_open" (not "rejected"); a closed or half-open circuit answers
    nothing (taking no probe): the call needs a place, and is "rejected".
    """
    # The breaker's own clock, not installed: the held worker's time limit runs on real time.
    clock = VirtualClock()
    breaker = CircuitBreaker("carrier-test", failure_threshold=1, reset_timeout=30, clock=clock)
    quote = Signal()

    def carrier(sender, **kwargs):
        raise RuntimeError("carrier down")

    quote.connect(carrier, weak=False, breaker=breaker, on_error="log")

    async def queued():
        [outcome] = await quote.collect_async(sender=None, queue=True)
        return outcome

    assert (await queued()).status == "rejected"  # closed
    with pytest.raises(RuntimeError), breaker:
        carrier(None)
    refused = await queued()
    assert refused.status == "circuit_open"
    assert isinstance(refused.error, CircuitOpen)
    assert (refused.error.breaker, refused.error.retry_at) == ("carrier-test", breaker.retry_at)
    assert breaker.statistics().rejected == 1
    clock.advance(30)
    assert (await queued()).status == "rejected"  # half-open: a probe may go through
    assert breaker.statistics().probes == 0
    breaker.force_open()
    forced = await queued()
    assert forced.status == "circuit_open"
    assert isinstance(forced.error, CircuitOpen) and forced.error.retry_at is None
