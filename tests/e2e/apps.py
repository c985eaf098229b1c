import sys

import structlog
from django.apps import AppConfig


class E2EConfig(AppConfig):
    name = "tests.e2e"
    label = "e2e"

    def ready(self) -> None:
        # The application (not patchboard) configures logging: one JSON object
        # per line on stdout, for the test to read.
        structlog.configure(
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(default=str),
            ],
            logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        )
        # Connects the background listeners, in the sender and in the worker alike.
        from tests.e2e import listeners  # noqa: F401
