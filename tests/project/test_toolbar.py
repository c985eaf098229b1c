"""
The Debug Toolbar panel (``patchboard.toolbar.DispatchesPanel``): rendered
through Django's test client with django-debug-toolbar active, as a
developer sees it, for a sync view (WSGI) and an async one (ASGI): each
dispatch of the request, and under it each listener call with its status,
its breaker and whether the deadline cut it.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, override_settings

from patchboard import CircuitBreaker, Signal
from patchboard._config import get_settings
from patchboard._instrument import NO_SPAN, CallStart, Instruments, Span, _Fanout, instruments

LABEL = "tests.project.test_toolbar"

quote = Signal(name="shop.quote")
ship = Signal(name="shop.ship")


class Boom(Exception):
    pass


def priced(sender: Any, **kwargs: Any) -> int:
    return 12


def failing(sender: Any, **kwargs: Any) -> int:
    raise Boom("no price")


async def hangs(sender: Any, **kwargs: Any) -> int:
    await asyncio.Event().wait()  # until its time limit cancels it
    return 0


def guarded(sender: Any, **kwargs: Any) -> int:
    return 3


quote.connect(priced, weak=False)
quote.connect(failing, weak=False, on_error="log")
quote.connect(hangs, weak=False, timeout=0.05, on_error="log")
quote.connect(guarded, weak=False, breaker="toolbar-carrier", on_error="log")
ship.connect(hangs, weak=False, on_error="log")

left = Signal(name="shop.left")
right = Signal(name="shop.right")
meeting: list[asyncio.Barrier] = []
"""The barrier both concurrent requests' listeners wait at: both dispatches run at once."""


async def meets(sender: Any, **kwargs: Any) -> str:
    async with asyncio.timeout(10):  # a guard against a hang, not a measure
        await meeting[0].wait()
    return "met"


track = Signal(name="shop.track")
track.connect(priced, weak=False)
left.connect(meets, weak=False)
right.connect(meets, weak=False)

PAGE = "<html><body><p>{}</p></body></html>"


def sync_view(request: HttpRequest) -> HttpResponse:
    quote.collect(sender=None, deadline=None)
    shipped = ship.collect(sender=None, deadline=0.05)
    return HttpResponse(PAGE.format(shipped.deadline_hit))


async def async_view(request: HttpRequest) -> HttpResponse:
    await quote.collect_async(sender=None, deadline=None)
    shipped = await ship.collect_async(sender=None, deadline=0.05)
    return HttpResponse(PAGE.format(shipped.deadline_hit))


async def left_view(request: HttpRequest) -> HttpResponse:
    await left.send_async(sender=None)
    return HttpResponse(PAGE.format("left"))


async def right_view(request: HttpRequest) -> HttpResponse:
    await right.send_async(sender=None)
    return HttpResponse(PAGE.format("right"))


async def stream_view(request: HttpRequest) -> HttpResponse:
    statuses = [outcome.status async for outcome in track.stream_async(sender=None)]
    return HttpResponse(PAGE.format(statuses))


def quiet_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE.format("nothing"))


PANEL = "DispatchesPanel"


def show_toolbar(request: HttpRequest) -> bool:
    return True


@pytest.fixture(autouse=True)
def toolbar() -> Iterator[None]:
    """django-debug-toolbar set up as its installation guide says, with only this panel."""
    with override_settings(
        INSTALLED_APPS=[*settings.INSTALLED_APPS, "debug_toolbar"],
        MIDDLEWARE=["debug_toolbar.middleware.DebugToolbarMiddleware", *settings.MIDDLEWARE],
        DEBUG=True,  # the toolbar and its URLs are off otherwise
        ROOT_URLCONF="tests.project.toolbar_urls",
        DEBUG_TOOLBAR_PANELS=[f"patchboard.toolbar.{PANEL}"],
        # The toolbar's documented setting for a test suite that renders it.
        DEBUG_TOOLBAR_CONFIG={
            "IS_RUNNING_TESTS": False,
            "SHOW_TOOLBAR_CALLBACK": f"{__name__}.show_toolbar",
        },
    ):
        yield


@pytest.fixture(autouse=True)
def open_breaker() -> Iterator[None]:
    CircuitBreaker("toolbar-carrier").force_open()
    yield


def request_id(page: str) -> str:
    found = re.search(r'data-request-id="([0-9a-f]+)"', page)
    assert found is not None, "the toolbar is not on the page"
    return found.group(1)


def subtitle(page: str) -> str:
    found = re.search(rf'id="djdt-{PANEL}".*?<small>\s*(.*?)\s*</small>', page, re.S)
    assert found is not None, "the panel is not in the toolbar"
    return found.group(1)


def calls(content: str) -> list[tuple[str, str]]:
    """(listener, status) of each call the panel lists, in order: each dispatch's in the order
    they started (a listener with a time limit starts first, in its thread)."""
    rows = re.findall(
        r'<tr class="patchboard-call patchboard-(\w+)">\s*<td><code>(.*?)</code>', content
    )
    return [(listener.removeprefix(f"{LABEL}."), status) for status, listener in rows]


