"""
What patchboard's log lines never carry, whatever the input (part of
``make stress``): a line break that would start a forged line (from an
error's message or a forged task payload), or a kwarg's value unless
``LOG_KWARGS`` is on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

from patchboard import CircuitBreaker, Signal
from patchboard.testing import reset
from tests.hostile import EXAMPLES

pytestmark = pytest.mark.stress

background = Signal(name="tests.log_safety.background")


def hostile_background(sender: Any, **kwargs: Any) -> None:
    pass


def background_fails(sender: Any, **kwargs: Any) -> None:
    raise RuntimeError("the mail server is down")


SECRET = "s3cr3t-4fe1-value"


LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""Every character ``str.splitlines()`` breaks a line at."""


@EXAMPLES
@given(message=st.text(alphabet=st.sampled_from([*LINE_BREAKS, "a", "=", '"', " ", "\\"])))
def test_an_exception_message_cannot_forge_a_log_line(
    unconfigured: None, caplog: pytest.LogCaptureFixture, message: str
) -> None:
    """Key/values that carry an error's text (``error=``, ``reason=``) stay on one line."""
    reset()  # hypothesis runs many examples in one test
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="patchboard")
    from patchboard._background._tasks import run

    # A forged task's payload names a listener with line breaks; the refusal logs it.
    run({"listener": f"x{message}", "signal": message, "v": 1}, _FakeResult())
    breaker = CircuitBreaker("tests.hostile.forge", failure_threshold=1)
    object.__setattr__(breaker, "_excluded_predicates", (_raiser(message),))
    with pytest.raises(ValueError), breaker:
        raise ValueError(message)

    lines = [r.getMessage() for r in caplog.records if r.name == "patchboard"]
    assert any(line.startswith("background_refused") for line in lines)
    assert any(line.startswith("circuit_exclude_failed") for line in lines)
    for line in lines:
        assert line.splitlines() == [line], repr(line)


def _raiser(message: str) -> Any:
    def exclude(exc: BaseException) -> bool:
        raise RuntimeError(message)

    return exclude


class _FakeResult:
    id = "task-hostile"


@pytest.mark.parametrize("log_kwargs", [False, True])
def test_kwargs_values_are_never_logged_unless_log_kwargs(
    unconfigured: None, caplog: pytest.LogCaptureFixture, log_kwargs: bool
) -> None:
    caplog.set_level(logging.DEBUG, logger="patchboard")
    signal = Signal(name="tests.hostile.secret")
    breaker = CircuitBreaker("tests.hostile.secret", failure_threshold=1)

    def fails(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("carrier down")

    async def slow(sender: Any, **kwargs: Any) -> None:
        await asyncio.sleep(5)

    async def slow_too(sender: Any, **kwargs: Any) -> None:
        await asyncio.sleep(5)

    def fallback_fails(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("no cache either")

    def guarded(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("guarded carrier down")

    signal.connect(fails, weak=False, on_error="log")
    signal.connect(slow, weak=False, on_error="log", timeout=0.05)
    signal.connect(guarded, weak=False, on_error="log", breaker=breaker, fallback=fallback_fails)
    with override_settings(PATCHBOARD={"LOG_KWARGS": log_kwargs}):
        for queue in (False, True, True):
            signal.collect(sender=None, queue=queue, secret=SECRET, nested={"card": [SECRET]})
        with override_settings(
            PATCHBOARD={
                "LOG_KWARGS": log_kwargs,
                "SHORT_TERM_QUEUE": {"MIN_WORKERS": 1, "MAX_WORKERS": 1, "MAX_PENDING": 1},
            }
        ):
            # One worker, one place in line: the second slow call is rejected (the
            # guarded one's open circuit refuses it before it takes a place).
            signal.connect(slow_too, weak=False, on_error="log", timeout=0.05)
            try:
                signal.collect(sender=None, queue=True, secret=SECRET)  # rejected, expired
            finally:
                signal.disconnect(slow_too)
        # Background listeners, run at once by the test settings' ImmediateBackend.
        background.connect(background_fails, weak=False, mode="background", on_error="log")
        background.connect(hostile_background, weak=False, mode="background")
        try:
            background.send_sync(sender=None, secret=SECRET, nested={"card": [SECRET]})
        finally:
            background.disconnect(background_fails)
            background.disconnect(hostile_background)

    records = [r for r in caplog.records if r.name == "patchboard"]
    events = {r.getMessage().split(" ", 1)[0] for r in records}
    assert {
        "listener_failed",
        "listener_timeout",
        "listener_fallback_failed",
        "queue_item_rejected",
        "background_enqueued",
        "background_started",
        "background_finished",
        "background_failed",
    } <= events, events
    rendered = "\n".join(_rendered(r) for r in records)
    if log_kwargs:
        assert SECRET in rendered
    else:
        assert SECRET not in rendered


def _rendered(record: logging.LogRecord) -> str:
    """The record as a handler would write it: the message and any traceback."""
    return logging.Formatter("%(message)s").format(record)


@pytest.mark.parametrize("line_break", ["\r", "\x1e", "\u2028", "\x85"])
def test_a_forged_payload_cannot_start_a_log_line_with_any_line_break(
    unconfigured: None, caplog: pytest.LogCaptureFixture, line_break: str
) -> None:
    """Found by the properties: only ``\\n`` was escaped; a ``\\r`` started a line of its own."""
    from patchboard._background._tasks import run

    caplog.set_level(logging.DEBUG, logger="patchboard")
    forged = f"x{line_break}background_finished listener=shop.receivers.send_receipt"
    run({"listener": forged, "v": 1}, _FakeResult())
    [line] = [r.getMessage() for r in caplog.records if r.name == "patchboard"]
    assert line.startswith("background_refused ")
    assert line.splitlines() == [line]
    assert repr(line_break)[1:-1] in line
