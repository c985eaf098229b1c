"""
Where the benchmarks' report goes, and what it says about the run: the
machine (CPU model and count, memory), the versions measured, and for each
table the command, the date and how busy the machine was.

A full ``make bench`` writes :data:`PUBLISHED`: ``BENCHMARKS.md`` at the
repository's root and its plots in ``bench/plots/``, both committed (the
README links them). A partial or ``--quick`` run writes :data:`SCRATCH`
under ``bench/results/`` (ignored by git), so a rough run never replaces the
published figures.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Output:
    """The markdown report and the folder of its PNG plots."""

    report: Path
    plots: Path

    def plot(self, name: str) -> Path:
        """Where the plot ``name`` (a file name) is written."""
        return self.plots / name

    def link(self, path: Path) -> str:
        """``path`` relative to the report, for a markdown link."""
        return Path(os.path.relpath(path, self.report.parent)).as_posix()

    def image(self, name: str, alt: str) -> str:
        """Markdown showing the plot ``name``."""
        return f"![{alt}]({self.link(self.plot(name))})"


PUBLISHED = Output(ROOT / "BENCHMARKS.md", ROOT / "bench" / "plots")
SCRATCH = Output(ROOT / "bench" / "results" / "BENCHMARKS.md", ROOT / "bench" / "results" / "plots")

VERSIONS = (
    "django",
    "asgiref",
    "anyio",
    "blinker",
    "pybreaker",
    "aiobreaker",
    "purgatory",
    "circuitbreaker",
    "redis",
    "httpx",
    "uvicorn",
)
"""The distributions whose versions the report states (patchboard's is the work tree's)."""


def _proc(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def cpu() -> str:
    """The CPU model and how many logical CPUs this process may use, from /proc/cpuinfo."""
    lines = _proc("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    model = models[0] if models else platform.processor() or "unknown CPU"
    count = len(models) or os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else count
    return f"{model}, {count} logical CPUs" + (f" ({usable} usable)" if usable != count else "")


def memory() -> str:
    """Total RAM, from /proc/meminfo."""
    for line in _proc("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024**2:.1f} GiB RAM"
    return "RAM unknown"


def load() -> str:
    """The 1-minute load average: how busy the machine was when a table started."""
    try:
        return f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load average unknown"


def versions() -> str:
    found = []
    for name in VERSIONS:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def machine() -> str:
    """The report's header: the machine and the software measured, as markdown."""
    return "\n".join(
        [
            f"- Machine: {cpu()}; {memory()}; {platform.system()} {platform.release()}",
            f"- Python: {platform.python_implementation()} {platform.python_version()}",
            f"- Versions: {versions()}",
        ]
    )


def command(argv: list[str]) -> str:
    """How this run was started, as one shell line."""
    return " ".join(["python -m bench", *argv])


def stamp(argv: list[str]) -> str:
    """The line under a table's title: its command, date and the machine's load then."""
    now = time.strftime("%Y-%m-%d %H:%M %Z")
    return f"_`{command(argv)}`, {now}, {load()}._"
