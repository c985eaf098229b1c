"""
Every ```python block of README.md and docs/*.md runs, page by page.

A page's blocks run in order in one namespace (names a block defines serve
the blocks after it), under the test settings, through Sybil's Markdown
parser. ``console``, ``text``, ``json`` and other blocks are not Python and
are left alone. Setup a reader needs not see (a stand-in for an HTTP client,
a model instance) is an invisible block, an HTML comment the site and GitHub
hide::

    <!-- invisible-code-block: python
    order = Order.objects.create(reference="A-1")
    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy"}}
    -->

``settings`` there is pytest-django's fixture: what a page changes through it
is restored after the page. The page runs in a transactional test database.

A block that cannot run here is preceded by ``<!-- skip: next "why" -->``:
:data:`SKIPPED` lists each one, so a new skip is a decision in this file.

Two things are added to plain ``exec``:

- A block may ``await`` at its top level (an async view's lines): it runs on
  the page's event loop, one for the whole page.
- A block whose first line names a file (``# shipping/signals.py``) becomes
  that module (``shipping.signals``, in ``sys.modules`` for the page), so the
  quickstart's files import each other as they would in a project; its names
  join the page's namespace too.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import inspect
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import SkipTest

import django
import pytest
import structlog
from sybil import Example, Sybil
from sybil.evaluators.python import pad
from sybil.parsers.markdown import CodeBlockParser, SkipParser

# The pages are written for Django 6 (django.tasks, not the 5.2 backport's django_tasks);
# `make pytest` runs them there.
pytestmark = pytest.mark.skipif(
    django.VERSION < (6, 0), reason="the docs' snippets are written for Django 6 (django.tasks)"
)

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]

SKIPPED: dict[str, list[str]] = {}
"""Per page, the reason of each block that is skipped, in page order."""

MODULE_HEADER = re.compile(r"# (?P<path>\w+(?:/\w+)+)\.py\b")


class PageRun:
    """The state a page's blocks share: an event loop, the modules they became."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.modules: list[str] = []

    def __call__(self, example: Example) -> None:
        __tracebackhide__ = True
        source: str = example.parsed
        code = compile(
            pad(source, example.line + example.parsed.line_offset),
            example.path,
            "exec",
            flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
            dont_inherit=True,
        )
        namespace = example.namespace
        header = MODULE_HEADER.match(source)
        if header is not None:
            namespace = self.module(header["path"].replace("/", ".")).__dict__
        if code.co_flags & inspect.CO_COROUTINE:
            self.runner.run(eval(code, namespace))
        else:
            exec(code, namespace)
        if namespace is not example.namespace:
            example.namespace.update(
                (name, value) for name, value in namespace.items() if not name.startswith("__")
            )
        example.namespace.pop("__builtins__", None)

    def module(self, name: str) -> types.ModuleType:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            dotted = ".".join(parts[:depth])
            if dotted in sys.modules and dotted not in self.modules:
                raise AssertionError(f"a snippet module would replace the real {dotted!r}")
            if dotted not in sys.modules:
                module = types.ModuleType(dotted)
                if depth < len(parts):
                    module.__path__ = []  # a package, so its submodules import
                sys.modules[dotted] = module
                self.modules.append(dotted)
                if depth > 1:
                    setattr(sys.modules[".".join(parts[: depth - 1])], parts[depth - 1], module)
        return sys.modules[name]

    def close(self) -> None:
        self.runner.close()
        for name in self.modules:
            sys.modules.pop(name, None)


@pytest.fixture
def structlog_untouched() -> Iterator[None]:
    """A page may configure structlog (the logging guide does): put it back afterwards."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def tracer_provider_untouched() -> Iterator[None]:
    """
    A page may install OpenTelemetry's global tracer provider (the operations
    guide does), which a process can set once: the page gets a fresh
    set-once, and tests/tracing's provider is put back afterwards. The reset
    is what opentelemetry-test-utils' ``reset_trace_globals`` does.
    """
    try:
        from opentelemetry import trace
        from opentelemetry.util._once import Once
    except ImportError:  # the opentelemetry extra is not installed: nothing to keep
        yield
        return
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    try:
        yield
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("page", PAGES)
def test_every_python_snippet_of_the_page_runs(
    page: str, settings: Any, structlog_untouched: None, tracer_provider_untouched: None
) -> None:
    run = PageRun()
    sybil = Sybil(parsers=[CodeBlockParser(language="python", evaluator=run), SkipParser()])
    document = sybil.parse(ROOT / page)
    document.namespace["settings"] = settings
    ran: list[int] = []
    skipped: list[str] = []
    try:
        for example in document:
            if isinstance(example.region.parsed, tuple):  # a skip directive
                example.evaluate()
                continue
            try:
                example.evaluate()
            except SkipTest as skip:
                skipped.append(str(skip))
            else:
                ran.append(example.line)
    finally:
        run.close()
        document.namespace.clear()
        gc.collect()  # listeners connected weakly by the page's functions go with them

    assert skipped == SKIPPED.get(page, [])
    if "```python" in (ROOT / page).read_text():
        assert ran, f"{page} has python blocks and none ran"


def test_the_skip_list_names_pages_that_exist() -> None:
    assert set(SKIPPED) <= set(PAGES)
