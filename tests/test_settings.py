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
            {"SHORT_TERM_QUEUE": {"ITEM_EXPIRY": 0}},
            "ITEM_EXPIRY must be a finite number of seconds > 0, got 0",
        ),
        ({"SHORT_TERM_QUEUE": {"WORKERS": 3}}, 'PATCHBOARD["SHORT_TERM_QUEUE.WORKERS"]: unknown'),
        ({"SHORT_TERM_QUEUE": 3}, 'PATCHBOARD["SHORT_TERM_QUEUE"]: must be a dict, got 3'),
        ({"STORE": "memcached://x"}, "STORE must be 'memory' or a redis:// URL"),
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
