"""
The staff status page (``patchboard.urls``): who may see it, what it shows
(HTML and JSON, from real dispatches and real breaker failures), and the
breaker controls (POST, CSRF, post/redirect/get).
"""

from __future__ import annotations

import dataclasses
import html
import os
import re
import socket
import threading
from datetime import datetime
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.test import AsyncClient, Client, modify_settings, override_settings
from django.urls import include, path

from patchboard import CircuitBreaker, Signal, get_breaker, outcome_counts, queue_stats
from patchboard._breaker import _circuit
from patchboard._status import QUEUE_COUNTER_LABELS, QUEUE_GAUGES, duration
from patchboard.testing import VirtualClock, reset
from tests.conftest import CLOCK_WALL_START

pytestmark = pytest.mark.django_db

URL = "/patchboard/"
START = CLOCK_WALL_START
"""The breakers' clock when a test starts (the ``clock`` fixture's wall reading)."""

urlpatterns = [path("patchboard/", include("patchboard.urls"))]
"""A project without the admin's URLs (``ROOT_URLCONF=__name__``)."""


class Boom(Exception):
    pass


@pytest.fixture
def staff() -> User:
    return User.objects.create_user("ops", is_staff=True)


@pytest.fixture
def staff_client(client: Client, staff: User) -> Client:
    client.force_login(staff)
    return client


@pytest.fixture
def csrf_client(staff: User) -> Client:
    """A staff user's client that, like a browser, must send the CSRF token."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    return client


def trip(breaker: CircuitBreaker) -> None:
    """One real failure through the breaker (``failure_threshold=1`` opens it)."""
    with pytest.raises(Boom), breaker:
        raise Boom("carrier down")


def row(page: str, breaker: str) -> list[str]:
    """The text of each cell of a breaker's row in the HTML page."""
    found = re.search(rf'<tr [^>]*data-breaker="{re.escape(breaker)}">(.*?)</tr>', page, re.S)
    assert found is not None, f"no row for {breaker!r}"
    cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", found.group(1), re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split()) for cell in cells]


def table(page: str, module: str) -> dict[str, str]:
    """A two-column table of the page (``queue``, ``outcomes``) as a dict."""
    found = re.search(rf'<div class="module" id="patchboard-{module}">(.*?)</div>', page, re.S)
    assert found is not None, f"no {module} table"
    pairs = re.findall(r'<th scope="row">(.*?)</th><td[^>]*>(.*?)</td>', found.group(1))
    return dict(pairs)


def csrf_token(page: str) -> str:
    """The CSRF token of the first breaker's control form."""
    form = re.search(r'<form method="post" class="breaker-actions">(.*?)</form>', page, re.S)
    assert form is not None, "no breaker control form"
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.group(1))
    assert token is not None
    return token.group(1)


def dispatch_quotes(clock: VirtualClock | None = None) -> None:
    """
    Two real collections through the short-term queue: a flat-rate listener
    answers both times (taking a virtual second on ``clock``, if given); the
    carrier fails the first time, which opens its breaker ("carrier-ups",
    threshold 1), and is refused the second time.
    """
    quote = Signal(name="status_page_quote")

    def flat_rate(sender: object, **kwargs: object) -> float:
        if clock is not None:
            clock.advance(1)
        return 9.9

    def ups_quote(sender: object, **kwargs: object) -> float:
        raise Boom("carrier down")

    quote.connect(flat_rate, weak=False)
    quote.connect(ups_quote, weak=False, breaker="carrier-ups", on_error="log")
    first, second = (quote.collect(sender=None, queue=True) for _ in range(2))
    assert [o.status for o in first] == ["ok", "error"]
    assert [o.status for o in second] == ["ok", "circuit_open"]


# -- who may see it -------------------------------------------------------------------


def test_anonymous_users_are_redirected_to_the_admin_login(client: Client) -> None:
    response = client.get(URL, {"format": "json"})
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/patchboard/%3Fformat%3Djson"


