"""
Hostile input at the public surface, as properties (part of ``make stress``).

Random and hostile values (wrong types, negatives, huge numbers, ``inf`` and
``nan``, text with line breaks) thrown at every ``PATCHBOARD`` key, every
listener option, the dispatch verbs' arguments, and the log renderer. Each
one either works or is refused with a clear error naming the culprit, at
check or connect time: never a traceback from deep inside, never a log line
forged, never a kwarg's value in a log unless ``LOG_KWARGS``.

(The background payload decoder has its own properties:
tests/background/test_payload_property.py.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import math
import re
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from patchboard import CircuitBreaker, NotSerializable, Signal, get_breaker, receiver
from patchboard._breaker._checks import E010_ID
from patchboard._checks import E001_ID
from patchboard._config import (
    BackgroundSettings,
    BreakerConfig,
    ListenerOptions,
    QueueSettings,
    SettingError,
    Settings,
    get_settings,
    parse,
)
from patchboard.testing import reset

pytestmark = pytest.mark.stress

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1, 2**63, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, 1e12, 1e-300, -0.0, 5e-324]),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    # Never a Redis URL that reaches a server: a breaker of these examples would write to it.
    st.sampled_from(["", "log", "raise", "memory", "redis://127.0.0.1:1/15", "redis://h:99999/0"]),
    st.just("\n"),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.builds(object),
)
"""Anything a settings file or a caller could hand over, sane or not."""


def upper(cls: type[Any]) -> list[str]:
    return [field.name.upper() for field in dataclasses.fields(cls)]


SECTIONS = {"SHORT_TERM_QUEUE": upper(QueueSettings), "BACKGROUND": upper(BackgroundSettings)}
TOP_LEVEL = [key for key in upper(Settings) if key not in SECTIONS]
BREAKER_ARGS = [field.name for field in dataclasses.fields(BreakerConfig)]
OPTIONS = [field.name for field in dataclasses.fields(ListenerOptions)]


@st.composite
def hostile_settings(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A ``PATCHBOARD`` dict with one hostile value at a random key: (its path, the dict)."""
    section = draw(st.sampled_from(["", *SECTIONS, "BREAKERS"]))
    value = draw(HOSTILE)
    if section == "":
        key = draw(st.sampled_from(TOP_LEVEL))
        return key, {key: value}
    if section == "BREAKERS":
        argument = draw(st.sampled_from(BREAKER_ARGS))
        return f"BREAKERS.carrier-x.{argument}", {"BREAKERS": {"carrier-x": {argument: value}}}
    key = draw(st.sampled_from(SECTIONS[section]))
    return f"{section}.{key}", {section: {key: value}}


# -- settings ----------------------------------------------------------------------------


@EXAMPLES
@given(hostile_settings())
# One key of a pair set alone, against the other's default: the error names the key written.
@example(("SHORT_TERM_QUEUE.MAX_WORKERS", {"SHORT_TERM_QUEUE": {"MAX_WORKERS": 2}}))
@example(("SHORT_TERM_QUEUE.MIN_WORKERS", {"SHORT_TERM_QUEUE": {"MIN_WORKERS": 33}}))
@example(("STORE", {"STORE": "redis://h:99999/0"}))
def test_every_setting_refuses_bad_values_by_name_at_check_time(case: tuple[str, Any]) -> None:
    path, raw = case
    with override_settings(PATCHBOARD=raw):
        messages = run_checks()  # never raises
        apps.get_app_config("patchboard").ready()  # at start-up: never raises
        errors = [m for m in messages if m.id in (E001_ID, E010_ID)]
        problems = parse(raw)[1]
        if path.startswith("BREAKERS."):
            _, name, argument = path.split(".")
            assert not problems
            try:
                get_breaker(name)
            except ImproperlyConfigured as exc:
                assert argument in str(exc) and name in str(exc)
                assert [m.id for m in errors] == [E010_ID]
                assert argument in errors[0].msg
            else:
                assert errors == []
                _usable_breaker(get_breaker(name))
            return
        if problems:
            assert [m.id for m in errors] == [E001_ID] * len(problems)
            # The key, or for a rule between keys (MIN_WORKERS <= MAX_WORKERS) its section.
            section, _, key = path.rpartition(".")
            named = (f'PATCHBOARD["{path}"]', f'PATCHBOARD["{section}"]: {key}')
            assert all(any(n in m.msg for n in named) for m in errors), errors
            with pytest.raises(SettingError) as raised:
                get_settings()
            assert raised.value.key in (path, section)
        elif path == "STORE" and errors:
            # A URL of the right scheme that redis-py cannot read: E010 (not a parse problem).
            assert [m.id for m in errors] == [E010_ID], errors
            assert 'PATCHBOARD["STORE"]' in errors[0].msg
        else:
            assert errors == []
            _sane(get_settings())


