"""
Starting the processes of the example, the stress run and the tests: each in
a process group of its own that dies with this process, and a private
``redis-server``. Standard library only: the tests on Django 5.2 import it
without the example's dependencies.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None
"""Looked up here: the child must not load libraries between fork and exec."""
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class StackError(RuntimeError):
    """A process failed to start or died; the message says which and why."""


def start_process(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    output: IO[bytes] | int | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """
    Start ``command`` in a process group of its own (stopped as a whole) that
    dies with this process; ``output`` takes its stdout and stderr (None: ours).

    Ctrl-C and SIGTERM are held back across the fork: with a ``preexec_fn``,
    Python runs its at-fork callbacks around the fork, and an exception that a
    signal handler raises inside one of them is printed and dropped ("Exception
    ignored in: <function _afterFork>"), so a Ctrl-C that landed there was lost
    and the stack went on starting. Held back, it is handled on the line after.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=None if output is None else subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,
            preexec_fn=functools.partial(prepare_child, held),
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def prepare_child(mask: set[int | signal.Signals]) -> None:
    """
    In the child, before exec: the kernel sends it SIGTERM when this process
    dies, and it gets the signal mask it would have had (exec keeps the mask).
    """
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class RedisServer:
    """
    A ``redis-server`` of its own on a free loopback port (never the shared
    one), which may be stopped and started again on the same port. As a
    context manager, started on entry and stopped on exit.

    It keeps nothing across a restart, unless ``durable``: then, as a broker
    is deployed, every write is appended to a file of its own (fsynced before
    the reply) and a restart loads it back.

    Raises:
        StackError: from the constructor, when ``binary`` is not given and no
            ``redis-server`` is on PATH; from :meth:`start`, when it does not
            answer within 10 s.
    """

    def __init__(self, binary: str | None = None, *, durable: bool = False) -> None:
        binary = binary or shutil.which("redis-server")
        if binary is None:
            raise StackError("redis-server is not on PATH (apt-get install redis-server)")
        self.binary = binary
        self.directory = tempfile.mkdtemp(prefix="patchboard-redis-") if durable else None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def start(self) -> None:
        """Start the server and wait until it answers (10 s at most)."""
        if self.directory is None:
            persistence = ("--appendonly", "no", "--dir", tempfile.gettempdir())
        else:
            persistence = ("--appendonly", "yes", "--appendfsync", "always")
            persistence += ("--dir", self.directory)
        self.process = start_process(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", *persistence),
            ],
            output=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StackError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Stop this server (only this one) and wait for it to exit."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def info(self, section: str) -> dict[str, Any]:
        """``INFO section`` from a connection of its own (counted in ``connected_clients``)."""
        import redis  # the tests' and the stress run's, not the example's

        with redis.Redis.from_url(self.url) as client:
            return client.info(section)  # type: ignore[no-any-return]
