"""Settings for patchboard's own test suite (SQLite in memory, in-process breakers)."""

from importlib.util import find_spec

SECRET_KEY = "patchboard-tests"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "patchboard",
    "tests.testapp",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# Django >= 6.0 has django.tasks; on 5.2 the django-tasks backport provides the same backends.
_TASKS = "django.tasks" if find_spec("django.tasks") else "django_tasks"
TASKS = {
    "default": {"BACKEND": f"{_TASKS}.backends.immediate.ImmediateBackend"},
    # Keeps enqueued tasks in memory until a test runs them (background listeners).
    "dummy": {
        "BACKEND": f"{_TASKS}.backends.dummy.DummyBackend",
        "QUEUES": ["default", "emails"],
    },
}
PATCHBOARD: dict[str, object] = {}
