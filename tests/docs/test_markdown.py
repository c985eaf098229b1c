"""What ``mkdocs build --strict`` does not catch in the pages' Markdown."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def is_table_row(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) > 1 and stripped.startswith("|") and stripped.endswith("|")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_a_table_ends_with_a_blank_line(page: Path) -> None:
    """
    A line right under a table is read as one more row of it (a list item
    became 45 rows of the breakers' defaults table once).
    """
    lines = page.read_text().splitlines()
    glued = [
        f"{page.name}:{number + 2}: {after.strip()[:60]}"
        for number, (line, after) in enumerate(pairwise(lines))
        if is_table_row(line) and after.strip() and not is_table_row(after)
    ]
    assert glued == []
