"""
The Debug Toolbar panel in a real browser: headless Chromium (Debian's
``chromium``) driven by Playwright, as ``test_status_page_browser.py`` does.
The page, the panel's content and the toolbar's static files come from
Django's test client and staticfiles, answered through Playwright's request
routing (the sync verbs refuse to run in the thread where Playwright runs its
event loop, so everything is fetched first). Clicking the panel shows each
call's row.

Locally the test skips without chromium or Playwright; under ``CI=true`` it
fails instead. Set ``PATCHBOARD_SCREENSHOTS`` to a folder and the test saves
``toolbar-panel.png`` there: the README's is made with
``PATCHBOARD_SCREENSHOTS=docs CI=true pytest tests/project/test_toolbar_browser.py``.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import Client

from tests.project.test_status_page_browser import CHROMIUM, CHROMIUM_ARGS, WIDTH, chromium
from tests.project.test_toolbar import PANEL, open_breaker, request_id, toolbar

__all__ = ["chromium", "open_breaker", "toolbar"]  # the fixtures this module uses

BASE = "http://testserver"


def answers() -> dict[str, tuple[str, bytes]]:
    """The page (a sync view that dispatched) and the panel's content, by path."""
    client = Client()
    page = client.get("/sync/")
    panel = client.get(
        "/__debug__/render_panel/",
        {"request_id": request_id(page.content.decode()), "panel_id": PANEL},
    )
    return {
        "/sync/": ("text/html; charset=utf-8", page.content),
        "/__debug__/render_panel/": ("application/json", panel.content),
    }


def serve(answered: dict[str, tuple[str, bytes]]) -> Any:
    def route(route: Any) -> None:
        path = urlsplit(route.request.url).path
        if path in answered:
            kind, body = answered[path]
        elif path.startswith(settings.STATIC_URL) and (
            found := finders.find(path.removeprefix(settings.STATIC_URL))
        ):
            body = Path(found).read_bytes()
            kind = mimetypes.guess_type(found)[0] or "application/octet-stream"
        else:
            route.fulfill(status=404, body=b"")
            return
        route.fulfill(status=200, body=body, headers={"Content-Type": kind})

    return route


@pytest.mark.usefixtures("chromium", "toolbar", "open_breaker")
def test_the_panel_in_a_browser() -> None:
    answered = answers()
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": WIDTH, "height": 800}).new_page()
            page.route(f"{BASE}/**", serve(answered))
            page.goto(f"{BASE}/sync/")
            button = page.locator(f"a.{PANEL}")
            expect(button).to_contain_text("2 dispatches, 5 calls")
            button.click()
            content = page.locator(f"#{PANEL} .djdt-scroll")
            expect(content).to_contain_text("toolbar-carrier (open)")
            expect(content.locator("tr.patchboard-call")).to_have_count(5)
            expect(content.locator("tr.patchboard-timeout")).to_have_count(2)
            folder = os.environ.get("PATCHBOARD_SCREENSHOTS")
            if folder:
                page.screenshot(path=str(Path(folder) / "toolbar-panel.png"))
        finally:
            browser.close()