@override_settings(LOGIN_URL="/sso/login/")
def test_a_login_url_the_project_sets_wins_over_the_admin_login(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"] == "/sso/login/?next=/patchboard/"


@override_settings(ROOT_URLCONF=__name__)
def test_without_the_admin_mounted_anonymous_users_go_to_login_url(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/patchboard/"


def test_anonymous_posts_change_nothing(client: Client, clock: VirtualClock) -> None:
    breaker = CircuitBreaker("carrier-ups")
    response = client.post(URL, {"breaker": "carrier-ups", "action": "open"})
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert breaker.statistics().forced is None


def test_users_who_are_not_staff_get_403(client: Client, clock: VirtualClock) -> None:
    breaker = CircuitBreaker("carrier-ups")
    client.force_login(User.objects.create_user("shopper"))
    assert client.get(URL).status_code == 403
    assert client.get(URL, {"format": "json"}).status_code == 403
    assert client.post(URL, {"breaker": "carrier-ups", "action": "open"}).status_code == 403
    assert breaker.statistics().forced is None


@override_settings(
    AUTHENTICATION_BACKENDS=["django.contrib.auth.backends.AllowAllUsersModelBackend"]
)
def test_inactive_staff_get_403(client: Client) -> None:
    """A backend that lets inactive users log in does not let them in here, as the admin."""
    user = User.objects.create_user("former", is_staff=True, is_active=False)
    client.force_login(user)
    assert client.get(URL).status_code == 403


# -- what it shows ----------------------------------------------------------------------


def test_the_html_page_shows_breakers_queue_and_outcomes(
    staff_client: Client, clock: VirtualClock
) -> None:
    CircuitBreaker("carrier-ups", failure_threshold=1, reset_timeout=30)
    dispatch_quotes()

    response = staff_client.get(URL)

    assert response.status_code == 200
    assert [t.name for t in response.templates][:2] == [
        "patchboard/status.html",
        "admin/base_site.html",
    ]
    page = response.content.decode()
    assert row(page, "carrier-ups")[:9] == [
        "carrier-ups",
        "open",
        "opened 0 s ago , probe in 30 s",  # reset_timeout later
        "1",  # failures
        "0",  # probes
        "memory (this process only)",
        "1",  # rejected (this process)
        "0",  # successes
        "1",  # failures_total
    ]
    assert f"This process (pid {os.getpid()})" in page
    queue = table(page, "queue")
    assert (queue["Calls submitted"], queue["Completed"]) == ("4", "2")
    assert queue["Failed (the listener raised)"] == "1"
    assert queue["Refused by an open circuit"] == "1"
    assert queue["Workers"] == str(queue_stats().workers)
    outcomes = table(page, "outcomes")
    assert (outcomes["ok"], outcomes["error"], outcomes["circuit_open"]) == ("2", "1", "1")
    assert outcomes["timeout"] == "0"


def test_the_queue_counters_read_as_labels_not_keys(staff_client: Client) -> None:
    page = staff_client.get(URL).content.decode()
    counters = [
        field.name for field in dataclasses.fields(queue_stats()) if field.name not in QUEUE_GAUGES
    ]
    rows = list(table(page, "queue"))
    # Every counter has a label of its own, shown in the order of the JSON's keys.
    assert sorted(QUEUE_COUNTER_LABELS) == sorted(counters)
    assert rows[-len(counters) :] == [QUEUE_COUNTER_LABELS[name] for name in counters]
    assert not set(counters) & set(rows)
    assert all(label[0].isupper() for label in rows)


def test_declared_breakers_are_listed_before_first_use(staff_client: Client) -> None:
    with override_settings(PATCHBOARD={"BREAKERS": {"carrier-dhl": {"failure_threshold": 2}}}):
        page = staff_client.get(URL).content.decode()
    assert row(page, "carrier-dhl")[:4] == ["carrier-dhl", "closed", "-", "0"]


def test_json_has_stable_keys_and_reflects_real_state(
    staff_client: Client, clock: VirtualClock
) -> None:
    CircuitBreaker("carrier-ups", failure_threshold=1, reset_timeout=30)
    healthy = CircuitBreaker("carrier-fedex", failure_threshold=3)
    with healthy:
        pass
    dispatch_quotes(clock)

    response = staff_client.get(URL, {"format": "json"})

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "no-cache" in response["Cache-Control"]
    data = response.json()
    assert list(data) == [
        "pid",
        "generated_at",
        "breakers",
        "queue",
        "threads",
        "outcomes",
        "outbox",
        "latency",
        "breaker_notes",
    ]
    assert data["outbox"] is None  # the ImmediateBackend: no outbox
    assert data["latency"] is None  # the metrics are off
    assert data["pid"] == os.getpid()
    assert datetime.fromisoformat(data["generated_at"]).tzinfo is not None
    fedex, ups = data["breakers"]  # by name
    assert ups == {
        "name": "carrier-ups",
        "state": "open",
        "forced": None,
        "failures": 1,
        "opened_at": "2023-11-14T22:13:21+00:00",  # the flat rate took its second first
        "retry_at": "2023-11-14T22:13:51+00:00",
        "probes": 0,
        "store": "memory",
        "store_kind": "memory",
        "shared": False,
        "fallback": False,
        "keyed": False,
        "per_process": {"rejected": 1, "successes": 0, "failures_total": 1},
    }
    assert fedex["state"] == "closed"
    assert (fedex["opened_at"], fedex["retry_at"]) == (None, None)
    assert fedex["per_process"] == {"rejected": 0, "successes": 1, "failures_total": 0}

    stats = queue_stats()
    assert data["queue"] == {
        "workers": stats.workers,
        "running": 0,
        "waiting": 0,
        "oldest_wait_s": 0.0,
        "service_time_s": stats.service_time,
        "abandoned_running": 0,
        "counters": {
            "submitted": 4,
            "completed": 2,
            "failed": 1,
            "circuit_open": 1,
            "timed_out": 0,
            "expired": 0,
            "shed": 0,
            "rejected": 0,
            "cancelled": 0,
            "abandoned": 0,
        },
    }
    assert stats.service_time > 0  # the calls held their workers a measured while
    assert type(data["queue"]["oldest_wait_s"]) is float
    assert data["outcomes"] == {**outcome_counts()}
    assert (data["outcomes"]["ok"], data["outcomes"]["circuit_open"]) == (2, 1)


def test_times_read_as_an_operator_wants_with_the_stamps_in_titles(
    staff_client: Client, clock: VirtualClock
) -> None:
    breaker = CircuitBreaker("carrier-ups", failure_threshold=1, reset_timeout=30)
    trip(breaker)
    clock.advance(4)

    page = staff_client.get(URL).content.decode()

    assert row(page, "carrier-ups")[2] == "opened 4 s ago , probe in 26 s"
    assert (
        '<time datetime="2023-11-14T22:13:20+00:00" title="opened at 2023-11-14T22:13:20+00:00">'
        "opened 4 s ago</time>"
    ) in page
    assert 'title="probe at 2023-11-14T22:13:50+00:00">probe in 26 s</time>' in page
    # The JSON keeps the exact stamps.
    [shown] = staff_client.get(URL, {"format": "json"}).json()["breakers"]
    assert (shown["opened_at"], shown["retry_at"]) == (
        "2023-11-14T22:13:20+00:00",
        "2023-11-14T22:13:50+00:00",
    )

    clock.advance(0.5)  # 25.5 s left: rounded up, never "in 0 s" before it is due
    assert row(staff_client.get(URL).content.decode(), "carrier-ups")[2] == (
        "opened 4 s ago , probe in 26 s"
    )
    clock.advance(3600 + 125)
    assert row(staff_client.get(URL).content.decode(), "carrier-ups")[2] == (
        "opened 1 h 2 min ago , probe on the next call"
    )
    with breaker:  # the next call is the probe
        assert row(staff_client.get(URL).content.decode(), "carrier-ups")[:3] == [
            "carrier-ups",
            "half_open",
            "opened 1 h 2 min ago , probing",
        ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59, "59 s"),
        (60, "1 min"),
        (125, "2 min 5 s"),
        (3599, "59 min 59 s"),
        (3600, "1 h"),
        (12_030, "3 h 20 min"),
        (86_399, "23 h 59 min"),
        (2 * 86_400 + 4 * 3600 + 59, "2 d 4 h"),
        (3 * 86_400, "3 d"),
    ],
)
def test_durations_read_in_two_units_at_most(seconds: int, text: str) -> None:
    assert duration(seconds) == text


