"""
Settings of the end-to-end project, shared by the sender and the worker.

``PATCHBOARD_E2E_DATABASE`` holds the ``DATABASES["default"]`` dict as JSON;
the test creates that database and drops it afterwards.
``PATCHBOARD_E2E_RQ_URL``, when set, makes RQ the Tasks backend
(django-tasks-rq, worked by ``manage.py rqworker``) on that Redis, instead of
django-tasks-db's ``db_worker``. ``PATCHBOARD_E2E_CELERY_URL``, when set,
makes Celery the Tasks backend (django-tasks-celery, worked by ``celery -A
tests.e2e.celery worker``), its broker and result backend on that Redis;
``PATCHBOARD_E2E_CELERY_ACKS_LATE=1`` adds Celery's at-least-once settings.
``PATCHBOARD_E2E_SPANS``, when set, turns OpenTelemetry on with the SDK:
every span the process ends is appended to that file, one JSON object a line
(the sender's and the worker's: tests/background/test_traced_workers.py).
"""

import json
import os

SECRET_KEY = "patchboard-e2e"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "patchboard",
    "django_tasks_db",
    "tests.testapp",
    "tests.e2e",
]
DATABASES = {"default": json.loads(os.environ["PATCHBOARD_E2E_DATABASE"])}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
RQ_URL = os.environ.get("PATCHBOARD_E2E_RQ_URL")
if RQ_URL:
    INSTALLED_APPS += ["django_rq"]
    # DEFAULT_TIMEOUT: a job whose worker died is found abandoned this long after it started.
    RQ_QUEUES = {"default": {"URL": RQ_URL, "DEFAULT_TIMEOUT": 5}}
    TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}
CELERY_URL = os.environ.get("PATCHBOARD_E2E_CELERY_URL")
if CELERY_URL:
    CELERY_BROKER_URL = CELERY_URL
    CELERY_RESULT_BACKEND = CELERY_URL  # the report reads the tasks' results there
    CELERY_RESULT_EXTENDED = True  # results name their task and keep its arguments
    CELERY_TASK_TRACK_STARTED = True  # a task being run reads RUNNING, as on RQ
    # A sender subscribes to each task's result before publishing it, and by default
    # retries that 20 times a second apart while Redis is down: every delivery to a
    # stopped broker would then take 20 s before the outbox could count it failed.
    CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"retry_policy": {"max_retries": 1}}
    # patchboard's JSON log lines go to stdout as they are, for the test to read.
    CELERY_WORKER_REDIRECT_STDOUTS = False
    if os.environ.get("PATCHBOARD_E2E_CELERY_ACKS_LATE"):
        CELERY_TASK_ACKS_LATE = True
        CELERY_TASK_REJECT_ON_WORKER_LOST = True
        # A message taken by a worker that died is delivered again after this
        # (Redis' default is an hour), checked every second.
        CELERY_BROKER_TRANSPORT_OPTIONS = {
            "visibility_timeout": 2,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    TASKS = {
        "default": {
            "BACKEND": "django_tasks_celery.CeleryBackend",
            "OPTIONS": {"CELERY_APP": "tests.e2e.celery.app"},
        }
    }
# OUTBOX_GRACE: the relay takes an entry its sender died before delivering after 1 s.
PATCHBOARD: dict[str, object] = {"BACKGROUND": {"MAX_RESCHEDULES": 10, "OUTBOX_GRACE": 1}}

SPANS = os.environ.get("PATCHBOARD_E2E_SPANS")
if SPANS:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    # Appended line by line, by each process (RQ's work horse included) as it ends a span.
    _out = open(SPANS, "a", encoding="utf-8")  # noqa: SIM115 (open for the process's life)
    _provider = TracerProvider()
    _provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(out=_out, formatter=lambda span: span.to_json(indent=None) + "\n")
        )
    )
    trace.set_tracer_provider(_provider)
    PATCHBOARD["OPENTELEMETRY"] = True
