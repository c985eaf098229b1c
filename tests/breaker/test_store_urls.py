"""
Redis store URLs: a malformed one is reported by the checks and refused by every call.

Internals on purpose: ``mask_url`` (what every message shows of a URL) and
the breaker checks with their id.
"""

from __future__ import annotations

import re
import sys

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from patchboard import CircuitBreaker, get_breaker
from patchboard._breaker._checks import E010_ID, check_breakers
from patchboard._breaker._redis import mask_url

# Each URL, as a user might write it with a password, and what is wrong with it.
MALFORMED = [
    ("redis://:hunter2@localhost:99999/0", "Port out of range"),
    ("redis://:hunter2@localhost:abc/0", "Port could not be cast to integer"),
    ("redis://:hunter2@localhost:0/0", "the port must be in 1-65535, got 0"),
    ("redis://:hunter2@localhost/zero", "the database (the path) must be a number, got 'zero'"),
    ("redis://:hunter2@localhost/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
    ("redis://:hunter2@localhost/0?socket_timout=1", "unexpected keyword argument 'socket_timout'"),
    ("rediss://:hunter2@localhost/0?ssl_cert_reqs=maybe", "Invalid SSL Certificate Requirements"),
]
VALID = [
    "redis://127.0.0.1:6379/15",
    "redis://user:secret@localhost/0?socket_timeout=0.1&max_connections=5&timeout=0.1",
    "rediss://localhost:6380",
    "unix:///run/redis.sock?db=2",
]


def refusal(url: str, problem: str) -> str:
    """What a refusal of ``url`` says, as a pattern: the masked URL, then the problem."""
    masked = url.replace(":hunter2@", ":***@")
    return (
        re.escape(f"store {masked!r} is not a valid Redis URL: ") + ".*" + re.escape(problem) + ".*"
    )


def refused_call(breaker: CircuitBreaker) -> str:
    """The message of the ``ImproperlyConfigured`` a guarded call through ``breaker`` raises."""
    with pytest.raises(ImproperlyConfigured) as caught, breaker:
        pass
    return str(caught.value)


@pytest.mark.parametrize(("url", "problem"), MALFORMED)
def test_a_breaker_with_a_malformed_store_url_is_built_and_refuses_every_call(url, problem) -> None:
    """Built at import, it must not stop manage.py check from reporting it."""
    breaker = CircuitBreaker("ups", store=url)
    message = refused_call(breaker)
    assert re.fullmatch(re.escape("circuit breaker 'ups': ") + refusal(url, problem), message)
    assert "hunter2" not in message and "hunter2" not in breaker.statistics().store
    errors = check_breakers()
    assert [(e.id, e.obj) for e in errors] == [(E010_ID, "CircuitBreaker('ups')")]
    assert errors[0].msg == message


@pytest.mark.parametrize(("url", "problem"), MALFORMED)
def test_check_e010_names_the_declared_breaker_and_its_masked_url(url, problem) -> None:
    with override_settings(PATCHBOARD={"BREAKERS": {"ups": {"store": url}}}):
        errors = check_breakers()
        assert [e for e in run_checks() if e.id == E010_ID] == errors
        assert re.search(refusal(url, problem), refused_call(get_breaker("ups")))
        assert check_breakers() == errors  # built now: still one error for it
    assert [(e.id, e.obj) for e in errors] == [
        (E010_ID, """settings.PATCHBOARD["BREAKERS"]['ups']""")
    ]
    assert re.fullmatch(re.escape("circuit breaker 'ups': ") + refusal(url, problem), errors[0].msg)
    assert "hunter2" not in errors[0].msg


@pytest.mark.parametrize(("url", "problem"), MALFORMED[:3])
def test_check_e010_reports_a_malformed_default_store_once(url, problem) -> None:
    settings = {"STORE": url, "BREAKERS": {"ups": {}, "fedex": {"failure_threshold": 2}}}
    with override_settings(PATCHBOARD=settings):
        dhl = CircuitBreaker("dhl")  # built in code, on the default store
        errors = check_breakers()
        assert re.search(refusal(url, problem), refused_call(dhl))
    assert [(e.id, e.obj) for e in errors] == [(E010_ID, 'settings.PATCHBOARD["STORE"]')]
    assert re.fullmatch(re.escape('PATCHBOARD["STORE"]: ') + refusal(url, problem), errors[0].msg)


def test_a_store_that_is_no_url_is_reported_by_check_not_raised_at_import() -> None:
    """
    Regression: a breaker built at import on ``"STORE": "redis//oops"``
    raised there, so ``manage.py check`` died with a traceback instead of
    listing the problems.
    """
    with override_settings(PATCHBOARD={"STORE": "redis//oops", "BREAKERS": {"ups": {}}}):
        dhl = CircuitBreaker("dhl")
        errors = [e for e in run_checks() if e.id in ("patchboard.E001", E010_ID)]
        message = refused_call(dhl)
    assert [(e.id, e.obj) for e in errors] == [("patchboard.E001", "settings.PATCHBOARD")]
    assert "'redis//oops'" in errors[0].msg and "'redis//oops'" in message


@pytest.mark.parametrize("url", VALID)
def test_valid_store_urls_pass_the_checks_and_build(url) -> None:
    with override_settings(PATCHBOARD={"STORE": url, "BREAKERS": {"ups": {"store": url}}}):
        assert check_breakers() == []
        assert get_breaker("ups").statistics().store == mask_url(url)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:hunter2@localhost:99999/0", "redis://:***@localhost:99999/0"),
        ("redis://admin:hunter2@[::1]:6379/0", "redis://admin:***@[::1]:6379/0"),
        ("redis://localhost/0?password=hunter2&db=1", "redis://localhost/0?password=***&db=1"),
        ("redis://:hunter2@[::1/0", "redis://***"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_mask_url_hides_the_password_of_any_url(url, masked) -> None:
    assert mask_url(url) == masked


def test_a_redis_store_without_the_redis_package_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed: importing it fails
    breaker = CircuitBreaker("ups", store="redis://:hunter2@127.0.0.1:6379/0")
    assert refused_call(breaker) == (
        "circuit breaker 'ups': store='redis://:***@127.0.0.1:6379/0' needs the redis "
        "package (pip install 'django-patchboard[redis]')"
    )
