"""The API reference (docs/reference.md) documents every public name."""

from __future__ import annotations

import re
from pathlib import Path

import patchboard

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def test_every_public_name_of_patchboard_has_its_entry() -> None:
    entries = re.findall(r"^::: patchboard\.(\w+)$", REFERENCE.read_text(), re.MULTILINE)
    modules = {"testing", "urls"}
    assert sorted(name for name in entries if name not in modules) == sorted(patchboard.__all__)


def test_the_testing_helpers_and_the_urls_are_documented() -> None:
    entries = re.findall(r"^::: (patchboard\.\w+)$", REFERENCE.read_text(), re.MULTILINE)
    assert {"patchboard.testing", "patchboard.urls"} <= set(entries)
