"""
System checks: bad ``PATCHBOARD`` settings are reported at start-up with ids,
not as tracebacks at import.

``patchboard.E001``
    ``PATCHBOARD`` is not a dict, or one of its keys is unknown or invalid.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, register

from patchboard._config import parse, raw_setting
from patchboard._log import logger

E001_ID = "patchboard.E001"


def settings_error(problem: str) -> Error:
    """The ``patchboard.E001`` error for one problem in ``PATCHBOARD``."""
    return Error(
        problem,
        hint="See the settings reference in patchboard's README.",
        obj="settings.PATCHBOARD",
        id=E001_ID,
    )


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    _, errors = parse(raw_setting())
    return [settings_error(str(error)) for error in errors]


def log_invalid_settings(problems: list[str]) -> None:
    """Log ``settings_invalid`` with every problem the checks found, if there is any."""
    if problems:
        logger().error("settings_invalid", problems=problems, check="python manage.py check")
