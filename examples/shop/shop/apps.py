import logging
import os
import sys

import structlog
from django.apps import AppConfig
from django.conf import settings


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self) -> None:
        configure_logging(json_lines=settings.LOG_FORMAT == "json")
        # Connects the listeners in every process: the web server and the Tasks worker.
        from shop import receivers

        receivers.connect_carriers(settings.CARRIERS)


def configure_logging(*, json_lines: bool) -> None:
    """patchboard logs through structlog and never configures it: the project does."""
    if json_lines:
        processors = [
            add_pid,  # uvicorn --workers N: N processes write to one log
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        processors = [
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()),
        ]
    structlog.configure(
        processors=[structlog.processors.add_log_level, *processors],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )


def add_pid(logger: object, method: str, event_dict: dict) -> dict:
    event_dict["pid"] = os.getpid()
    return event_dict
