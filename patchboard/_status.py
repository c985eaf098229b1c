"""
The staff status page: circuit breakers, the short-term queue, the listener
threads, outcome counts and, when it is on, the outbox of background listeners.

Mounted with ``path("patchboard/", include("patchboard.urls"))``, one URL answers:

``GET``
    A page with the admin's look when ``django.contrib.admin`` is installed and
    mounted (it extends ``admin/base_site.html``), a plain page otherwise;
    ``?format=json`` gives the same snapshot as JSON (see :class:`Snapshot`).
    The page shows times as an operator reads them ("opened 4 s ago, probe in
    26 s"), the exact stamps in each ``<time>``'s ``title``; ``?refresh=N``
    reloads it every N seconds (:data:`REFRESH_MIN` to :data:`REFRESH_MAX`).
``POST`` with ``breaker`` (a name) and ``action`` (``open``, ``close`` or ``reset``)
    Forces that circuit open or closed, or resets it, then redirects back to
    the page (post/redirect/get). CSRF-protected like every admin form.
``POST`` with ``outbox`` (a database alias) and ``action`` (``redeliver_failed``
    or ``purge_delivered``)
    Makes that database's failed deliveries due now, for the relay's next
    pass, or deletes the entries a worker claimed (delivered) more than
    :data:`PURGE_DELIVERED_AFTER` seconds ago, then redirects back.

Who may see it, like the admin: anonymous users are redirected to the login
page (``settings.LOGIN_URL`` when the project changed it, else the admin's login
when the admin is mounted, as ``staff_member_required`` does), authenticated
users who are not active staff get 403.

Everything on the page belongs to the process that served it, shown by its
pid: the outcome counts, the queue and the breakers' counters are this
process's, and so is a memory-store breaker's state (forcing it changes this
process only). A breaker with a Redis store shows the shared state, fetched
for the page, and a change made here applies to every process; so is the
outbox, read from its table on each database.

Why async views: the project runs under ASGI, where a sync view costs a
thread hop per request. Here authentication (``request.auser()``), the Redis
reads and the controls (``get_state()``, ``aforce_open()``, ...) are async,
so the JSON snapshot and the controls never leave the event loop. Only the
HTML is rendered in a thread (``sync_to_async``): the admin's templates, a
project's overrides of them and context processors (messages in the session)
may query the database lazily, which an event loop forbids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, NamedTuple, TypedDict

from asgiref.sync import sync_to_async
from django.apps import apps
from django.conf import global_settings, settings
from django.contrib import messages
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import DatabaseError
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotFound,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render, resolve_url
from django.urls import NoReverseMatch, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_http_methods

from patchboard import _clock
from patchboard._background import _outbox
from patchboard._breaker import (
    BreakerStatistics,
    get_breaker,
    listed_breakers,
    listed_circuits,
)
from patchboard._config import get_settings
from patchboard._ledger import outcome_counts
from patchboard._queue import QueueStatistics, queue_stats
from patchboard._state import state
from patchboard._threads import ThreadStatistics, thread_stats

if TYPE_CHECKING:
    from patchboard._metrics import Latency  # the metrics' module imports prometheus_client

TITLE: Final = "patchboard status"
REFRESH_MIN: Final = 2
REFRESH_MAX: Final = 3600
"""The bounds of ``?refresh=N`` (seconds): a page that reloads faster only loads the
process that serves it, and an hour is as good as off."""
REFRESH_CHOICES: Final = (5, 30)
"""The periods the page offers as links."""
ADMIN_BASE: Final = "admin/base_site.html"
PLAIN_BASE: Final = "patchboard/base.html"


class Action(NamedTuple):
    """What a POST's ``action`` does: the breaker's async control, its button, its message."""

    method: str
    label: str
    done: str


ACTIONS: Final[dict[str, Action]] = {
    "open": Action("aforce_open", "Force open", "Forced circuit {!r} open."),
    "close": Action("aforce_closed", "Force closed", "Forced circuit {!r} closed."),
    "reset": Action("areset", "Reset", "Reset circuit {!r}."),
}

OUTBOX_ACTIONS: Final[dict[str, str]] = {
    "redeliver_failed": "Redeliver failed",
    "purge_delivered": "Purge claimed over an hour ago",
}
"""The outbox's controls: a POST's ``action`` to its button's label."""
PURGE_DELIVERED_AFTER: Final = 3600.0
"""Seconds: an entry claimed longer ago than this has long been run (or will not be)."""


# -- the snapshot: one shape for the page and for JSON --------------------------------


