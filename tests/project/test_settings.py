"""
The PATCHBOARD setting: validated once, reported by system checks.

Internals on purpose: the setting's parser (``_config.parse``,
``get_settings``, ``Settings``) and the check id ``E001_ID``.
"""

from __future__ import annotations

import logging
import sys

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from patchboard import QueueSettings
from patchboard._checks import E001_ID
from patchboard._config import SettingError, Settings, get_settings, parse


def test_defaults() -> None:
    settings, errors = parse({})
    assert errors == []
    assert settings == Settings()
    assert settings.on_error == "raise"
    assert settings.short_term_queue == QueueSettings()


def test_nested_values_become_frozen_dataclasses() -> None:
    settings, errors = parse({"ON_ERROR": "log", "SHORT_TERM_QUEUE": {"MAX_WORKERS": 64}})
    assert errors == []
    assert settings.on_error == "log"
    assert settings.short_term_queue.max_workers == 64
    with pytest.raises(AttributeError):
        settings.on_error = "raise"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"ON_EROR": "log"}, 'PATCHBOARD["ON_EROR"]: unknown setting; known: BACKGROUND'),
        ({"on_error": "log"}, 'PATCHBOARD["on_error"]: unknown setting'),
        ({"": "log"}, "PATCHBOARD: unknown setting ''; known: BACKGROUND"),
        ({"METRICS": {"": 0}}, "PATCHBOARD[\"METRICS\"]: unknown setting ''; known: BUCKETS"),
        ({"BACKGROUND": {1: 0}}, 'PATCHBOARD["BACKGROUND"]: unknown setting 1; known: BACKEND'),
        ({"ON_ERROR": "skip"}, "ON_ERROR must be 'raise', 'log' or 'group', got 'skip'"),
        (
            {"SHORT_TERM_QUEUE": {"MIN_WORKERS": 9, "MAX_WORKERS": 2}},
            'PATCHBOARD["SHORT_TERM_QUEUE"]: MIN_WORKERS must be <= MAX_WORKERS, got 9 > 2',
        ),
        (
            {"SHORT_TERM_QUEUE": {"MAX_WORKERS": 2}},
            'PATCHBOARD["SHORT_TERM_QUEUE.MAX_WORKERS"]: MIN_WORKERS must be <= MAX_WORKERS, '
            "got 4 > 2 (MIN_WORKERS is not set: its default is 4)",
        ),
        (
            {"SHORT_TERM_QUEUE": {"MIN_WORKERS": 33}},
            'PATCHBOARD["SHORT_TERM_QUEUE.MIN_WORKERS"]: MIN_WORKERS must be <= MAX_WORKERS, '
            "got 33 > 32 (MAX_WORKERS is not set: its default is 32)",
        ),
        (
            {"SHORT_TERM_QUEUE": {"ITEM_EXPIRY": 0}},
            "ITEM_EXPIRY must be a finite number of seconds > 0, got 0",
        ),
        ({"SHORT_TERM_QUEUE": {"WORKERS": 3}}, 'PATCHBOARD["SHORT_TERM_QUEUE.WORKERS"]: unknown'),
        ({"SHORT_TERM_QUEUE": 3}, 'PATCHBOARD["SHORT_TERM_QUEUE"]: must be a dict, got 3'),
        (
            {"STORE": "memcached://x"},
            "STORE must be 'memory' or a Redis URL (redis://, rediss:// or unix://; ",
        ),
        ("log", "must be a dict, got 'log'"),
    ],
)
def test_bad_settings_are_reported_by_the_system_check(raw, message) -> None:
    with override_settings(PATCHBOARD=raw):
        errors = [m for m in run_checks() if m.id == E001_ID]
        assert len(errors) == 1, errors
        assert message in errors[0].msg
        with pytest.raises(SettingError, match="PATCHBOARD"):
            get_settings()


def test_valid_settings_pass_the_check() -> None:
    with override_settings(PATCHBOARD={"ON_ERROR": "log", "COLLECT_QUEUE_THRESHOLD": 3}):
        assert [m for m in run_checks() if m.id.startswith("patchboard.E00")] == []
        assert get_settings().collect_queue_threshold == 3


def test_settings_follow_override_settings() -> None:
    assert get_settings().on_error == "raise"
    with override_settings(PATCHBOARD={"ON_ERROR": "log"}):
        assert get_settings().on_error == "log"
    assert get_settings().on_error == "raise"


def test_every_bad_key_is_reported_not_only_the_first() -> None:
    raw = {
        "ON_ERROR": "skip",
        "MAX_THREADS": 0,
        "SHORT_TERM_QUEUE": {"MIN_WORKERS": 0, "ITEM_EXPIRY": -1, "MAX_PENDING": "many"},
        "BACKGROUND": {"RETRY_DELAY": 0, "BACKEND": ""},
    }
    _, errors = parse(raw)
    assert sorted(error.key for error in errors) == [
        "BACKGROUND.BACKEND",
        "BACKGROUND.RETRY_DELAY",
        "MAX_THREADS",
        "ON_ERROR",
        "SHORT_TERM_QUEUE.ITEM_EXPIRY",
        "SHORT_TERM_QUEUE.MAX_PENDING",
        "SHORT_TERM_QUEUE.MIN_WORKERS",
    ]
    with override_settings(PATCHBOARD=raw):
        assert len([m for m in run_checks() if m.id == E001_ID]) == 7


