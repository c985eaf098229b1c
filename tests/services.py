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
import subprocess
import tempfile
import time
from typing import Any

import pytest

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


class RedisServer:
    """
    A private ``redis-server`` on a free port of 127.0.0.1, for the tests that
    must stop Redis and start it again (on the same port). Never the shared one.
    """

    def __init__(self, binary: str) -> None:
        self.binary = binary
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers (10 s at most)."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", tempfile.gettempdir(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop this server (only this one) and wait for it to exit."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)

    def info(self, section: str) -> dict[str, Any]:
        """``INFO section`` from a connection of its own (counted in ``connected_clients``)."""
        import redis

        with redis.Redis.from_url(self.url) as client:
            return client.info(section)  # type: ignore[no-any-return]

    def _answers(self) -> bool:
        import redis

        try:
            with redis.Redis.from_url(self.url, socket_timeout=1.0) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


def require_redis_server() -> RedisServer:
    """A private Redis server, not yet started; skips (locally) without ``redis-server``."""
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