class BreakerCounters(TypedDict):
    """A breaker's counters in the process that served the page (since it built the breaker)."""

    rejected: int
    successes: int
    failures_total: int


class BreakerStatus(TypedDict):
    """One breaker, from :meth:`CircuitBreaker.statistics`; datetimes in ISO 8601 (UTC)."""

    name: str
    state: str
    forced: str | None
    failures: int
    opened_at: str | None
    retry_at: str | None
    probes: int
    store: str
    store_kind: str
    """``"memory"``, ``"redis"``, ``"redis_cluster"`` or ``"redis_sentinel"``."""
    shared: bool
    """The state lives in Redis: what the page shows and changes is every process's."""
    fallback: bool
    keyed: bool
    """A keyed breaker: no state of its own, no controls; its circuits (``name[key]``) have them."""
    per_process: BreakerCounters


class QueueStatus(TypedDict):
    """The short-term queue (see :class:`QueueStatistics`); ``counters`` are its totals."""

    workers: int
    running: int
    waiting: int
    oldest_wait_s: float
    service_time_s: float
    abandoned_running: int
    counters: dict[str, int]


class ThreadsStatus(TypedDict):
    """The listener threads (see :class:`ThreadStatistics`): ``busy`` never exceeds ``limit``."""

    limit: int
    busy: int
    waiting: int
    abandoned: int
    abandoned_running: int


class OutboxStatus(TypedDict):
    """
    The outbox on one database (see :class:`OutboxStatistics`), shared by
    every process; ``error`` says why the numbers are missing (no table yet,
    an unreachable database), else it is None. ``pending`` counts the
    entries no worker has claimed (queued in the broker included: the
    outbox cannot tell them from lost ones), ``awaiting_worker`` those of
    them the relay delivered again, ``claimed`` those a worker took.
    """

    database: str
    pending: int | None
    oldest_pending_at: str | None
    failed: int | None
    last_error: str
    awaiting_worker: int | None
    claimed: int | None
    error: str | None


class Snapshot(TypedDict):
    """What the page shows, and what ``?format=json`` returns (keys are stable)."""

    pid: int
    generated_at: str
    breakers: list[BreakerStatus]
    queue: QueueStatus
    threads: ThreadsStatus
    outcomes: dict[str, int]
    outbox: list[OutboxStatus] | None
    """One per database the outbox may be on; None when the outbox is off."""
    latency: list[Latency] | None
    """Each listener's calls and p50/p99 in this process, from the metrics'
    histograms; None when the metrics are off."""
    breaker_notes: list[str]
    """What the breakers' listing leaves out: a keyed breaker's circuits in
    Redis past the cap, or not read (Redis unreachable)."""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def breaker_status(stats: BreakerStatistics, *, keyed: bool = False) -> BreakerStatus:
    """The page's view of one breaker (``keyed``: a keyed breaker itself, not a circuit of it)."""
    return {
        "name": stats.name,
        "state": stats.state,
        "forced": stats.forced,
        "failures": stats.failures,
        "opened_at": _iso(stats.opened_at),
        "retry_at": _iso(stats.retry_at),
        "probes": stats.probes,
        "store": stats.store,
        "store_kind": stats.store_kind,
        "shared": stats.store != "memory",
        "fallback": stats.fallback,
        "keyed": keyed,
        "per_process": {
            "rejected": stats.rejected,
            "successes": stats.successes,
            "failures_total": stats.failures_total,
        },
    }


QUEUE_GAUGES: Final = frozenset(
    {"workers", "running", "waiting", "oldest_wait", "service_time", "abandoned_running"}
)
"""The queue's fields that say how it is now; the others are totals since it was built."""


QUEUE_COUNTER_LABELS: Final = {
    "submitted": "Calls submitted",
    "completed": "Completed",
    "failed": "Failed (the listener raised)",
    "circuit_open": "Refused by an open circuit",
    "timed_out": "Timed out",
    "expired": "Expired waiting in line",
    "shed": "Of them, shed early (overload)",
    "rejected": "Rejected (line full, MAX_PENDING)",
    "cancelled": "Cancelled by their caller",
    "abandoned": "Threads abandoned",
}
"""The page's label of each queue counter; the JSON keeps the keys (:class:`QueueStatistics`)."""


def queue_status(stats: QueueStatistics) -> QueueStatus:
    """The page's view of the short-term queue."""
    return {
        "workers": stats.workers,
        "running": stats.running,
        "waiting": stats.waiting,
        "oldest_wait_s": stats.oldest_wait,
        "service_time_s": stats.service_time,
        "abandoned_running": stats.abandoned_running,
        "counters": {
            field.name: getattr(stats, field.name)
            for field in dataclasses.fields(stats)
            if field.name not in QUEUE_GAUGES
        },
    }