@pytest.mark.parametrize("key", ["ITEM_EXPIRY", "TASK_TIME_LIMIT", "IDLE_SHRINK_AFTER"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_infinity_cannot_switch_a_limit_off(key: str, value: float) -> None:
    _, errors = parse({"SHORT_TERM_QUEUE": {key: value}})
    assert [error.key for error in errors] == [f"SHORT_TERM_QUEUE.{key}"]
    assert "must be a finite number of seconds > 0" in errors[0].problem


def test_a_breaker_built_at_import_does_not_validate_unrelated_settings() -> None:
    """A module-level CircuitBreaker must not stop django.setup() over another key."""
    from patchboard import CircuitBreaker
    from patchboard.testing import reset

    with override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": {"MAX_WORKERS": -1}}):
        try:
            breaker = CircuitBreaker("tests.settings.unrelated")
            assert breaker.state == "closed"
        finally:
            reset()


def test_a_bad_store_still_stops_the_breaker_that_uses_it() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from patchboard import CircuitBreaker

    with override_settings(PATCHBOARD={"STORE": "memcached://x"}):
        breaker = CircuitBreaker("tests.settings.bad_store")  # built: at import, check must run
        with pytest.raises(ImproperlyConfigured, match=r'PATCHBOARD\["STORE"\]'), breaker:
            pass


def test_invalid_settings_are_logged_at_startup_and_stop_the_first_dispatch(logs) -> None:
    from django.apps import apps

    from patchboard import Signal

    signal = Signal(name="tests.settings.dispatch")

    def listener(sender, **kwargs):
        return "ran"

    signal.connect(listener, weak=False)
    with override_settings(PATCHBOARD={"ON_ERROR": "skip", "MAX_THREADS": 0}):
        apps.get_app_config("patchboard").ready()
        events = [e for e in logs.entries if e["event"] == "settings_invalid"]
        # One event per key, each saying how many problems there are.
        assert [(e["setting"], e["problems"]) for e in events] == [
            ("ON_ERROR", 2),
            ("MAX_THREADS", 2),
        ]
        assert events[0]["problem"] == "ON_ERROR must be 'raise', 'log' or 'group', got 'skip'"
        with pytest.raises(SettingError, match=r'PATCHBOARD\["(ON_ERROR|MAX_THREADS)"\]'):
            signal.send_sync(sender=None)
    assert signal.send_sync(sender=None).values() == ["ran"]


def test_a_malformed_store_url_is_logged_at_startup(logs) -> None:
    """Under uvicorn no check runs: the store's E010 is said at start-up, not at the first call."""
    from django.apps import apps

    with override_settings(PATCHBOARD={"STORE": "redis://127.0.0.1:99999/0"}):
        apps.get_app_config("patchboard").ready()
    [event] = [e for e in logs.entries if e["event"] == "settings_invalid"]
    assert (event["setting"], event["problems"]) == ("STORE", 1)
    assert event["problem"].startswith("store ")
    assert "redis://127.0.0.1:99999/0" in event["problem"]


def test_settings_invalid_reads_as_plain_key_values(unconfigured, caplog) -> None:
    """Regression: the problems were one Python list repr, its quotes escaped."""
    from django.apps import apps

    caplog.set_level(logging.ERROR, logger="patchboard")
    raw = {"ON_ERROR": "skip", "BREAKERS": {"carrier-x": {"failure_threshold": 0}}}
    with override_settings(PATCHBOARD=raw):
        apps.get_app_config("patchboard").ready()
    lines = [r.getMessage() for r in caplog.records if r.name == "patchboard"]
    assert len(lines) == 2
    assert lines[0].startswith(
        "settings_invalid setting=ON_ERROR "
        "problem=\"ON_ERROR must be 'raise', 'log' or 'group', got 'skip'\" problems=2 "
    )
    assert lines[1].startswith("settings_invalid setting=BREAKERS.carrier-x problem=")
    assert not any("\\" in line or "['" in line for line in lines)


def test_manage_py_check_alone_reports_invalid_settings(logs, monkeypatch) -> None:
    """
    Regression: ``manage.py check`` printed the problems twice, once as
    settings_invalid (logged when the app loaded) and once as the check's own.
    """
    from django.apps import apps

    monkeypatch.setattr(sys, "argv", ["/srv/shop/manage.py", "check"])
    with override_settings(PATCHBOARD={"ON_ERROR": "skip"}):
        apps.get_app_config("patchboard").ready()  # what django.setup() runs first
        with pytest.raises(SystemCheckError, match=r'PATCHBOARD\["ON_ERROR"\]'):
            call_command("check")
    assert [e for e in logs.entries if e["event"] == "settings_invalid"] == []
