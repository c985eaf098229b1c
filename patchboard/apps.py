from __future__ import annotations

import importlib

from django.apps import AppConfig

# Importing the check modules registers patchboard's system checks (patchboard.E001 and on).
from patchboard import _checks
from patchboard._background import _checks as background_checks  # noqa: F401
from patchboard._background import _tasks
from patchboard._breaker import _checks as breaker_checks
from patchboard._config import parse, raw_setting


class PatchboardConfig(AppConfig):
    name = "patchboard"
    verbose_name = "patchboard"

    def ready(self) -> None:
        # Under uvicorn nothing runs the system checks: say once, at start-up,
        # what is wrong with PATCHBOARD (the first dispatch, or the first call
        # through a breaker on a malformed store URL, will raise).
        errors = [*_checks.check_settings(), *breaker_checks.check_breakers()]
        _checks.log_invalid_settings(errors)
        # Before any worker takes a message: Celery's knows only the tasks built by then.
        _tasks.build_at_start()
        settings, problems = parse(raw_setting())
        if settings.metrics.enabled and not problems:
            # By name, at start-up: the prometheus extra is imported only when metrics are on.
            metrics = importlib.import_module("patchboard._metrics")
            metrics.install(settings.metrics)