def _sane(parsed: Settings) -> None:
    """An accepted setting is one the library can live with: finite, usable numbers."""
    for section in (parsed, parsed.short_term_queue, parsed.background):
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            if isinstance(value, float):
                assert math.isfinite(value) and value >= 0, (field.name, value)


def _usable_breaker(breaker: CircuitBreaker) -> None:
    """An accepted breaker opens and reports its retry time without blowing up."""

    class Down(Exception):
        pass

    for _ in range(min(breaker.config.failure_threshold, 50)):
        with pytest.raises(Down), breaker:
            raise Down
    if breaker.state == "open":
        assert breaker.retry_at is not None


# -- connect options ---------------------------------------------------------------------


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


# -- the verbs' own arguments --------------------------------------------------------------


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


class Colour(enum.Enum):
    RED = 1


UNENCODABLE = st.sampled_from(
    [b"bytes", bytearray(b"x"), Colour.RED, object(), complex(1, 2), range(3), Exception("x")]
)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.decimals()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@st.composite
def with_unencodable(draw: st.DrawFn) -> tuple[Any, str]:
    """A JSON-like value with one value that cannot cross, and the path to it."""
    leaf = draw(UNENCODABLE)
    depth = draw(st.integers(min_value=0, max_value=3))
    value, path = leaf, ""
    for _ in range(depth):
        if draw(st.booleans()):
            siblings = draw(st.lists(JSONISH, max_size=2))
            value, path = [*siblings, value], f"[{len(siblings)}]{path}"
        else:
            key = draw(st.text(alphabet="abcxyz", min_size=1, max_size=4))
            value, path = {key: value}, f"[{key!r}]{path}"
    return value, path


background = Signal(name="tests.hostile.background")


def hostile_background(sender: Any, **kwargs: Any) -> None:
    pass


def background_fails(sender: Any, **kwargs: Any) -> None:
    raise RuntimeError("the mail server is down")


@EXAMPLES
@given(case=with_unencodable())
def test_kwargs_that_cannot_cross_are_refused_at_send_time_by_path(case: tuple[Any, str]) -> None:
    value, path = case
    background.connect(hostile_background, weak=False, mode="background")
    try:
        with (
            override_settings(PATCHBOARD={"BACKGROUND": {"BACKEND": "dummy"}}),
            pytest.raises(NotSerializable) as raised,
        ):
            background.send_sync(sender=None, cart=value)
    finally:
        background.disconnect(hostile_background)
    message = str(raised.value)
    assert f"kwargs['cart']{path}" in message, message
    assert "hostile_background" in message


# -- logs ----------------------------------------------------------------------------------

SECRET = "s3cr3t-4fe1-value"


@pytest.fixture
def unconfigured() -> Iterator[None]:
    """structlog unconfigured: patchboard renders its events as logfmt through logging."""
    import structlog

    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


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


