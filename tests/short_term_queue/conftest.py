from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from django.test import override_settings


@pytest.fixture
def configure_queue() -> Iterator[Callable[..., None]]:
    """
    Set ``PATCHBOARD["SHORT_TERM_QUEUE"]`` (lower-case keys) until the test
    ends: the process's queue, which a dispatch with ``queue=True`` goes
    through, is built from it.
    """
    with ExitStack() as stack:

        def configure(**values: Any) -> None:
            section = {key.upper(): value for key, value in values.items()}
            stack.enter_context(override_settings(PATCHBOARD={"SHORT_TERM_QUEUE": section}))

        yield configure