def test_the_page_says_what_is_per_process_and_points_to_the_fleet(staff_client: Client) -> None:
    CircuitBreaker("carrier-ups")

    page = staff_client.get(URL).content.decode()

    scope = " ".join(re.sub(r"<[^>]+>", " ", page.split('id="patchboard-scope">')[1]).split())
    assert scope.startswith(f"Served by process {os.getpid()} at ")
    assert (
        "For the fleet, scrape the Prometheus metrics (see the docs: Operations, Observability)"
        in scope
    )
    assert "No breaker is shared: each keeps its state in memory, in each process." in page


def test_refresh_reloads_the_page_within_bounds(staff_client: Client) -> None:
    assert 'http-equiv="refresh"' not in staff_client.get(URL).content.decode()

    page = staff_client.get(URL, {"refresh": "5"}).content.decode()

    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<strong>every 5 s</strong>" in page
    assert '<meta http-equiv="refresh" content="3600">' in (
        staff_client.get(URL, {"refresh": "3600"}).content.decode()
    )
    assert 'http-equiv="refresh"' not in staff_client.get(URL, {"refresh": "0"}).content.decode()


@pytest.mark.parametrize("value", ["1", "3601", "5.5", "-5", "soon"])
def test_a_refresh_out_of_bounds_is_a_clear_400(staff_client: Client, value: str) -> None:
    response = staff_client.get(URL, {"refresh": value})

    assert response.status_code == 400
    assert response.content.decode() == (
        "refresh must be a whole number of seconds from 2 to 3600 (0 or nothing: off), "
        f"got {value!r}"
    )