def threads_status(stats: ThreadStatistics) -> ThreadsStatus:
    """The page's view of the listener threads."""
    return {
        "limit": stats.limit,
        "busy": stats.busy,
        "waiting": stats.waiting,
        "abandoned": stats.abandoned,
        "abandoned_running": stats.abandoned_running,
    }


def outbox_status() -> list[OutboxStatus] | None:
    """The page's view of the outbox on each database, or None when it is off (queries)."""
    try:
        if not _outbox.enabled(get_settings().background.backend):
            return None
        databases = _outbox.databases()
    except (ImproperlyConfigured, LookupError):
        return None  # No Tasks framework or backend, or patchboard not installed: no outbox.
    found: list[OutboxStatus] = []
    for alias in databases:
        try:
            stats = _outbox.statistics(alias)
        except DatabaseError as exc:
            found.append(
                {
                    "database": alias,
                    "pending": None,
                    "oldest_pending_at": None,
                    "failed": None,
                    "last_error": "",
                    "awaiting_worker": None,
                    "claimed": None,
                    "error": f"{type(exc).__qualname__}: {exc}"[:500],
                }
            )
            continue
        found.append(
            {
                "database": alias,
                "pending": stats.pending,
                "oldest_pending_at": _iso(stats.oldest_pending_at),
                "failed": stats.failed,
                "last_error": stats.last_error,
                "awaiting_worker": stats.awaiting_worker,
                "claimed": stats.claimed,
                "error": None,
            }
        )
    return found


async def snapshot() -> Snapshot:
    """
    Every breaker (those declared in ``PATCHBOARD["BREAKERS"]`` are built if
    this process has not used them yet), the queue, the listener threads and
    the outcome counts.
    Redis-backed breakers are read from Redis first, concurrently; one that
    cannot be reached shows this process's fallback state. A keyed breaker's
    circuits that are open, half-open or forced are listed: this process's, and with Redis
    those other processes opened (see ``listed_breakers``).

    Raises:
        ImproperlyConfigured: ``PATCHBOARD`` or a declared breaker is invalid.
    """
    for name in get_settings().breakers:
        get_breaker(name)
    # Blocking (a keyed breaker's circuits in Redis, by SCAN): in a thread.
    breakers, notes = await sync_to_async(listed_breakers, thread_sensitive=False)()
    await asyncio.gather(*(breaker.get_state() for breaker in breakers))
    breakers = listed_circuits(breakers)  # a keyed breaker's circuits: not closed, or forced
    return {
        "pid": os.getpid(),
        "generated_at": datetime.now(UTC).isoformat(),
        "breakers": [breaker_status(b.statistics(), keyed=b.keyed) for b in breakers],
        "queue": queue_status(queue_stats()),
        "threads": threads_status(thread_stats()),
        "outcomes": outcome_counts(),
        # The database is sync-only: a thread, like the rendering.
        "outbox": await sync_to_async(outbox_status)(),
        "latency": None if state.metrics is None else state.metrics.latencies(),
        "breaker_notes": notes,
    }


# -- the view --------------------------------------------------------------------------


@csrf_protect
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
async def status_page(request: HttpRequest) -> HttpResponse:
    """
    The status page (``GET``, ``?format=json``) and its breaker controls (``POST``).

    Raises:
        PermissionDenied: the user is authenticated but not active staff (403).
    """
    user = await request.auser()
    if not user.is_authenticated:
        # Imported here: django.contrib.auth.views needs the app registry ready.
        from django.contrib.auth.views import redirect_to_login

        return redirect_to_login(request.get_full_path(), _login_url())
    if not (user.is_active and user.is_staff):
        raise PermissionDenied("the patchboard status page is for staff users")
    # auser() caches apart from request.user: the templates, rendered in a
    # thread, read request.user and would load the user again.
    request.user = user
    if request.method == "POST":
        return await _control(request)
    page_format = request.GET.get("format", "html")
    if page_format == "json":
        return JsonResponse(await snapshot(), json_dumps_params={"indent": 2})
    if page_format != "html":
        return HttpResponseBadRequest(
            f"format must be 'html' or 'json', got {page_format!r}", content_type="text/plain"
        )
    try:
        refresh = refresh_period(request.GET.get("refresh"))
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc), content_type="text/plain")
    status = await snapshot()
    # The breakers' clock (a virtual one in tests), read with the snapshot.
    now = datetime.fromtimestamp(_clock.wall(), UTC)
    return await sync_to_async(_render)(request, status, now, refresh)


