"""
The example's processes, started and stopped together: the carriers service
and the shop under uvicorn, and django-tasks-db's ``db_worker``.

``make demo`` and ``make serve`` (:mod:`examples.demo`) and
``tests/harness/test_example_e2e.py`` start the same :class:`Stack`. Each server
listens on a loopback socket this process opened and handed over (``uvicorn
--fd``), so there is no race for a free port. Each process runs in a process
group of its own and is stopped with its group (SIGTERM, then SIGKILL) however
the ``with`` block is left; on Linux a process that outlives this one is
killed by the kernel (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

from examples.processes import ROOT, StackError, start_process

SHOP = ROOT / "examples" / "shop"
READY_TIMEOUT = 30.0
STAFF_USER = """
import os
from django.contrib.auth import get_user_model

user, _ = get_user_model().objects.get_or_create(username=os.environ["SHOP_STAFF_USER"])
user.is_staff = user.is_superuser = True
user.set_password(os.environ["SHOP_STAFF_PASSWORD"])
user.save()
"""
STOP_TIMEOUT = 5.0
CARRIERS_APP = "examples.carriers.app:app"


@dataclass(slots=True)
class Service:
    """One running process of the stack."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path | None
    """Where its output goes; ``None``: to this process's terminal."""
    restart: list[str] | None = None
    """The command to start again when the process exits (as a supervisor's
    ``Restart=always``), or ``None``: its exit is the stack's failure."""
    restarts: int = 0

    def tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(slots=True)
