"""
End to end: the example shop (examples/shop) under uvicorn, its carriers
service and django-tasks-db's worker run as real processes on loopback
ports, driven over HTTP by the walkthrough that ``make demo`` prints
(examples/walkthrough.py). The steps are played once, in order; each test
reports one step's checks. Then ``make serve``'s command, stopped as a user
or a service manager stops it.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from examples.processes import ROOT
from examples.stack import Stack
from examples.walkthrough import Step, Walkthrough


@dataclass(frozen=True, slots=True)
class Played:
    steps: dict[str, Step]
    pids: list[int]
    """The stack's processes, each the leader of its process group."""


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Played:
    with Stack(tmp_path_factory.mktemp("example")) as stack:
        steps = asyncio.run(Walkthrough(stack).run())
        pids = [service.process.pid for service in stack.services]
    return Played({step.name: step for step in steps}, pids)


@pytest.mark.parametrize("name", [name for name, _ in Walkthrough.STEPS])
def test_step_behaves_as_described(played: Played, name: str) -> None:
    step = played.steps.get(name)
    if step is None:
        pytest.fail(f"{name} was not played: an earlier step failed", pytrace=False)
    assert step.passed, step.report()


def test_the_stack_leaves_no_process_behind(played: Played) -> None:
    assert len(played.pids) == 3  # the carriers, the shop, the worker
    for pid in played.pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nobody is left in the group


class Serving:
    """``python -m examples.demo --serve``, running; its output read as it comes."""

    READY = "The example shop is running"

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "examples.demo", "--serve", "--port", str(port)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_until_serving(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            if line is None:
                pytest.fail(f"it exited before serving:\n{''.join(self.output)}")
            self.output.append(line)
            if self.READY in line:
                return

    def wait(self, timeout: float = 60.0) -> tuple[int, str]:
        """Its exit status, and everything it (and the stack) printed."""
        code = self.process.wait(timeout)
        self.reader.join(timeout)  # the stack's processes, which share the pipe, are gone too
        while (line := self.lines.get_nowait()) is not None:
            self.output.append(line)
        return code, "".join(self.output)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def serving() -> Iterator[Serving]:
    started = Serving()
    try:
        started.wait_until_serving()
        yield started
    finally:
        started.kill()


def _child_serving(parent: int, app: str) -> int:
    """The pid of ``parent``'s child whose command line names ``app`` (Linux's /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == parent and app.encode() in command:
            return int(entry.name)
    pytest.fail(f"no child of {parent} serves {app}")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stopped_with_a_signal_stops_the_stack_and_exits_0(
    serving: Serving, stop: signal.Signals
) -> None:
    """``make serve`` stopped with SIGTERM or Ctrl-C: "stopped", exit 0, so make says nothing."""
    serving.process.send_signal(stop)
    code, output = serving.wait()
    assert code == 0, output
    assert f"stopped ({stop.name}): everything it started is stopped" in output
    assert "did not start" not in output


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the shop in /proc")
def test_serve_whose_shop_got_sigterm_stops_the_stack_and_exits_0(serving: Serving) -> None:
    """
    Regression: a service manager stopping the whole tree signals the shop
    too, maybe first: "the stack did not start: shop exited with -15", exit 1.
    """
    os.kill(_child_serving(serving.process.pid, "shop.asgi:application"), signal.SIGTERM)
    code, output = serving.wait()
    assert code == 0, output
    assert "stopped (shop got SIGTERM): everything it started is stopped" in output
    assert "did not start" not in output
