"""
What the property tests of hostile input share: a strategy for anything a
settings file or a caller could hand over, and how hard to search.

(Used by tests/project/test_settings_property.py, tests/dispatch/test_arguments_property.py
and tests/project/test_log_safety.py.)
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 1, 2**63, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, 1e12, 1e-300, -0.0, 5e-324]),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    # Never a Redis URL that reaches a server: a breaker of these examples would write to it.
    st.sampled_from(["", "log", "raise", "memory", "redis://127.0.0.1:1/15", "redis://h:99999/0"]),
    st.just("\n"),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.builds(object),
)
"""Anything a settings file or a caller could hand over, sane or not."""