class Stack:
    """
    The carriers, the shop and the worker, on one SQLite file in ``workdir``.

    With ``json_logs`` (the default) each process writes its output to
    ``workdir/<name>.log`` and the shop logs one JSON object per line, which
    :meth:`events` reads back; otherwise everything goes to the terminal with
    structlog's console renderer. ``shop_port``/``carriers_port`` 0 means a
    free port; a busy preferred port falls back to a free one. ``environment``
    is added to every process's environment (``{"SHOP_BREAKERS": "off"}``).

    Raises:
        StackError: from ``start()``, when a process exits or never answers.
    """

    workdir: Path
    database: Path | None = None
    json_logs: bool = True
    shop_port: int = 0
    carriers_port: int = 0
    environment: dict[str, str] = field(default_factory=dict)
    shop_workers: int = 1
    """uvicorn's ``--workers``: more than one serves the shop from that many processes."""
    settings: str = "shop.settings"
    """The shop's ``DJANGO_SETTINGS_MODULE`` (``bench.stress`` extends the shop's)."""
    shop_options: list[str] = field(default_factory=list)
    """More of uvicorn's options for the shop."""
    tasks_worker: bool = True
    """Whether to start django-tasks-db's ``db_worker``."""
    services: list[Service] = field(default_factory=list)
    supervising: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Held while :meth:`check_alive` looks: threads that wait on the stack both call it, and
    one exited process must be started again once."""
    shop_url: str = ""
    carriers_url: str = ""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": self.settings,
            "SHOP_DATABASE": str(self.database or self.workdir / "shop.sqlite3"),
            "SHOP_CARRIERS_URL": self.carriers_url,
            "SHOP_LOG_FORMAT": "json" if self.json_logs else "console",
            "PYTHONUNBUFFERED": "1",
            # Django's static files under ASGI (make serve's admin CSS) warn on every file.
            "PYTHONWARNINGS": "ignore:StreamingHttpResponse must consume synchronous iterators",
            **self.environment,
        }

    def start(self) -> None:
        """Migrate the database, start the three processes and wait until they serve."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        carriers, shop = listen(self.carriers_port), listen(self.shop_port)
        self.carriers_url = url_of(carriers)
        self.shop_url = url_of(shop)
        self.manage("migrate", "--verbosity", "0")
        self.serve("carriers", CARRIERS_APP, carriers)
        options = ["--workers", str(self.shop_workers)] if self.shop_workers > 1 else []
        options += self.shop_options
        self.serve("shop", "shop.asgi:application", shop, "--app-dir", str(SHOP), *options)
        if self.tasks_worker:
            worker = ["db_worker", "--interval", "0.1", "--no-startup-delay", "--no-reload"]
            self.spawn("worker", [*self.manage_command(), *worker])
        deadline = time.monotonic() + READY_TIMEOUT
        self.wait_for_http("carriers", f"{self.carriers_url}/stats", deadline)
        self.wait_for_http("shop", f"{self.shop_url}/admin/login/", deadline)
        if self.tasks_worker:
            self.wait_for_output("worker", "Starting worker", deadline)

    def kill(self, name: str) -> None:
        """Stop one process of the stack (SIGKILL to its group: it gets no say)."""
        service = self.service(name)
        self.services.remove(service)
        signal_group(service.process, signal.SIGKILL)
        service.process.wait()

    def restart_carriers(self) -> None:
        """
        Start the carriers service again on its port, after :meth:`kill`; it
        starts afresh (every carrier healthy, the counters at zero).

        Raises:
            StackError: it does not answer within READY_TIMEOUT.
        """
        port = int(self.carriers_url.rsplit(":", 1)[1])
        self.serve("carriers", CARRIERS_APP, listen(port, exact=True))
        deadline = time.monotonic() + READY_TIMEOUT
        self.wait_for_http("carriers", f"{self.carriers_url}/stats", deadline)

    def stop(self) -> None:
        """Stop every process this stack started, with its process group, newest first."""
        # A second Ctrl-C (or a SIGTERM) waits until the clean-up is done, then takes effect.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            while self.services:
                terminate_group(self.services.pop().process)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    # -- starting processes -----------------------------------------------------------

    def manage_command(self) -> list[str]:
        return [sys.executable, str(SHOP / "manage.py")]

    def manage(self, *args: str, env: dict[str, str] | None = None) -> str:
        """
        Run a management command of the shop to completion (with ``env`` added
        to the environment); its output.

        Raises:
            StackError: the command failed.
        """
        done = subprocess.run(
            [*self.manage_command(), *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def create_staff_user(self, username: str, password: str) -> None:
        """Create the shop's staff superuser ``username``, or reset its password."""
        self.manage(
            "shell",
            "-c",
            STAFF_USER,
            env={"SHOP_STAFF_USER": username, "SHOP_STAFF_PASSWORD": password},
        )

    def serve(self, name: str, app: str, sock: socket.socket, *options: str) -> None:
        """Run ``app`` under uvicorn on the listening socket ``sock`` (closed here)."""
        command = [sys.executable, "-m", "uvicorn", app, "--fd", str(sock.fileno()), *options]
        command += ["--lifespan", "off", "--no-access-log", "--timeout-graceful-shutdown", "2"]
        try:
            self.spawn(name, command, pass_fds=(sock.fileno(),))
        finally:
            sock.close()

    def spawn(
        self,
        name: str,
        command: list[str],
        pass_fds: tuple[int, ...] = (),
        *,
        restart: bool = False,
    ) -> None:
        """
        Start process ``name``; with ``restart``, :meth:`check_alive` starts it
        again whenever it has exited, instead of failing.
        """
        process, log = self.launch(name, command, pass_fds)
        self.services.append(Service(name, process, log, restart=command if restart else None))

    def launch(
        self, name: str, command: list[str], pass_fds: tuple[int, ...] = ()
    ) -> tuple[subprocess.Popen[bytes], Path | None]:
        log = self.workdir / f"{name}.log" if self.json_logs else None
        output: IO[bytes] | None = log.open("ab") if log else None  # a restart appends
        try:
            process = start_process(command, env=self.env, output=output, pass_fds=pass_fds)
        finally:
            if output:
                output.close()
        return process, log

    # -- waiting ------------------------------------------------------------------------

    def service(self, name: str) -> Service:
        [service] = [s for s in self.services if s.name == name]
        return service

    def check_alive(self) -> None:
        """
        Start a process spawned with ``restart`` again if it has exited.

        Raises:
            StackError: another process of the stack has exited.
        """
        with self.supervising:
            for service in self.services:
                code = service.process.poll()
                if code is None:
                    continue
                if service.restart is None:
                    raise StackError(f"{service.name} exited with {code}:\n{service.tail()}")
                service.process, _ = self.launch(service.name, service.restart)
                service.restarts += 1

    def wait_for_http(self, name: str, url: str, deadline: float) -> None:
        while True:
            self.check_alive()
            try:
                httpx.get(url, timeout=2.0)
                return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{name} does not answer at {url}:\n{self.service(name).tail()}")
            time.sleep(0.05)

    def wait_for_output(self, name: str, text: str, deadline: float) -> None:
        service = self.service(name)
        if service.log is None:
            return  # on the terminal: nothing to read
        while text not in service.log.read_text(errors="replace"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise StackError(f"{name} never printed {text!r}:\n{service.tail()}")
            time.sleep(0.05)

    # -- logs ----------------------------------------------------------------------------

    def log_positions(self) -> dict[str, int]:
        """Where each log file ends now: :meth:`events` reads from there."""
        return {s.name: s.log.stat().st_size for s in self.services if s.log is not None}

    def events(self, since: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """The structlog events the shop and the worker logged (since ``since``), by time."""
        found = []
        for service in self.services:
            if service.log is None:
                continue
            with service.log.open("rb") as log:
                log.seek((since or {}).get(service.name, 0))
                for event in json_lines(log.read()):
                    found.append({**event, "process": service.name})
        return sorted(found, key=lambda event: event.get("timestamp", ""))


def json_lines(data: bytes) -> Iterator[dict[str, Any]]:
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue  # a line still being written


def listen(port: int, *, exact: bool = False) -> socket.socket:
    """
    A listening loopback socket on ``port``, or on a free one if that is 0 or
    taken (unless ``exact``).

    Raises:
        OSError: ``port`` is taken and ``exact`` is set.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A port a previous run just closed (or whose server was killed) sits in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        if port == 0 or exact:
            sock.close()
            raise
        sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}"


def terminate_group(process: subprocess.Popen[bytes]) -> None:
    """
    SIGTERM to the process's group; SIGKILL to whatever is left of the group
    once the process has exited, or after STOP_TIMEOUT; then reap it.
    """
    if process.returncode is not None:
        return  # reaped already: its group id may belong to someone else by now
    signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while not exited(process) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Not reaped yet: the exited process is a zombie that keeps its group id ours.
    signal_group(process, signal.SIGKILL)
    process.wait()


def exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the process has exited, without reaping it."""
    if not hasattr(os, "waitid"):
        return process.poll() is not None
    return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # the group's id is the pid of its first process
