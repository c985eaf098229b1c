from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import LogCapture

from tests.services import require_postgres, require_redis


@pytest.fixture
def redis_url() -> str:
    """The real Redis server's URL (database 15, flushed by the tests that write)."""
    return require_redis()


@pytest.fixture
def postgres() -> dict[str, object]:
    """Connection parameters of the real PostgreSQL server."""
    return require_postgres()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Every structlog event emitted during the test, as dicts."""
    capture = LogCapture()
    structlog.configure(processors=[capture])
    try:
        yield capture
    finally:
        structlog.reset_defaults()
