"""
Settings of the example shop. Environment variables (the demo sets them):

``SHOP_DATABASE``     the SQLite file (default: examples/shop.sqlite3)
``SHOP_CARRIERS_URL`` where the carriers service listens
``SHOP_LOG_FORMAT``   ``console`` (default) or ``json``: one JSON object per line
``SHOP_BREAKERS``     ``on`` (default) or ``off``: the carrier listeners without their
                      circuit breakers (``make bench`` compares the two)
``SHOP_BREAKER_RESET_TIMEOUT``  seconds a carrier's open circuit waits before a probe
                      (default 3, for the demo; ``make bench`` runs with 30)
``SHOP_DEBUG``        ``1`` (default) or ``0``
``PROMETHEUS_MULTIPROC_DIR``  an empty directory: ``/metrics`` then adds up every
                      worker's metrics (``uvicorn --workers N``); prometheus_client reads it
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "an-example-never-deployed"
DEBUG = os.environ.get("SHOP_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks_db",
    "patchboard",
    "shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "shop.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
STATIC_URL = "static/"
LOGIN_URL = "admin:login"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DATABASE", BASE_DIR.parent / "shop.sqlite3"),
        # The web process and the Tasks worker write to the same file.
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Background listeners run in `manage.py db_worker`, outside the request.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

CARRIERS_URL = os.environ.get("SHOP_CARRIERS_URL", "http://127.0.0.1:8001")
CARRIERS = ["ups", "fedex", "dhl", "usps", "dpd", "gls"]
CARRIER_TIMEOUT = 1.0
"""Seconds a quote may take; the checkout page does not wait longer for any carrier."""
QUOTES_BUDGET = float(os.environ.get("SHOP_QUOTES_BUDGET", "2.0"))
"""Seconds the quotes page has in all (its deadline): whatever the carriers do, it answers."""
CARRIER_BREAKERS = os.environ.get("SHOP_BREAKERS", "on") != "off"
"""Whether each carrier listener calls through its circuit (``carriers[<name>]`` below)."""
CARRIER_BREAKER = "carriers"
"""The keyed breaker of the carriers: carrier ``name``'s circuit is ``carriers[<name>]``."""
BREAKER_RESET_TIMEOUT = float(os.environ.get("SHOP_BREAKER_RESET_TIMEOUT", "3"))

PATCHBOARD = {
    "BREAKERS": {
        # One definition, one circuit per carrier: carriers[ups], carriers[fedex], ...,
        # made on first use; when one carrier is down only its circuit opens. A circuit
        # opens once half of its carrier's last 6 calls failed (and at least 4 were made):
        # a carrier that fails now and then keeps its circuit closed, where a run of
        # failures would open it. A probe goes through after 3 s (short, for the demo:
        # think 30 s, and a window of 100 calls, in production).
        CARRIER_BREAKER: {
            "key": "shop.receivers.carrier_of",
            "trip_rule": "rate",
            "failure_rate": 0.5,
            "window_size": 6,
            "minimum_calls": 4,
            "reset_timeout": BREAKER_RESET_TIMEOUT,
        },
    },
    # At most 12 carrier calls at once in this process; a call that waited 1.5 s is
    # not worth starting any more: it expires and the carrier's fallback answers.
    "SHORT_TERM_QUEUE": {"MIN_WORKERS": 6, "MAX_WORKERS": 12, "ITEM_EXPIRY": 1.5},
    # Prometheus metrics, scraped at /metrics (every worker's, with PROMETHEUS_MULTIPROC_DIR).
    "METRICS": True,
}

LOG_FORMAT = os.environ.get("SHOP_LOG_FORMAT", "console")
