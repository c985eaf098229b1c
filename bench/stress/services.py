"""
What the stress run reads of the shop's worker processes from ``/proc``, and
of its RQ queue (its private ``redis-server`` instances are
:class:`examples.processes.RedisServer`).
"""

from __future__ import annotations

import os
from pathlib import Path


def workers(pid: int) -> list[int]:
    """
    The worker processes of uvicorn's supervisor ``pid``: its children started
    by multiprocessing's ``spawn`` (not its resource tracker).
    """
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(child for child in found if b"spawn_main" in cmdline(child))


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` (kB) and ``Threads`` of a process, from ``/proc/<pid>/status``."""
    wanted = {"VmRSS", "Threads"}
    found: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, _, value = line.partition(":")
        if key in wanted:
            found[key] = int(value.split()[0])
    return found


def stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat``'s fields after the command name (the state first); [] once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, from ``/proc/<pid>/stat``."""
    fields = stat_fields(pid)
    if not fields:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rq_busy(url: str, *, live_workers_only: bool = False) -> int:
    """
    Jobs of the RQ queue ``default`` (on the broker at ``url``) queued,
    scheduled, being taken or running. Running jobs are those of the started
    registry, or with ``live_workers_only``, the jobs of the workers whose
    process still runs: a worker that died mid-job (an ``rqworker`` exits when
    its broker goes away while it watches a job) leaves its job in the
    registry until the job's heartbeat lapses, minutes later, and one that
    died while taking a job leaves it in the intermediate list until a
    worker's maintenance pass: with ``live_workers_only`` that list is not
    counted either (a live worker's job passes through it in a moment: ask
    twice, apart, to be sure the queue is idle).
    """
    from redis import Redis
    from rq import Queue, Worker
    from rq.registry import ScheduledJobRegistry, StartedJobRegistry

    with Redis.from_url(url) as connection:
        queue = Queue("default", connection=connection)
        scheduled = ScheduledJobRegistry(queue=queue)  # type: ignore[no-untyped-call]
        if live_workers_only:
            workers = Worker.all(queue=queue)
            running = sum(1 for w in workers if alive(w.pid) and w.get_state() == "busy")
        else:
            running = StartedJobRegistry(queue=queue).count
        return int(
            len(queue)
            + scheduled.count
            # A worker moves a job it takes from the queue to this list, then to the
            # started registry: counted, or a job in between looks like nothing pending.
            + (0 if live_workers_only else connection.llen(queue.intermediate_queue_key))
            + running
        )


def state(pid: int) -> str:
    """A process's state letter in ``/proc/<pid>/stat`` (``T``: stopped); "" once it is gone."""
    fields = stat_fields(pid)
    return fields[0] if fields else ""


def alive(pid: int | None) -> bool:
    """Whether process ``pid`` still runs (not gone, not a zombie)."""
    return pid is not None and state(pid) not in {"", "Z", "X"}
