"""
The end-to-end project's Celery app, for ``PATCHBOARD_E2E_CELERY_URL``
(tests/e2e/settings.py): ``python -m celery -A tests.e2e.celery worker``
runs it, and ``TASKS``' ``CELERY_APP`` names it to the sender.

Its configuration is the project's settings prefixed ``CELERY_``, as in
Celery's guide for Django; Celery's Django fix-up runs ``django.setup()``
when the worker starts, which builds patchboard's ``run_listener`` and so
registers it with this app before the worker takes its first message.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.settings")

app = Celery("e2e")
app.config_from_object("django.conf:settings", namespace="CELERY")
