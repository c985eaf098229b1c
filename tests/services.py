"""
Real services for the tests that are about them.

Locally, a test whose service is down skips with the reason; under ``CI=true``
it fails instead, so a green CI run never hides a skipped Redis or PostgreSQL
test.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from examples.processes import RedisServer

REDIS_URL = os.environ.get("PATCHBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES = {
    "HOST": os.environ.get("PATCHBOARD_TEST_PG_HOST", "127.0.0.1"),
    "PORT": int(os.environ.get("PATCHBOARD_TEST_PG_PORT", "5432")),
    "NAME": os.environ.get("PATCHBOARD_TEST_PG_NAME", "test"),
    "USER": os.environ.get("PATCHBOARD_TEST_PG_USER", "postgres"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    """Skip (locally) or fail (under CI=true) when ``service`` is not listening."""
    if _reachable(host, port):
        return
    reason = f"{service} is not reachable at {host}:{port}"
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)


def require_redis() -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(REDIS_URL)
    require("Redis", parts.hostname or "127.0.0.1", parts.port or 6379)
    return REDIS_URL


def require_redis_server() -> RedisServer:
    """
    A private Redis server for a test that must stop Redis, not yet started;
    skips (locally) without ``redis-server``.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not on PATH"
        if in_ci():
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    return RedisServer(binary)


def require_postgres() -> dict[str, object]:
    require("PostgreSQL", str(POSTGRES["HOST"]), int(POSTGRES["PORT"]))
    return dict(POSTGRES)


def require_module(name: str, install: str) -> None:
    """Skip (locally) or fail (under CI=true) when the module ``name`` cannot be imported."""
    from importlib.util import find_spec

    if find_spec(name) is not None:
        return
    reason = f"{name} is not installed ({install})"
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(reason)
