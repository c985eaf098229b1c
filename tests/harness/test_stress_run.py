"""The stress run's own diagnosis, when a worker stops answering (bench/stress/run.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.stress.config import CI
from bench.stress.run import StressRun


def stack_logging(log: Path) -> Any:
    shop = SimpleNamespace(log=log)
    return SimpleNamespace(service=lambda name: shop)


def test_a_worker_gone_is_named_with_what_uvicorn_said_about_it(tmp_path: Path) -> None:
    worker = subprocess.Popen([sys.executable, "-c", "pass"])
    worker.wait()
    log = tmp_path / "shop.log"
    log.write_text(
        f"INFO:     Started server process [{worker.pid + 1}]\n"
        f"INFO:     Child process [{worker.pid}] died\n"
    )
    said = StressRun(CI).whereabouts(stack_logging(log), worker.pid)
    told = f"INFO:     Child process [{worker.pid}] died"
    assert said == f"worker {worker.pid} is gone (never answered); uvicorn said: {told}"


STUCK = """
import faulthandler, signal, sys, time

def stuck_in_a_blocking_call():
    print("ready", flush=True)  # here: a stack dumped from now on names this function
    time.sleep(30)

faulthandler.register(signal.SIGUSR1, all_threads=True)  # as bench.stress.shop does
stuck_in_a_blocking_call()
"""


def test_a_worker_still_running_is_named_with_its_cpu_time_and_its_stacks(tmp_path: Path) -> None:
    log = tmp_path / "shop.log"
    with log.open("ab") as output:
        worker = subprocess.Popen([sys.executable, "-c", STUCK], stdout=output, stderr=output)
    try:
        while "ready" not in log.read_text():
            time.sleep(0.01)
        run = StressRun(CI)
        run.answered[worker.pid] = 12.5
        said = run.whereabouts(stack_logging(log), worker.pid)
    finally:
        worker.kill()
        worker.wait()
    first, stacks = said.split("\n", 1)
    assert first.startswith(f"worker {worker.pid} still runs (")
    assert first.endswith(" s of CPU so far, last answered at 12.5 s); its threads:")
    assert "in stuck_in_a_blocking_call" in stacks
    assert worker.returncode == -9  # it was still there to be killed: the dump did not stop it