def refresh_period(value: str | None) -> int | None:
    """
    ``?refresh=N``: whole seconds within the bounds, or None (absent, empty, ``0``: off).

    Raises:
        ValueError: anything else, with a message naming the parameter and its bounds.
    """
    if value in (None, "", "0"):
        return None
    if value.isdigit() and REFRESH_MIN <= int(value) <= REFRESH_MAX:
        return int(value)
    raise ValueError(
        f"refresh must be a whole number of seconds from {REFRESH_MIN} to {REFRESH_MAX} "
        f"(0 or nothing: off), got {value!r}"
    )


async def _control(request: HttpRequest) -> HttpResponse:
    """Apply a POST's ``action`` to its ``breaker``, then redirect back to the page."""
    if "outbox" in request.POST:
        return await _control_outbox(request)
    name, action = request.POST.get("breaker", ""), request.POST.get("action", "")
    if action not in ACTIONS:
        return HttpResponseBadRequest(
            f"action must be one of {', '.join(map(repr, ACTIONS))}, got {action!r}",
            content_type="text/plain",
        )
    try:
        breaker = get_breaker(name)
    except ImproperlyConfigured as exc:
        return HttpResponseNotFound(str(exc), content_type="text/plain")
    if breaker.keyed:
        return HttpResponseBadRequest(
            f"circuit breaker {name!r} is keyed: it has no state of its own; force or "
            f"reset one of its circuits ({name}[<key>]), which the page lists",
            content_type="text/plain",
        )
    control = ACTIONS[action]
    try:
        await getattr(breaker, control.method)()
    except Exception as exc:  # the Redis store is unreachable
        return HttpResponse(
            f"could not change circuit {name!r} in {breaker.statistics().store}: {exc!r} "
            "(this process's fallback state changed anyway)",
            status=503,
            content_type="text/plain",
        )
    message = control.done.format(name)
    if breaker.statistics().store == "memory":
        message += (
            f" It keeps its state in memory: the change applies to this process "
            f"(pid {os.getpid()}) only."
        )
    messages.success(request, message, fail_silently=True)
    # Back to the page as it was asked for: its ?refresh= stays on.
    return HttpResponseRedirect(request.get_full_path())


async def _control_outbox(request: HttpRequest) -> HttpResponse:
    """Apply a POST's ``action`` to the outbox on database ``outbox``, then redirect back."""
    alias, action = request.POST["outbox"], request.POST.get("action", "")
    if action not in OUTBOX_ACTIONS:
        return HttpResponseBadRequest(
            f"action must be one of {', '.join(map(repr, OUTBOX_ACTIONS))}, got {action!r}",
            content_type="text/plain",
        )
    if alias not in await sync_to_async(_outbox_databases)():
        return HttpResponseNotFound(
            f"no outbox on database {alias!r}: the outbox is off, or the database is "
            f"not one of {', '.join(map(repr, settings.DATABASES))}",
            content_type="text/plain",
        )
    try:
        if action == "redeliver_failed":
            count = await sync_to_async(_outbox.redeliver_failed)(alias)
            message = f"{count} failed deliveries on {alias!r} are due now, for the relay."
        else:
            count = await sync_to_async(_outbox.purge_delivered)(alias, PURGE_DELIVERED_AFTER)
            message = f"Purged {count} entries claimed over an hour ago from {alias!r}."
    except DatabaseError as exc:
        return HttpResponse(
            f"could not change the outbox on {alias!r}: {exc!r}",
            status=503,
            content_type="text/plain",
        )
    messages.success(request, message, fail_silently=True)
    return HttpResponseRedirect(request.get_full_path())


def _outbox_databases() -> list[str]:
    """The databases the page may act on: those it shows an outbox for."""
    return [each["database"] for each in outbox_status() or ()]


# -- the page's reading of the snapshot: times as an operator wants them ------------------


class Moment(NamedTuple):
    """A time on the page: what it reads ("opened 4 s ago"), its exact ISO stamp."""

    text: str
    stamp: str
    title: str


def duration(seconds: int) -> str:
    """Whole seconds in two units at most: ``4 s``, ``2 min 5 s``, ``3 h 20 min``, ``2 d 4 h``."""
    if seconds < 60:
        return f"{seconds} s"
    for unit, size, small, small_size, below in _UNITS:
        if seconds < below:
            count, rest = divmod(seconds, size)
            rest //= small_size
            return f"{count} {unit} {rest} {small}" if rest else f"{count} {unit}"
    raise AssertionError("unreachable: the last unit has no bound")


