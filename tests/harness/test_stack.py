"""The example's stack supervising its processes, and a broker's Redis that keeps its data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from examples.processes import RedisServer, StackError
from examples.stack import Stack
from tests.services import require_redis_server

SAYS_HELLO = [sys.executable, "-c", "print('hello', flush=True)"]


def test_a_process_spawned_with_restart_is_started_again_when_it_exits(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.spawn("flaky", SAYS_HELLO, restart=True)
        service = stack.service("flaky")
        first = service.process
        first.wait()
        stack.check_alive()
        assert service.restarts == 1
        assert service.process is not first
        service.process.wait()
        assert (tmp_path / "flaky.log").read_text().split() == ["hello", "hello"]
    finally:
        stack.stop()


def test_any_other_process_that_exits_fails_the_stack_naming_it(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        stack.spawn("fragile", SAYS_HELLO)
        stack.service("fragile").process.wait()
        with pytest.raises(StackError, match="fragile exited with 0"):
            stack.check_alive()
    finally:
        stack.stop()


@pytest.mark.redis
@pytest.mark.parametrize("durable", [True, False])
def test_a_durable_redis_server_keeps_its_data_across_a_restart(durable: bool) -> None:
    import redis

    server = RedisServer(require_redis_server().binary, durable=durable)
    with server:
        with redis.Redis.from_url(server.url) as client:
            client.rpush("queue", "job")
        server.stop()
        server.start()
        with redis.Redis.from_url(server.url) as client:
            assert client.lrange("queue", 0, -1) == ([b"job"] if durable else [])
