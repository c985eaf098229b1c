"""
Every ``PATCHBOARD`` key, fed hostile values (part of ``make stress``): each
value works or is refused at check time with an error naming the key, never
a traceback from deep inside; a duration too long to wait for is refused by
name wherever it can be written.

Internals on purpose: the setting's parser and dataclasses (``_config``),
read for the keys to throw values at, and the check ids.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from typing import Any

import pytest
from django.apps import apps
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from hypothesis import example, given
from hypothesis import strategies as st

from patchboard import CircuitBreaker, Signal, get_breaker, receiver
from patchboard._breaker._checks import E010_ID
from patchboard._checks import E001_ID
from patchboard._config import (
    BackgroundSettings,
    BreakerConfig,
    QueueSettings,
    SettingError,
    Settings,
    get_settings,
    parse,
)
from tests.hostile import EXAMPLES, HOSTILE

pytestmark = pytest.mark.stress


def upper(cls: type[Any]) -> list[str]:
    return [field.name.upper() for field in dataclasses.fields(cls)]


SECTIONS = {"SHORT_TERM_QUEUE": upper(QueueSettings), "BACKGROUND": upper(BackgroundSettings)}
TOP_LEVEL = [key for key in upper(Settings) if key not in SECTIONS]
BREAKER_ARGS = [field.name for field in dataclasses.fields(BreakerConfig)]


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


@EXAMPLES
@given(hostile_settings())
# One key of a pair set alone, against the other's default: the error names the key written.
@example(("SHORT_TERM_QUEUE.MAX_WORKERS", {"SHORT_TERM_QUEUE": {"MAX_WORKERS": 2}}))
@example(("SHORT_TERM_QUEUE.MIN_WORKERS", {"SHORT_TERM_QUEUE": {"MIN_WORKERS": 33}}))
@example(("STORE", {"STORE": "redis://h:99999/0"}))
@example(("METRICS", {"METRICS": {"": 0}}))  # a key that is no name: the section is named
@example(("BREAKERS.carrier-x.store", {"BREAKERS": {"carrier-x": {"store": "redis://h:99999/0"}}}))
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
                breaker = get_breaker(name)
                if errors:
                    # A store URL of the right scheme that redis-py cannot read: the breaker
                    # is built, E010 names it at check time, and every guarded call is
                    # refused by name (as for an unusable STORE, below).
                    assert [m.id for m in errors] == [E010_ID], errors
                    assert argument in errors[0].msg and name in errors[0].msg
                    refused = pytest.raises(ImproperlyConfigured, match=re.escape(f"{name!r}"))
                    with refused, breaker:
                        pass
                else:
                    _usable_breaker(breaker)
            return
        if problems:
            assert [m.id for m in errors] == [E001_ID] * len(problems)
            # The key, or for a rule between keys (MIN_WORKERS <= MAX_WORKERS) its section,
            # or a key inside it (METRICS takes a dict: {"0": 0} is METRICS.0, unknown).
            section, _, key = path.rpartition(".")
            named = (
                f'PATCHBOARD["{path}"]',
                f'PATCHBOARD["{section}"]: {key}',
                f'PATCHBOARD["{path}.',
            )
            assert all(any(n in m.msg for n in named) for m in errors), errors
            with pytest.raises(SettingError) as raised:
                get_settings()
            assert raised.value.key in (path, section) or raised.value.key.startswith(f"{path}.")
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


def target(sender: Any, **kwargs: Any) -> str:
    return "answered"


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


@pytest.mark.parametrize("breakers", [True, 3, 1.5, [{"a": 1}], {1: {}, "b": {}}])
def test_a_breakers_setting_of_the_wrong_shape_is_reported_not_raised(breakers: Any) -> None:
    """Found by the settings property: ``manage.py check`` crashed on ``BREAKERS=True``."""
    receiver(Signal(), breaker="carrier-unknown", on_error="log")(target)
    with override_settings(PATCHBOARD={"BREAKERS": breakers}):
        messages = run_checks()
    assert any(m.id in (E001_ID, E010_ID) or m.id == "patchboard.E011" for m in messages)
