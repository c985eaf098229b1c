"""
System checks: bad ``PATCHBOARD`` settings are reported at start-up with ids,
not as tracebacks at import.

``patchboard.E001``
    ``PATCHBOARD`` is not a dict, or one of its keys is unknown or invalid.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.core.checks import CheckMessage, Error, register

from patchboard._config import parse, raw_setting
from patchboard._log import logger

E001_ID = "patchboard.E001"


def settings_error(problem: str) -> Error:
    """The ``patchboard.E001`` error for one problem in ``PATCHBOARD``."""
    return Error(
        problem,
        hint="See the Settings page of patchboard's documentation.",
        obj="settings.PATCHBOARD",
        id=E001_ID,
    )


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    _, errors = parse(raw_setting())
    return [settings_error(str(error)) for error in errors]


_NAMED = re.compile(r"PATCHBOARD(?:\[\"(?P<key>[^\"]*)\"\])?: (?P<problem>.*)", re.DOTALL)
_BREAKER = re.compile(r"circuit breaker (?P<name>'[^']*'|\"[^\"]*\"): (?P<problem>.*)", re.DOTALL)


def setting_and_problem(error: CheckMessage) -> tuple[str, str]:
    """
    The ``PATCHBOARD`` key an error of patchboard's checks is about
    (``SHORT_TERM_QUEUE.MAX_WORKERS``, ``BREAKERS.carrier-ups``; ``PATCHBOARD``
    for the whole dict) and its problem, out of the message's own prefix.
    """
    if found := _NAMED.fullmatch(error.msg):
        return found["key"] or "PATCHBOARD", found["problem"]
    if found := _BREAKER.fullmatch(error.msg):
        return f"BREAKERS.{found['name'][1:-1]}", found["problem"]
    return str(error.obj), error.msg


def log_invalid_settings(errors: Sequence[CheckMessage]) -> None:
    """
    Log ``settings_invalid`` once per problem the checks found: the key, the
    problem and how many there are, as plain key/values.

    Not under a management command (``manage.py``, ``django-admin``,
    ``python -m django``): ``check``, ``runserver``, ``migrate`` and the
    others run the system checks, which print the same problems; where none
    runs (``shell``), the first dispatch raises, naming the key. A server
    (uvicorn, gunicorn) runs no check: this is how it says so at start-up.
    """
    if not errors or _under_management_command():
        return
    for error in errors:
        setting, problem = setting_and_problem(error)
        logger().error(
            "settings_invalid",
            setting=setting,
            problem=problem,
            problems=len(errors),
            check="python manage.py check",
        )


def _under_management_command() -> bool:
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return program.name in ("manage.py", "django-admin") or (
        program.name == "__main__.py" and program.parent.name == "django"
    )