@pytest.mark.parametrize("huge", [1e308, 2**63, 10**400])
def test_huge_finite_durations_are_refused_by_name(huge: float) -> None:
    """
    Found by the properties: a duration past what a thread can wait for
    (``threading.TIMEOUT_MAX``) was accepted, then ``collect()`` raised
    OverflowError from a listener's ``timeout``, a breaker's first trip raised
    OverflowError or OSError computing ``retry_at``, and an int too large for
    a float crashed ``manage.py check`` with OverflowError.
    """
    got = re.escape(f"got {huge!r}")
    with pytest.raises(ValueError, match=rf"timeout must be at most .* seconds, {got}"):
        receiver(Signal(), timeout=huge)(target)
    with pytest.raises(ValueError, match=rf"reset_timeout must be at most .* seconds, {got}"):
        CircuitBreaker("tests.hostile.huge", reset_timeout=huge)
    if huge > sys.float_info.max:
        with pytest.raises(ValueError, match=r"backoff_factor must be a finite number >= 1"):
            CircuitBreaker("tests.hostile.huge", backoff_factor=huge)
    for raw in (
        {"SHORT_TERM_QUEUE": {"ITEM_EXPIRY": huge}},
        {"BACKGROUND": {"GIVE_UP_AFTER": huge}},
    ):
        with override_settings(PATCHBOARD=raw):
            [error] = [m for m in run_checks() if m.id == E001_ID]
            assert "must be at most" in error.msg


def test_the_longest_duration_a_thread_can_wait_is_accepted() -> None:
    import threading

    signal = Signal(name="tests.hostile.longest")
    signal.connect(target, weak=False, timeout=threading.TIMEOUT_MAX)
    [outcome] = list(signal.collect(sender=None))
    assert outcome.status == "ok"


def test_decimal_and_other_numbers_are_refused_where_seconds_are_expected() -> None:
    with pytest.raises(TypeError, match=r"timeout must be a number of seconds, got Decimal"):
        receiver(Signal(), timeout=Decimal("1.5"))(target)


@pytest.mark.parametrize("breakers", [True, 3, 1.5, [{"a": 1}], {1: {}, "b": {}}])
def test_a_breakers_setting_of_the_wrong_shape_is_reported_not_raised(breakers: Any) -> None:
    """Found by the settings property: ``manage.py check`` crashed on ``BREAKERS=True``."""
    receiver(Signal(), breaker="carrier-unknown", on_error="log")(target)
    with override_settings(PATCHBOARD={"BREAKERS": breakers}):
        messages = run_checks()
    assert any(m.id in (E001_ID, E010_ID) or m.id == "patchboard.E011" for m in messages)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_huge_backoff_without_a_cap_grows_to_the_longest_wait_not_to_overflow(
    store: str, request: pytest.FixtureRequest
) -> None:
    """Found by the properties: ``backoff_factor=1e300`` made the second opening overflow."""
    from patchboard.testing import VirtualClock

    clock = VirtualClock(1_700_000_000.0)
    options: dict[str, Any] = {"clock": clock}
    if store == "redis":
        options = {"store": request.getfixturevalue("redis_url"), "sync_interval": 0}
    name = f"tests.hostile.backoff.{store}.{id(clock)}"
    breaker = CircuitBreaker(
        name, failure_threshold=1, reset_timeout=0.01, backoff_factor=1e300, **options
    )

    class Down(Exception):
        pass

    with pytest.raises(Down), breaker:
        raise Down
    clock.advance(1)
    if store == "redis":
        import time

        time.sleep(0.05)  # the Redis store runs on the server's clock
    with pytest.raises(Down), breaker:  # the probe fails: the reset timeout grows
        raise Down
    assert breaker.state == "open"
    assert breaker.retry_at is not None and breaker.retry_at.year > 2200


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


def test_ci_draws_the_same_examples_every_run() -> None:
    """The profile tests/conftest.py loads under CI=true: derandomized, no example database."""
    ci = settings.get_profile("ci")
    assert ci.derandomize is True
    assert ci.database is None