def test_a_control_keeps_the_pages_refresh(staff_client: Client, clock: VirtualClock) -> None:
    CircuitBreaker("carrier-ups")

    response = staff_client.post(f"{URL}?refresh=5", {"breaker": "carrier-ups", "action": "open"})

    assert (response.status_code, response["Location"]) == (302, f"{URL}?refresh=5")


@override_settings(PATCHBOARD={"MAX_THREADS": 3})
def test_json_shows_the_listener_threads_busy_now(staff_client: Client) -> None:
    """A sync listener blocked in its own thread is one busy thread of MAX_THREADS."""
    signal = Signal(name="status_page_threads")
    started, release = threading.Event(), threading.Event()

    def blocking(sender: object, **kwargs: object) -> None:
        started.set()
        release.wait(10)

    signal.connect(blocking, weak=False, thread_sensitive=False)
    sender = threading.Thread(target=signal.send_sync, kwargs={"sender": None})
    sender.start()
    try:
        assert started.wait(10)
        busy = staff_client.get(URL, {"format": "json"}).json()["threads"]
    finally:
        release.set()
        sender.join(10)
    idle = staff_client.get(URL, {"format": "json"}).json()["threads"]

    assert busy == {"limit": 3, "busy": 1, "waiting": 0, "abandoned": 0, "abandoned_running": 0}
    assert idle["busy"] == 0
    assert table(staff_client.get(URL).content.decode(), "threads")["Busy"] == "0"


def test_an_unknown_format_is_a_clear_400(staff_client: Client) -> None:
    response = staff_client.get(URL, {"format": "xml"})
    assert response.status_code == 400
    assert response.content.decode() == "format must be 'html' or 'json', got 'xml'"


@override_settings(ROOT_URLCONF=__name__)
def test_without_the_admin_mounted_the_page_stands_alone(
    staff_client: Client, clock: VirtualClock
) -> None:
    CircuitBreaker("carrier-ups")
    response = staff_client.get(URL)
    assert response.status_code == 200
    names = [t.name for t in response.templates]
    assert "patchboard/base.html" in names
    assert "admin/base_site.html" not in names
    assert row(response.content.decode(), "carrier-ups")[:2] == ["carrier-ups", "closed"]


@override_settings(ROOT_URLCONF=__name__)
@modify_settings(INSTALLED_APPS={"remove": ["django.contrib.admin"]})
def test_without_the_admin_installed_the_page_stands_alone(staff_client: Client) -> None:
    response = staff_client.get(URL)
    assert response.status_code == 200
    assert "admin/base_site.html" not in [t.name for t in response.templates]
    assert "Short-term queue" in response.content.decode()


def test_get_changes_nothing(staff_client: Client, clock: VirtualClock) -> None:
    breaker = CircuitBreaker("carrier-ups", failure_threshold=1)
    dispatch_quotes()
    before = (breaker.statistics(), queue_stats(), outcome_counts())

    staff_client.get(URL)
    staff_client.get(URL, {"format": "json"})
    staff_client.get(URL, {"breaker": "carrier-ups", "action": "reset"})

    assert (breaker.statistics(), queue_stats(), outcome_counts()) == before
    assert breaker.statistics().state == "open"


def test_other_methods_are_refused(staff_client: Client, clock: VirtualClock) -> None:
    breaker = CircuitBreaker("carrier-ups")
    response = staff_client.put(URL, "breaker=carrier-ups&action=open")
    assert response.status_code == 405
    assert breaker.statistics().forced is None


# -- the controls -------------------------------------------------------------------------


