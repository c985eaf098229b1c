"""
Private Redis topologies for the store tests: a three-node Redis Cluster, and
a primary with one replica watched by three Redis Sentinels.

Every process is started here, on free loopback ports, in a temporary
directory of its own, and stopped (only these) on exit. ``redis-sentinel``
is ``redis-server --sentinel``, so ``redis-server`` and ``redis-cli`` are all
they need.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import pytest
import redis

from examples.processes import start_process
from tests.services import in_ci

SERVICE = "mymaster"


def require_programs(*names: str) -> dict[str, str]:
    """The paths of ``names``; skips (locally) or fails (under CI=true) without one."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        reason = f"{', '.join(missing)} not on PATH"
        if in_ci():
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    return {name: path for name, path in found.items() if path is not None}


def free_ports(count: int) -> list[int]:
    """``count`` free loopback ports whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds (set-up only: waiting for servers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=5, decode_responses=True)


def commands(port: int) -> dict[str, int]:
    """Each command's ``calls`` since the last ``CONFIG RESETSTAT`` on ``port``."""
    with client(port) as c:
        stats = c.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


class _Processes:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="patchboard-redis-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str) -> None:
        binary = require_programs("redis-server")["redis-server"]
        log = open(self.dir / f"{port}.log", "wb")  # noqa: SIM115 (kept while it runs)
        self.processes[port] = start_process([binary, *args], output=log)
        log.close()
        until(lambda: client(port).ping(), f"redis on port {port}")

    def stop(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for port in list(self.processes):
            self.stop(port)
        shutil.rmtree(self.dir, ignore_errors=True)

    def server_args(self, port: int) -> list[str]:
        return [
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
            *("--save", "", "--appendonly", "no"),
        ]


class RedisClusterNodes(_Processes):
    """Three primaries, no replicas, all 16384 slots covered."""

    def __init__(self) -> None:
        super().__init__()
        self.ports = free_ports(3)

    def __enter__(self) -> Self:
        programs = require_programs("redis-server", "redis-cli")
        for port in self.ports:
            self.start(
                port,
                *self.server_args(port),
                *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
            )
        subprocess.run(
            [
                programs["redis-cli"],
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for port in self.ports:
            until(
                lambda port=port: client(port).cluster("info")["cluster_state"] == "ok",
                f"cluster state ok on {port}",
            )
        return self

    def url(self, *, order: tuple[int, ...] = (0, 1, 2)) -> str:
        nodes = ",".join(f"127.0.0.1:{self.ports[i]}" for i in order)
        return f"redis+cluster://{nodes}/"

    def owner(self, key: str) -> int:
        """The port of the node that serves ``key``'s slot."""
        with client(self.ports[0]) as c:
            slot = c.cluster("keyslot", key)
            for start, end, (_, port, *_) in (
                (s[0], s[1], s[2]) for s in c.execute_command("CLUSTER", "SLOTS")
            ):
                if start <= slot <= end:
                    return int(port)
        raise AssertionError(f"no node serves slot {slot}")

    def reset_stats(self) -> None:
        for port in self.ports:
            with client(port) as c:
                c.config_resetstat()


class SentinelSetup(_Processes):
    """A primary and its replica, watched by three Sentinels (quorum 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.primary, self.replica, *self.sentinels = free_ports(5)

    def __enter__(self) -> Self:
        self.start(self.primary, *self.server_args(self.primary))
        self.start(
            self.replica,
            *self.server_args(self.replica),
            *("--replicaof", "127.0.0.1", str(self.primary)),
        )
        until(
            lambda: client(self.replica).info("replication")["master_link_status"] == "up",
            "the replica in sync",
        )
        for port in self.sentinels:
            config = self.dir / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
            )
            self.start(port, str(config), "--sentinel")
        for port in self.sentinels:
            until(
                lambda port=port: (
                    len(client(port).sentinel_slaves(SERVICE)) == 1
                    and int(client(port).sentinel_master(SERVICE)["num-other-sentinels"]) == 2
                ),
                f"sentinel {port} seeing the replica and the other sentinels",
            )
        return self

    def url(self, db: int = 0, *, reverse: bool = False) -> str:
        """The store URL; ``reverse`` names the Sentinels in the other order (another link)."""
        ports = self.sentinels[::-1] if reverse else self.sentinels
        nodes = ",".join(f"127.0.0.1:{port}" for port in ports)
        return f"redis+sentinel://{nodes}/{SERVICE}/{db}"

    def primary_port(self) -> int:
        """The port the Sentinels give for the primary now."""
        with client(self.sentinels[0]) as c:
            _, port = c.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: the replica is promoted, the primary demoted."""
        with client(self.sentinels[0]) as c:
            c.sentinel_failover(SERVICE)

    def role(self, port: int) -> Any:
        with client(port) as c:
            return c.info("replication")["role"]
