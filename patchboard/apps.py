from __future__ import annotations

from django.apps import AppConfig


class PatchboardConfig(AppConfig):
    name = "patchboard"
    verbose_name = "patchboard"

    def ready(self) -> None:
        # Registers the system checks (patchboard.E001 and on).
        from patchboard import background_checks, breaker_checks, checks  # noqa: F401
