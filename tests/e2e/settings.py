"""
Settings of the end-to-end project, shared by the sender and the worker.

``PATCHBOARD_E2E_DATABASE`` holds the ``DATABASES["default"]`` dict as JSON;
the test creates that database and drops it afterwards.
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
PATCHBOARD: dict[str, object] = {"BACKGROUND": {"MAX_RESCHEDULES": 10}}
