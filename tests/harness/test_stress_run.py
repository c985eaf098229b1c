"""The stress run's own diagnosis, when a worker stops answering (bench/stress/run.py)."""

from __future__ import annotations

import subprocess
import sys
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
    assert said == f"worker {worker.pid} is gone; uvicorn said: {told}"


def test_a_worker_still_running_is_named_with_its_cpu_time(tmp_path: Path) -> None:
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        said = StressRun(CI).whereabouts(stack_logging(tmp_path / "shop.log"), worker.pid)
    finally:
        worker.kill()
        worker.wait()
    assert said.startswith(f"worker {worker.pid} still runs (")
