"""
A separate Django project for the end-to-end test of background listeners:
a sender process, django-tasks-db's real ``db_worker`` process and a real
database (PostgreSQL, or an SQLite file), configured by environment variables
(see ``settings.py``). ``python -m tests.e2e.scenario send|report`` drives it.
"""