def cells(content: str, listener: str, status: str) -> list[str]:
    """The text of each cell of a call's row."""
    row = re.search(
        rf'<tr class="patchboard-call patchboard-{status}">\s*<td><code>{LABEL}.{listener}</code>'
        r"(.*?)</tr>",
        content,
        re.S,
    )
    assert row is not None, f"no row for {listener} ({status})"
    return [
        re.sub(r"<.*?>", "", cell).strip()
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)
    ]


EXPECTED = [
    ("failing", "error"),
    ("guarded", "circuit_open"),
    ("hangs", "timeout"),
    ("priced", "ok"),
]
"""shop.quote's calls, sorted."""


def check(page: str, content: str, verb: str) -> None:
    assert subtitle(page) == "2 dispatches, 5 calls"
    listed = calls(content)
    assert sorted(listed[:4]) == EXPECTED
    assert listed[4:] == [("hangs", "timeout")]  # shop.ship's
    assert f"<h4>{verb} shop.quote</h4>" in content
    assert f"<h4>{verb} shop.ship</h4>" in content
    # status, elapsed, wait, breaker, cut by the deadline, error
    assert cells(content, "guarded", "circuit_open")[3:5] == ["toolbar-carrier (open)", "no"]
    assert cells(content, "failing", "error")[5] == "Boom: no price"
    hung = re.findall(r"<td>(yes|no)</td>\s*<td[^>]*>ListenerTimeout", content)
    assert hung == ["no", "yes"]  # its own time limit, then the dispatch's deadline
    assert content.count("(deadline hit)") == 1
    # What was left of the 50 ms as the dispatch started.
    (left,) = re.findall(r"Deadline: ([\d.]+) ms", content)
    assert 40 < float(left) <= 50


def test_sync_view() -> None:
    client = Client()
    page = client.get("/sync/").content.decode()
    panel = client.get(
        "/__debug__/render_panel/", {"request_id": request_id(page), "panel_id": PANEL}
    )
    check(page, panel.json()["content"], "collect")
    assert instruments.active is None  # detached once the request was recorded


async def test_async_view() -> None:
    client = AsyncClient()
    page = (await client.get("/async/")).content.decode()
    panel = await client.get(
        "/__debug__/render_panel/", {"request_id": request_id(page), "panel_id": PANEL}
    )
    check(page, panel.json()["content"], "collect_async")
    assert instruments.active is None


async def test_concurrent_requests_never_mix() -> None:
    """Two requests under ASGI, each recorded while the other dispatches: each
    panel lists its own dispatch only."""
    meeting[:] = [asyncio.Barrier(2)]
    client = AsyncClient()
    pages = await asyncio.gather(client.get("/left/"), client.get("/right/"))
    for response, side in zip(pages, ("left", "right"), strict=True):
        page = response.content.decode()
        assert subtitle(page) == "1 dispatch, 1 call"
        panel = await client.get(
            "/__debug__/render_panel/", {"request_id": request_id(page), "panel_id": PANEL}
        )
        content = panel.json()["content"]
        assert re.findall(r"<h4>(.*?)</h4>", content) == [f"send_async shop.{side}"]
        assert calls(content) == [("meets", "ok")]


async def test_a_stream() -> None:
    client = AsyncClient()
    page = (await client.get("/stream/")).content.decode()
    panel = await client.get(
        "/__debug__/render_panel/", {"request_id": request_id(page), "panel_id": PANEL}
    )
    content = panel.json()["content"]
    assert re.findall(r"<h4>(.*?)</h4>", content) == ["stream_async shop.track"]
    assert calls(content) == [("priced", "ok")]


def test_a_request_without_dispatches() -> None:
    client = Client()
    page = client.get("/quiet/").content.decode()
    assert subtitle(page) == "0 dispatches, 0 calls"


def test_the_toolbar_is_imported_only_from_its_settings() -> None:
    """``import patchboard`` imports neither the panel's module nor django-debug-toolbar."""
    code = (
        "import sys, django; from django.conf import settings; settings.configure(); "
        "django.setup(); import patchboard; "
        "print(sorted(m for m in ('debug_toolbar', 'patchboard.toolbar') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "[]"


class Recorder:
    """An instrument that opens no span of its own (the seam's contract only)."""

    def dispatch(self, signal: Any, deadline: float | None, listeners: int) -> Span:
        return NO_SPAN

    def call(self, start: CallStart) -> Span:
        return NO_SPAN

    def inject(self, carrier: dict[str, str]) -> None:
        pass

    def resume(self, carrier: Mapping[str, str], listener: str) -> AbstractContextManager[object]:
        return nullcontext()


def test_an_instrument_stays_attached_while_any_request_records() -> None:
    """Attached by overlapping requests, it is active until the last one detaches it,
    beside the instrument the settings chose."""
    seam, chosen, recorder = Instruments(), Recorder(), Recorder()
    seam.plug(lambda settings: chosen)
    seam.choose(get_settings())
    assert seam.active is chosen
    seam.attach(recorder)
    seam.attach(recorder)  # a second request, recorded meanwhile
    assert isinstance(seam.active, _Fanout) and seam.active._instruments == [chosen, recorder]
    seam.detach(recorder)
    assert isinstance(seam.active, _Fanout) and seam.active._instruments == [chosen, recorder]
    seam.detach(recorder)
    assert seam.active is chosen
