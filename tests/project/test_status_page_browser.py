"""
The status page in a real browser: headless Chromium (Debian's ``chromium``)
driven by Playwright through ``executable_path``, the page served by Django's
live server with the admin's CSS. It fits a 1280 px window and shows times as
an operator reads them.

Locally the test skips without chromium or Playwright; under ``CI=true`` it
fails instead. ``python -m bench.screenshots`` runs it to write
``docs/status-page.png``: set ``PATCHBOARD_SCREENSHOTS`` to a folder and the
test saves its screenshot there.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import Client

from patchboard import CircuitBreaker, Signal
from tests.services import in_ci, require_module

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = os.environ.get("PATCHBOARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH = 1280


@pytest.fixture
def chromium() -> None:
    """Chromium and Playwright are here; skips (locally) or fails (under CI=true) if not."""
    require_module("playwright", "pip install playwright; never `playwright install`")
    if shutil.which(CHROMIUM) is None:
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if in_ci():
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)


@contextmanager
def browser_page(base_url: str, session: str) -> Iterator[Any]:
    """
    A 1280 px page in headless Chromium, logged in with ``session``. Started
    after the test's database work: Playwright's sync API runs an event loop
    in this thread, where Django refuses database calls.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": WIDTH, "height": 900})
            context.add_cookies([{"name": "sessionid", "value": session, "url": base_url}])
            yield context.new_page()
        finally:
            browser.close()


class Boom(Exception):
    pass


def busy_process() -> None:
    """What an operator would look at: an open circuit, a closed one, counted outcomes."""
    quote = Signal(name="shipping.quote_requested")

    def flat_rate(sender: object, **kwargs: object) -> float:
        return 9.9

    def ups_quote(sender: object, **kwargs: object) -> float:
        raise Boom("carrier down")

    CircuitBreaker("carrier-ups-international-express", failure_threshold=1, reset_timeout=30)
    quote.connect(flat_rate, weak=False, breaker=CircuitBreaker("carrier-flat-rate"))
    quote.connect(
        ups_quote, weak=False, breaker="carrier-ups-international-express", on_error="log"
    )
    for _ in range(3):
        quote.collect(sender=None, queue=True)


@pytest.fixture
def shared_breaker(redis_url: str) -> Iterator[CircuitBreaker]:
    """A breaker on Redis with a name a reader of the screenshot recognises; its key goes after."""
    name = "carrier-dhl-express-international"
    client = redis.Redis.from_url(redis_url)

    def forget() -> None:
        for key in client.scan_iter(match=f"patchboard:breaker:{{{name}}}*"):
            client.delete(key)

    try:
        forget()
        yield CircuitBreaker(name, store=redis_url)
        forget()
    finally:
        client.close()


def test_the_page_fits_1280_px_and_reads_as_an_operator_wants(
    chromium: None, live_server: Any, shared_breaker: CircuitBreaker
) -> None:
    busy_process()
    shared_breaker.force_open()
    client = Client()
    client.force_login(User.objects.create_user("ops", is_staff=True, is_superuser=True))
    session = client.cookies["sessionid"].value

    with browser_page(live_server.url, session) as page:
        response = page.goto(f"{live_server.url}/patchboard/?refresh=30")
        assert response is not None and response.status == 200
        page.wait_for_load_state("networkidle")  # the admin's CSS

        # In the admin's frame, styled, and nothing runs past the window.
        assert page.locator("#header").count() == 1
        assert page.evaluate("getComputedStyle(document.body).margin") == "0px"
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.body.scrollWidth,"
            " document.querySelector('#patchboard-breakers table').getBoundingClientRect().right]"
        )
        assert max(widths) <= WIDTH, widths

        timing = page.locator('tr[data-breaker="carrier-ups-international-express"] td.when')
        text = " ".join(timing.inner_text().split())
        assert re.fullmatch(r"opened \d+ s ago, probe in \d+ s", text), text
        stamp = timing.locator("time").first
        assert stamp.get_attribute("datetime") == stamp.get_attribute("title").split()[-1]
        assert page.locator("meta[http-equiv=refresh]").get_attribute("content") == "30"
        assert "scrape the Prometheus metrics" in page.locator("#patchboard-scope").inner_text()
        assert shared_breaker.name in page.locator("#patchboard-shared").inner_text()

        folder = os.environ.get("PATCHBOARD_SCREENSHOTS")
        if folder:
            page.screenshot(path=str(Path(folder) / "status-page.png"), full_page=True)
