"""
The documentation (README.md and the guides, docs/*.md) is a contract: what it
names exists, and every log event is in its table (docs/operations.md). That its
python blocks run is tests/docs/test_snippets.py's.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import patchboard

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = "\n\n".join(page.read_text() for page in PAGES)
EVENT = re.compile(r"^(listener|queue|circuit|background|settings)_[a-z_]+$")


def _emitted_events() -> set[str]:
    """The event names the library logs: the string literals shaped like one."""
    found: set[str] = set()
    for path in (ROOT / "patchboard").rglob("*.py"):
        if path.name == "_metrics.py":
            continue  # metric names, not events: the Observability table has them
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and EVENT.match(node.value)
            ):
                found.add(node.value)
    # Names shaped like events that are not: a status, a signal, functions, a column.
    return found - {"circuit_open", "circuit_state_changed", "queue_stats", "queue_name"}


def _documented_events() -> set[str]:
    operations = (ROOT / "docs" / "operations.md").read_text()
    table = operations[operations.index("| event | level | keys |") :]
    table = table[: table.index("\n\n")]
    return set(
        re.findall(r"`([a-z_]+)`", "\n".join(line.split("|")[1] for line in table.splitlines()[2:]))
    )


def test_every_event_the_library_logs_is_in_the_table() -> None:
    emitted = _emitted_events()
    assert emitted - _documented_events() == set()
    assert len(emitted) > 20


def test_every_public_name_the_docs_use_exists() -> None:
    used = set(re.findall(r"patchboard\.([A-Za-z_]+)\b", DOCS))
    modules = {"testing", "urls", "Signal", "receiver"}
    missing = {
        name
        for name in used - modules
        if not hasattr(patchboard, name) and not (ROOT / "patchboard" / f"{name}.py").exists()
    }
    assert missing == set()