def test_post_forces_open_then_closed_then_resets(
    staff_client: Client, clock: VirtualClock
) -> None:
    breaker = CircuitBreaker("carrier-ups", failure_threshold=2)
    trip(breaker)
    assert breaker.statistics().failures == 1

    response = staff_client.post(URL, {"breaker": "carrier-ups", "action": "open"})
    assert (response.status_code, response["Location"]) == (302, URL)
    assert (breaker.state, breaker.statistics().forced) == ("open", "open")

    page = staff_client.get(response["Location"]).content.decode()
    assert "Forced circuit &#x27;carrier-ups&#x27; open." in page
    assert f"the change applies to this process (pid {os.getpid()}) only" in page
    assert row(page, "carrier-ups")[1] == "open (forced open)"

    staff_client.post(URL, {"breaker": "carrier-ups", "action": "close"})
    assert (breaker.state, breaker.statistics().forced) == ("closed", "closed")

    staff_client.post(URL, {"breaker": "carrier-ups", "action": "reset"})
    stats = breaker.statistics()
    assert (stats.state, stats.forced, stats.failures) == ("closed", None, 0)


def test_post_builds_a_declared_breaker_to_control_it(staff_client: Client) -> None:
    with override_settings(PATCHBOARD={"BREAKERS": {"carrier-dhl": {}}}):
        response = staff_client.post(URL, {"breaker": "carrier-dhl", "action": "open"})
        assert response.status_code == 302
        assert get_breaker("carrier-dhl").statistics().forced == "open"


def test_an_unknown_breaker_is_a_404_naming_it(staff_client: Client, clock: VirtualClock) -> None:
    CircuitBreaker("carrier-ups")
    response = staff_client.post(URL, {"breaker": "carrier-upz", "action": "open"})
    assert response.status_code == 404
    message = response.content.decode()
    assert "no circuit breaker named 'carrier-upz'" in message
    assert "known: 'carrier-ups'" in message


def test_an_unknown_action_is_a_400_naming_it(staff_client: Client, clock: VirtualClock) -> None:
    breaker = CircuitBreaker("carrier-ups")
    response = staff_client.post(URL, {"breaker": "carrier-ups", "action": "explode"})
    assert response.status_code == 400
    assert response.content.decode() == (
        "action must be one of 'open', 'close', 'reset', got 'explode'"
    )
    assert breaker.statistics().forced is None


def test_a_post_without_the_csrf_token_is_rejected(
    csrf_client: Client, clock: VirtualClock
) -> None:
    breaker = CircuitBreaker("carrier-ups")
    response = csrf_client.post(URL, {"breaker": "carrier-ups", "action": "open"})
    assert response.status_code == 403
    assert breaker.statistics().forced is None