_UNITS: Final = (
    ("min", 60, "s", 1, 3600),
    ("h", 3600, "min", 60, 86400),
    ("d", 86400, "h", 3600, math.inf),
)
"""(unit, its seconds, the smaller unit shown beside it, its seconds, used below)."""


def breaker_moments(breaker: BreakerStatus, now: datetime) -> list[Moment]:
    """
    When the circuit opened and when its next probe goes, relative to ``now``:
    ``opened 4 s ago``, ``probe in 26 s`` (rounded up: never "in 0 s" before it
    is due), ``probe on the next call`` once due, or ``probing`` while a probe
    is in flight. A closed circuit has none; a forced-open one has no probe.
    """
    moments = []
    if breaker["opened_at"] is not None:
        opened = datetime.fromisoformat(breaker["opened_at"])
        ago = max(0, math.floor((now - opened).total_seconds()))
        moments.append(
            Moment(
                f"opened {duration(ago)} ago",
                breaker["opened_at"],
                f"opened at {breaker['opened_at']}",
            )
        )
    if breaker["retry_at"] is not None and breaker["state"] != "closed":
        retry = datetime.fromisoformat(breaker["retry_at"])
        left = math.ceil((retry - now).total_seconds())
        if breaker["probes"]:
            text = "probing"
        elif left > 0:
            text = f"probe in {duration(left)}"
        else:
            text = "probe on the next call"
        moments.append(Moment(text, breaker["retry_at"], f"probe at {breaker['retry_at']}"))
    return moments


def outbox_moment(outbox: OutboxStatus, now: datetime) -> Moment | None:
    """How old the oldest unclaimed entry is (``4 s``), or None when every entry is claimed."""
    if outbox["oldest_pending_at"] is None:
        return None
    oldest = datetime.fromisoformat(outbox["oldest_pending_at"])
    age = max(0, math.floor((now - oldest).total_seconds()))
    return Moment(
        duration(age), outbox["oldest_pending_at"], f"written at {outbox['oldest_pending_at']}"
    )


def latency_text(seconds: float) -> str:
    """A latency as an operator reads it: ``"0.8 ms"``, ``"45 ms"``, ``"1.25 s"``."""
    if seconds >= 1:
        return f"{seconds:.3g} s"
    milliseconds = seconds * 1000
    return f"{milliseconds:.2g} ms" if milliseconds < 10 else f"{milliseconds:.0f} ms"


def _render(
    request: HttpRequest, status: Snapshot, now: datetime, refresh: int | None
) -> HttpResponse:
    """The HTML page, in the admin's frame when the admin is mounted (run in a thread)."""
    context: dict[str, object] = {}
    base = PLAIN_BASE
    if _admin_mounted():
        # Imported here: django.contrib.admin needs the app registry ready.
        from django.contrib import admin

        context.update(admin.site.each_context(request))
        base = ADMIN_BASE
    generated = datetime.fromisoformat(status["generated_at"])
    context.update(
        base_template=base,
        title=TITLE,
        status=status,
        generated=Moment(
            f"{generated:%H:%M:%S} UTC", status["generated_at"], status["generated_at"]
        ),
        breakers=[(b, breaker_moments(b, now)) for b in status["breakers"]],
        queue_counters=[
            (QUEUE_COUNTER_LABELS[name], count)
            for name, count in status["queue"]["counters"].items()
        ],
        outbox=[(o, outbox_moment(o, generated)) for o in status["outbox"] or ()],
        latency=[
            (each, latency_text(each["p50_s"]), latency_text(each["p99_s"]))
            for each in status["latency"] or ()
        ],
        shared=[b["name"] for b in status["breakers"] if b["shared"]],
        refresh=refresh,
        refresh_choices=REFRESH_CHOICES,
        actions=ACTIONS,
        outbox_actions=OUTBOX_ACTIONS,
    )
    return render(request, "patchboard/status.html", context)


def _admin_mounted() -> bool:
    """Whether ``django.contrib.admin`` is installed and its URLs are in the URLconf."""
    if not apps.is_installed("django.contrib.admin"):
        return False
    try:
        reverse("admin:index")
    except NoReverseMatch:
        return False
    return True


def _login_url() -> str:
    """``settings.LOGIN_URL`` if the project changed it, else the admin's login if mounted."""
    if settings.LOGIN_URL == global_settings.LOGIN_URL and _admin_mounted():
        return reverse("admin:login")
    return resolve_url(settings.LOGIN_URL)
