# patchboard: `make test` works on a fresh machine; the Makefile
# builds its own virtualenvs with a Python >= 3.12 that it finds by itself.

VENV      := .venv
VENV52    := .venv-django52
PY        := $(VENV)/bin/python
PY52      := $(VENV52)/bin/python
NOX       := $(VENV)/bin/nox

# pyenv installs first (their shims fail unless a version is selected), then PATH.
PY_CANDIDATES := $(wildcard $(HOME)/.pyenv/versions/3.1[3-9]*/bin/python3) \
                 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3) \
                 python3.14 python3.13 python3.12 python3
BASE_PYTHON ?= $(shell for c in $(PY_CANDIDATES); do \
	  "$$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 \
	  && { command -v "$$c"; break; }; done)

.PHONY: test lint typecheck docs docs-serve pytest pytest-django52 pytest-django60 matrix package django-suite bench fleet mutation demo serve stress stress-ci clean python

python:
	@if [ -z "$(BASE_PYTHON)" ]; then \
	  echo "error: patchboard needs Python >= 3.12 (Django 6 does); none found among:" >&2; \
	  echo "  $(PY_CANDIDATES)" >&2; \
	  echo "install one (e.g. 'pyenv install 3.13') or run 'make BASE_PYTHON=/path/to/python3.12 test'" >&2; \
	  exit 1; fi

$(VENV)/.installed: pyproject.toml | python
	rm -rf $(VENV)
	$(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY) -m pip install --quiet -e . --group test --group lint --group bench --group demo --group stress --group docs --group release
	touch $@

$(VENV52)/.installed: pyproject.toml | python
	rm -rf $(VENV52)
	$(BASE_PYTHON) -m venv $(VENV52)
	$(PY52) -m pip install --quiet --upgrade "pip>=25.1"
	$(PY52) -m pip install --quiet -e . --group test
	$(PY52) -m pip install --quiet --group django52
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check patchboard tests bench examples noxfile.py
	$(VENV)/bin/ruff format --check patchboard tests bench examples noxfile.py

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# The documentation site: mkdocs.yml, docs/ as its source, built into site/ (git-ignored)
# with warnings as errors (a broken link, an unknown name in the API reference). Its
# snippets run under `make pytest` (tests/docs).
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

DOCS_PORT ?= 8002
docs-serve: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

pytest: $(VENV)/.installed
	$(VENV)/bin/pytest

# The supported-versions matrix (noxfile.py): Python 3.12 and 3.13 x Django 5.2 LTS, 6.0
# and 6.1, each session in a virtualenv of its own (.nox/). One session, with arguments
# for pytest: .venv/bin/nox -s "tests-3.12(django='6.0')" -- -x
matrix: $(VENV)/.installed
	$(NOX)

# make test's share of the matrix. Django 5.2 LTS: the suite less the example's end-to-end
# tests, bench/load.py's, the Tasks engines' and the stress harness's (they run once, on
# Django 6; noxfile.py lists them). Python 3.12 with Django 6.0: the suite less its stress
# and browser parts and the harness's own tests (tests/harness: the example and the bench
# tools), which `make pytest` runs on Python 3.13 with Django 6.1.
pytest-django52: $(VENV)/.installed
	$(NOX) -s "tests-3.13(django='5.2')"

pytest-django60: $(VENV)/.installed
	$(NOX) -s "tests-3.12(django='6.0')" -- -m "not stress" --ignore=tests/harness \
	  --ignore=tests/project/test_status_page_browser.py --ignore=tests/project/test_toolbar_browser.py

# The sdist and the wheel (dist/), checked as PyPI will read them. tests/package builds
# its own and installs it in a clean virtualenv (under `make pytest`).
package: $(VENV)/.installed
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

# Django's own dispatch and signals test suites, with patchboard.Signal swapped in.
django-suite: $(VENV)/.installed $(VENV52)/.installed
	$(PY) tests/django_suite.py
	$(PY52) tests/django_suite.py

test: lint typecheck docs pytest pytest-django52 pytest-django60 django-suite stress-ci

bench: $(VENV)/.installed
	$(PY) -m bench

# The example shop under locust, seen through /metrics: docs/fleet-under-load.png, drawn from
# a scrape a second (bench/fleet.py). locust is not a dependency: PATCHBOARD_LOCUST points at
# the locust of a virtualenv of its own (or it is on PATH). Never part of `make test`.
fleet: $(VENV)/.installed
	$(PY) -m bench.fleet

# Mutation testing, slow and never part of `make test`: mutmut 3 (fork server mode) on the
# core modules, each target with its own tests (large modules on a fixed sample); prints a
# score per target (tests/mutation). `make mutation MUTATION_TARGETS=breaker` runs one.
MUTATION_TARGETS ?=
mutation: $(VENV)/.installed
	$(PY) -m pip install --quiet --group mutation
	$(PY) -m tests.mutation $(MUTATION_TARGETS)

# The example shop (examples/): a scripted walkthrough that exits 0 only if every step
# behaved, or the stack left running for curl and the status page until Ctrl-C.
demo: $(VENV)/.installed
	$(PY) -m examples.demo

# Under load and faults (bench/stress): the example shop under uvicorn --workers 2, its
# breakers in a private Redis that is stopped and restarted, its carriers killed and
# restarted, clients gone mid-request, orders' background listeners on RQ through the
# outbox while its broker is stopped and restarted; then the real Tasks engines
# (pytest -m stress).
# A one-screen report; exits 1 if any check failed. `make test` runs the bounded
# configuration (its pytest part already ran with the rest of the suite).
stress: $(VENV)/.installed
	$(PY) -m bench.stress

stress-ci: $(VENV)/.installed
	$(PY) -m bench.stress --ci --no-pytest

SERVE_PORT ?= 8000
serve: $(VENV)/.installed
	$(PY) -m examples.demo --serve --port $(SERVE_PORT)

clean:
	rm -rf $(VENV) $(VENV52) .nox .pytest_cache .mypy_cache .ruff_cache build dist site
