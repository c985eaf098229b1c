"""Settings for patchboard's own test suite (SQLite in memory, in-process breakers)."""

from importlib.util import find_spec

SECRET_KEY = "patchboard-tests"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    # The admin's CSS and JavaScript for the status page in a real browser
    # (tests/project/test_status_page_browser.py): pytest-django's live_server serves them.
    "django.contrib.staticfiles",
    "patchboard",
    "tests.testapp",
]
# The status page (tests/project/test_status_page.py) is served like the admin: sessions,
# CSRF, authentication and messages, with the admin mounted beside it.
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
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
STATIC_URL = "/static/"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    # A second database, for the tests about which database an instance comes from.
    "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
}
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
