"""The PATCHBOARD setting: validated once, reported by system checks."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from patchboard._checks import E001_ID
from patchboard._config import QueueSettings, SettingError, Settings, get_settings, parse


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
        ({"ON_ERROR": "skip"}, "ON_ERROR must be 'raise' or 'log', got 'skip'"),
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
            "STORE must be 'memory' or a Redis URL (redis://, rediss:// or unix://)",
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
        assert len(events) == 1
        assert len(events[0]["problems"]) == 2
        assert 'PATCHBOARD["ON_ERROR"]' in events[0]["problems"][0]
        with pytest.raises(SettingError, match=r'PATCHBOARD\["(ON_ERROR|MAX_THREADS)"\]'):
            signal.send_sync(sender=None)
    assert signal.send_sync(sender=None).values() == ["ran"]


def test_a_malformed_store_url_is_logged_at_startup(logs) -> None:
    """Under uvicorn no check runs: the store's E010 is said at start-up, not at the first call."""
    from django.apps import apps

    with override_settings(PATCHBOARD={"STORE": "redis://127.0.0.1:99999/0"}):
        apps.get_app_config("patchboard").ready()
    [event] = [e for e in logs.entries if e["event"] == "settings_invalid"]
    [problem] = event["problems"]
    assert problem.startswith('PATCHBOARD["STORE"]: store ')
    assert "redis://127.0.0.1:99999/0" in problem