def test_a_post_with_the_pages_csrf_token_is_accepted(
    csrf_client: Client, clock: VirtualClock
) -> None:
    breaker = CircuitBreaker("carrier-ups")
    token = csrf_token(csrf_client.get(URL).content.decode())
    response = csrf_client.post(
        URL, {"breaker": "carrier-ups", "action": "open", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    assert breaker.statistics().forced == "open"


# -- Redis-backed breakers ---------------------------------------------------------------


@pytest.mark.redis
def test_the_page_shows_the_shared_state_another_process_set(
    staff_client: Client, redis_url: str, breaker_name: str
) -> None:
    # "Another process": an instance this process then forgets.
    CircuitBreaker(breaker_name, store=redis_url).force_open()
    reset()
    mine = CircuitBreaker(breaker_name, store=redis_url)
    assert mine.state == "closed"  # this process has not looked at Redis yet

    data = staff_client.get(URL, {"format": "json"}).json()

    (shown,) = data["breakers"]
    assert (shown["state"], shown["forced"], shown["shared"]) == ("open", "open", True)
    assert shown["store"] == redis_url


@pytest.mark.redis
def test_a_post_changes_the_shared_state(
    staff_client: Client, redis_url: str, breaker_name: str
) -> None:
    CircuitBreaker(breaker_name, store=redis_url)
    response = staff_client.post(URL, {"breaker": breaker_name, "action": "open"})
    assert response.status_code == 302
    page = staff_client.get(URL).content.decode()
    assert f"Forced circuit &#x27;{breaker_name}&#x27; open." in page
    assert "It keeps its state in memory" not in page
    assert row(page, breaker_name)[5] == f"Redis, shared {redis_url}"  # not "this process only"
    assert re.search(rf"Shared through Redis by every process: {breaker_name}\b", page)

    reset()  # another process: a fresh instance reads Redis
    assert CircuitBreaker(breaker_name, store=redis_url).get_state_sync() == "open"


@pytest.mark.redis
def test_the_page_lists_the_keyed_circuits_other_processes_opened(
    staff_client: Client, redis_url: str, breaker_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    options: dict[str, Any] = {
        "store": redis_url,
        "failure_threshold": 2,
        "key": lambda sender, **kwargs: kwargs["carrier"],
    }
    # "Another process": an instance this process then forgets. It opens three
    # circuits (one key with braces) and leaves one closed with a failure.
    other = CircuitBreaker(breaker_name, **options)
    for key in ("dhl", "{ups}", "fedex", "tnt"):
        for _ in range(1 if key == "tnt" else 2):
            trip(other.circuit(key))
    reset()
    mine = CircuitBreaker(breaker_name, **options)
    assert mine.circuit("dhl").get_state_sync() == "open"  # one this process knows too

    data = staff_client.get(URL, {"format": "json"}).json()

    listed = [(b["name"], b["state"], b["shared"]) for b in data["breakers"]]
    assert listed == [
        (breaker_name, "closed", True),
        (f"{breaker_name}[dhl]", "open", True),
        (f"{breaker_name}[fedex]", "open", True),
        (f"{breaker_name}[{{ups}}]", "open", True),
    ]
    assert data["breaker_notes"] == []
    assert list(mine.circuits()) == ["dhl"]  # the others were read for the page, not kept

    monkeypatch.setattr(_circuit, "LISTED_FROM_STORE", 2)
    data = staff_client.get(URL, {"format": "json"}).json()
    assert len(data["breakers"]) == 1 + 2
    note = (
        f"{breaker_name}: more than 2 of its circuits are open, half-open or forced in Redis; "
        "2 of them are listed"
    )
    assert data["breaker_notes"] == [note]
    assert f"{note}." in html.unescape(staff_client.get(URL).content.decode())


@pytest.mark.redis
def test_a_keyed_circuit_forced_closed_stays_listed_until_it_is_reset(
    staff_client: Client, redis_url: str, breaker_name: str
) -> None:
    """Regression (a new user's try): forcing one key's circuit closed hid it from the page
    and the command, so the force could be neither seen nor lifted from there."""
    options: dict[str, Any] = {"store": redis_url, "key": lambda sender, **kwargs: "k"}
    # "Another process" forces one circuit closed, and leaves another closed on its own.
    other = CircuitBreaker(breaker_name, **options)
    other.circuit("dhl").force_closed()
    other.circuit("ups").get_state_sync()
    reset()
    mine = CircuitBreaker(breaker_name, **options)
    mine.circuit("fedex").force_closed()  # one this process forced

    data = staff_client.get(URL, {"format": "json"}).json()

    listed = [(b["name"], b["state"], b["forced"]) for b in data["breakers"]]
    assert listed == [
        (breaker_name, "closed", None),
        (f"{breaker_name}[dhl]", "closed", "closed"),
        (f"{breaker_name}[fedex]", "closed", "closed"),
    ]
    mine.circuit("dhl").reset()
    mine.circuit("fedex").reset()
    data = staff_client.get(URL, {"format": "json"}).json()
    assert [b["name"] for b in data["breakers"]] == [breaker_name]


def test_a_keyed_breaker_has_no_controls_and_refuses_a_post(staff_client: Client) -> None:
    """Regression (a new user's try): the keyed breaker's own row offered the buttons, and a
    press answered 503 saying the state changed anyway; it has no state of its own."""
    CircuitBreaker("carriers-keyed", key=lambda sender, **kwargs: "k")

    (shown,) = staff_client.get(URL, {"format": "json"}).json()["breakers"]
    assert (shown["name"], shown["keyed"]) == ("carriers-keyed", True)
    cells = row(staff_client.get(URL).content.decode(), "carriers-keyed")
    assert "keyed: its circuits, carriers-keyed[<key>]" in cells[-1]
    assert "Force open" not in cells[-1]

    response = staff_client.post(URL, {"breaker": "carriers-keyed", "action": "open"})

    assert response.status_code == 400
    assert response.content.decode().startswith("circuit breaker 'carriers-keyed' is keyed: ")


@pytest.mark.redis
def test_wsgi_requests_leave_no_redis_connection_behind(
    staff_client: Client, redis_url: str, breaker_name: str
) -> None:
    """
    Under WSGI (and this sync test client) the async view runs on an event
    loop made for the request: its Redis commands go through the process's
    pooled connections, so requests never add connections of their own.
    """
    CircuitBreaker(breaker_name, store=f"{redis_url}?client_name={breaker_name}")
    for _ in range(10):
        assert staff_client.get(URL, {"format": "json"}).status_code == 200
    staff_client.post(URL, {"breaker": breaker_name, "action": "open"})
    admin = redis.Redis.from_url(redis_url)
    try:
        named = [c for c in admin.client_list() if c["name"] == breaker_name]
    finally:
        admin.close()
    assert len(named) == 1  # the one pooled connection, reused by every request


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_redis_is_reported(staff_client: Client) -> None:
    """Nothing listens on the store's port: the page still renders, a control is a 503."""
    url = f"redis://127.0.0.1:{_unused_port()}/0"
    CircuitBreaker("carrier-ups", store=url)

    response = staff_client.post(URL, {"breaker": "carrier-ups", "action": "open"})

    assert response.status_code == 503
    message = response.content.decode()
    assert message.startswith(f"could not change circuit 'carrier-ups' in {url}: ")
    assert "ConnectionError" in message
    (shown,) = staff_client.get(URL, {"format": "json"}).json()["breakers"]
    assert (shown["fallback"], shown["forced"]) == (True, "open")
    page = staff_client.get(URL).content.decode()
    assert "Redis unreachable" in row(page, "carrier-ups")[1]


@pytest.mark.django_db(transaction=True)
async def test_the_page_and_its_controls_work_on_an_event_loop(
    async_client: AsyncClient, clock: VirtualClock
) -> None:
    """Served as under ASGI: the view runs on the caller's event loop."""
    breaker = CircuitBreaker("carrier-ups")
    await async_client.aforce_login(await User.objects.acreate(username="ops", is_staff=True))

    response = await async_client.post(URL, {"breaker": "carrier-ups", "action": "open"})
    assert (response.status_code, response["Location"]) == (302, URL)
    assert breaker.statistics().forced == "open"

    data = (await async_client.get(URL, {"format": "json"})).json()
    assert [(b["name"], b["forced"]) for b in data["breakers"]] == [("carrier-ups", "open")]
    page = (await async_client.get(URL)).content.decode()
    assert "Forced circuit &#x27;carrier-ups&#x27; open." in page
    assert row(page, "carrier-ups")[1] == "open (forced open)"


@pytest.mark.django_db(databases=["default", "other"])
def test_the_outbox_shows_unclaimed_entries_their_age_failed_deliveries_and_claimed_ones(
    staff_client: Client, settings: pytest.FixtureRequest
) -> None:
    """
    With the outbox on: per database, read from its table (every process's
    entries). Unclaimed (``pending``): no worker has started them, enqueued or not.
    """
    from datetime import timedelta

    from django.utils import timezone

    from patchboard.models import OutboxEntry

    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy", "OUTBOX": True}}
    written = timezone.now() - timedelta(seconds=125)
    for attempts, error, deliveries, claimed in (
        (0, "", 0, False),
        (3, "ConnectionError: broker down", 1, False),
        (0, "", 0, True),
    ):
        OutboxEntry.objects.create(
            created_at=written + timedelta(seconds=60 * claimed),
            backend="dummy",
            queue_name="default",
            priority=0,
            payload="{}",
            attempts=attempts,
            next_attempt_at=written,
            last_error=error,
            deliveries=deliveries,
            delivered_at=timezone.now() if claimed else None,
            claimed_attempt=int(claimed),
        )

    data = staff_client.get(URL, {"format": "json"}).json()
    default, other = data["outbox"]
    assert (default["database"], default["pending"], default["failed"]) == ("default", 2, 1)
    assert datetime.fromisoformat(default["oldest_pending_at"]) == written
    assert (default["last_error"], default["error"]) == ("ConnectionError: broker down", None)
    assert (default["awaiting_worker"], default["claimed"]) == (1, 1)
    assert (other["database"], other["pending"], other["oldest_pending_at"]) == ("other", 0, None)
    page = staff_client.get(URL).content.decode()
    found = re.search(r'<div class="module" id="patchboard-outbox">(.*?)</div>', page, re.S)
    assert found is not None
    rows = re.findall(r'<th scope="row">(.*?)</th><td[^>]*>(.*?)</td>', found.group(1))
    cells = [(name, re.sub(r"<[^>]+>", "", cell)) for name, cell in rows]
    # Humanized like the rest of the page; the seconds go on while the test runs.
    assert re.fullmatch(r"2 min [5-9] s", cells[1][1]), cells[1]
    assert cells[:1] + cells[2:] == [
        ("Unclaimed (default)", "2"),
        ("Failed deliveries", "1"),
        ("Last error", "ConnectionError: broker down"),
        ("Relayed again, unclaimed", "1"),
        ("Claimed by a worker", "1"),
        ("Unclaimed (other)", "0"),
        ("Oldest unclaimed", "-"),
        ("Failed deliveries", "0"),
        ("Relayed again, unclaimed", "0"),
        ("Claimed by a worker", "0"),
    ]


@pytest.mark.django_db(databases=["default", "other"])
def test_the_outbox_controls_redeliver_failed_deliveries_and_purge_old_claimed_ones(
    staff_client: Client, settings: pytest.FixtureRequest
) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from patchboard.models import OutboxEntry

    settings.PATCHBOARD = {"BACKGROUND": {"BACKEND": "dummy", "OUTBOX": True}}
    now = timezone.now()

    def entry(attempts: int, delivered: timedelta | None) -> OutboxEntry:
        return OutboxEntry.objects.create(
            created_at=now - timedelta(hours=3),
            backend="dummy",
            queue_name="default",
            priority=0,
            payload="{}",
            attempts=attempts,
            next_attempt_at=now + timedelta(minutes=5),  # backing off
            delivered_at=None if delivered is None else now - delivered,
        )

    failed, fresh = entry(3, None), entry(0, None)
    old, recent = entry(1, timedelta(hours=2)), entry(1, timedelta(minutes=10))
    page = staff_client.get(URL).content.decode()
    assert 'name="outbox" value="default"' in page and 'value="redeliver_failed"' in page

    response = staff_client.post(URL, {"outbox": "default", "action": "redeliver_failed"})
    assert response.status_code == 302
    failed.refresh_from_db()
    fresh.refresh_from_db()
    assert failed.next_attempt_at <= timezone.now() < fresh.next_attempt_at

    response = staff_client.post(URL, {"outbox": "default", "action": "purge_delivered"})
    assert response.status_code == 302
    left = set(OutboxEntry.objects.values_list("pk", flat=True))
    assert left == {failed.pk, fresh.pk, recent.pk}
    assert old.pk not in left  # only the one a worker claimed 2 h ago
    assert "Purged 1 entries" in staff_client.get(URL).content.decode()

    missing = staff_client.post(URL, {"outbox": "nowhere", "action": "purge_delivered"})
    assert missing.status_code == 404 and "'nowhere'" in missing.content.decode()
    bad = staff_client.post(URL, {"outbox": "default", "action": "drop"})
    assert bad.status_code == 400 and "'drop'" in bad.content.decode()


def test_with_the_metrics_on_each_listeners_latency_is_shown(
    staff_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """p50 and p99 per listener, from this process's histograms (none without metrics)."""
    from prometheus_client import CollectorRegistry

    from patchboard._config import MetricsSettings
    from patchboard._metrics import Metrics
    from patchboard._state import state

    assert "patchboard-latency" not in staff_client.get(URL).content.decode()
    metrics = Metrics(MetricsSettings(enabled=True, buckets=(0.1, 0.5, 1.0)), CollectorRegistry())
    metrics.install()
    monkeypatch.setattr(state, "metrics", metrics)
    try:
        signal = Signal(name="tests.status.latency")
        signal.connect(quick_quote)
        for _ in range(3):
            signal.collect(sender=None)
        data = staff_client.get(URL, {"format": "json"}).json()
        page = staff_client.get(URL).content.decode()
    finally:
        monkeypatch.setattr(state, "metrics", None)  # closed here, not again by reset()
        metrics.close()
    [latency] = data["latency"]
    assert (latency["signal"], latency["listener"], latency["calls"]) == (
        "tests.status.latency",
        f"{__name__}.quick_quote",
        3,
    )
    # Every call fell in the first bucket (0-0.1 s): estimated inside it.
    assert 0 < latency["p50_s"] < latency["p99_s"] <= 0.1
    assert 'id="patchboard-latency"' in page
    assert f"{__name__}.quick_quote" in page


def quick_quote(sender: object, **kwargs: object) -> int:
    return 1
