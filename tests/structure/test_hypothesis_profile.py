"""The property tests' profile in CI (tests/conftest.py): the same examples on every run."""

from __future__ import annotations

from hypothesis import settings


def test_ci_draws_the_same_examples_every_run() -> None:
    """The profile tests/conftest.py loads under CI=true: derandomized, no example database,
    no deadline (a slow example under CI's load is not a failed property)."""
    ci = settings.get_profile("ci")
    assert ci.derandomize is True
    assert ci.database is None
    assert ci.deadline is None
