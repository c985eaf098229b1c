"""
Every listener option and every dispatch verb's argument, fed hostile values
(part of ``make stress``): each works, or is refused at connect or call time
with an error naming the option or argument (and the listener), never a
traceback from deep inside.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from hypothesis import given
from hypothesis import strategies as st

from patchboard import ListenerOptions, Signal, receiver
from tests.hostile import EXAMPLES, HOSTILE

pytestmark = pytest.mark.stress

OPTIONS = [field.name for field in dataclasses.fields(ListenerOptions)]


def target(sender: Any, **kwargs: Any) -> str:
    return "answered"


async def async_target(sender: Any, **kwargs: Any) -> str:
    return "answered"


@EXAMPLES
@given(option=st.sampled_from(OPTIONS), value=HOSTILE, is_async=st.booleans())
def test_connect_options_work_or_are_refused_naming_the_option(
    option: str, value: Any, is_async: bool
) -> None:
    signal = Signal(name="tests.hostile.connect")
    func = async_target if is_async else target
    options = {"on_error": "log", option: value}  # a timeout is an outcome, not an exception
    try:
        receiver(signal, **options)(func)
    except (TypeError, ValueError, ImproperlyConfigured) as exc:
        assert option in str(exc), exc
        assert "target" in str(exc), exc  # the listener is named too
        return
    if option in ("mode", "breaker", "fallback", "queue_name", "on_commit", "missing_instance"):
        return  # accepted values of these need a Tasks backend or a breaker: tested elsewhere
    # Accepted: every verb still gets exactly one outcome from it (a tiny timeout may cut it).
    expected = {"ok", "timeout"} if option == "timeout" else {"ok"}
    for collected in _every_verb(signal):
        [outcome] = list(collected)
        assert outcome.status in expected, (outcome, option, value)


def _every_verb(signal: Signal) -> Iterator[Any]:
    yield signal.send_sync(sender=None)
    yield signal.collect(sender=None)
    yield signal.collect(sender=None, queue=True)

    async def run() -> list[Any]:
        return [
            await signal.send_async(sender=None),
            await signal.collect_async(sender=None),
            await signal.collect_async(sender=None, queue=True),
        ]

    yield from asyncio.run(run())


@EXAMPLES
@given(queue=HOSTILE, deadline=HOSTILE, sender=HOSTILE, value=HOSTILE, sync=st.booleans())
def test_collect_refuses_bad_queue_and_deadline_arguments_by_name(
    queue: Any, deadline: Any, sender: Any, value: Any, sync: bool
) -> None:
    """``collect_async`` (and ``collect``): any sender and kwargs; queue and deadline checked."""
    signal = Signal(name="tests.hostile.collect")
    signal.connect(target, weak=False, on_error="log")

    def collect() -> Any:
        if sync:
            return signal.collect(sender, queue=queue, deadline=deadline, cart=value)

        async def collect_async() -> Any:
            return await signal.collect_async(sender, queue=queue, deadline=deadline, cart=value)

        return asyncio.run(collect_async())

    queue_ok = queue is True or queue is False or (isinstance(queue, str) and queue == "auto")
    try:
        collected = collect()
    except (TypeError, ValueError) as exc:
        culprit = str(exc).split(" ", 1)[0]
        assert culprit in ({"deadline"} if queue_ok else {"queue", "deadline"}), exc
        assert str(exc).startswith(f"{culprit} must be "), exc
        return
    assert queue_ok
    [outcome] = list(collected)
    # A deadline too short for the call to start or finish is an outcome, not an error.
    assert outcome.status in {"ok", "expired", "timeout"}, outcome
    assert outcome.status == "ok" or collected.deadline_hit


def test_the_longest_duration_a_thread_can_wait_is_accepted() -> None:
    signal = Signal(name="tests.hostile.longest")
    signal.connect(target, weak=False, timeout=threading.TIMEOUT_MAX)
    [outcome] = list(signal.collect(sender=None))
    assert outcome.status == "ok"


def test_decimal_and_other_numbers_are_refused_where_seconds_are_expected() -> None:
    with pytest.raises(TypeError, match=r"timeout must be a number of seconds, got Decimal"):
        receiver(Signal(), timeout=Decimal("1.5"))(target)
