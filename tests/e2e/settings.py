"""
Settings of the end-to-end project, shared by the sender and the worker.

``PATCHBOARD_E2E_DATABASE`` holds the ``DATABASES["default"]`` dict as JSON;
the test creates that database and drops it afterwards.
``PATCHBOARD_E2E_RQ_URL``, when set, makes RQ the Tasks backend
(django-tasks-rq, worked by ``manage.py rqworker``) on that Redis, instead of
django-tasks-db's ``db_worker``.
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
# OUTBOX_GRACE: the relay takes an entry its sender died before delivering after 1 s.
PATCHBOARD: dict[str, object] = {"BACKGROUND": {"MAX_RESCHEDULES": 10, "OUTBOX_GRACE": 1}}
