"""
The walkthrough that ``make demo`` prints and ``tests/harness/test_example_e2e.py``
asserts. Each step drives the running :class:`~examples.stack.Stack` over
HTTP, then checks what happened three ways: in the shop's responses, in the
carriers' request counts (did a call reach the carrier at all?) and in the
shop's and the worker's logs.

The expected values come from their sources: list prices from the carriers
app, the timeout, breaker and queue limits from the shop's settings module.
"""

from __future__ import annotations

import asyncio
import runpy
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar

import httpx

from examples.carriers.app import LATENCY_MS, list_price
from examples.stack import SHOP, Stack

SETTINGS = runpy.run_path(str(SHOP / "shop" / "settings.py"))
CARRIERS: list[str] = SETTINGS["CARRIERS"]
TIMEOUT_S: float = SETTINGS["CARRIER_TIMEOUT"]
KEYED: str = SETTINGS["CARRIER_BREAKER"]
BREAKER: dict[str, Any] = SETTINGS["PATCHBOARD"]["BREAKERS"][KEYED]
"""The carriers' keyed breaker: its rate rule and reset timeout hold for each circuit."""
RULE = (
    f"{BREAKER['failure_rate']:.0%} of the last {BREAKER['window_size']} calls failed "
    f"(at least {BREAKER['minimum_calls']} made)"
)
"""When a carrier's circuit opens, in words."""
MAX_WORKERS: int = SETTINGS["PATCHBOARD"]["SHORT_TERM_QUEUE"]["MAX_WORKERS"]

SLOW, FAILING = "dhl", "fedex"
SLOW_LATENCY_MS = 3000
FAILING_LATENCY_MS = 600
"""The failing carrier answers its 503 slowly, as an overloaded service does."""
BURST_LATENCY_MS = 500
FAST = "gls"
FIRST_SLOW_MS = 1500
WORKER_DEADLINE_S = 20.0

INTERESTING = {
    "listener_timeout",
    "queue_item_expired",
    "queue_scaled_up",
    "circuit_opened",
    "circuit_half_opened",
    "circuit_closed",
    "order_audited",
    "background_enqueued",
    "background_started",
    "background_finished",
    "receipt_sent",
}
"""The log events a step shows (not ``listener_failed``: the table shows the errors,
the shop's log has their tracebacks)."""

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Check:
    label: str
    passed: bool
    detail: str = ""


@dataclass(slots=True)
class Step:
    """What one step of the walkthrough showed: a table, checks and log events."""

    name: str
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def check(self, label: str, passed: bool, detail: object = "") -> None:
        self.checks.append(Check(label, passed, "" if passed else str(detail)))

    def report(self) -> str:
        """The step as text, for a failing test's message."""
        lines = [f"{self.title} ({self.elapsed:.1f} s)", " | ".join(self.columns)]
        lines += [" | ".join(row) for row in self.rows]
        lines += [f"{'ok ' if c.passed else 'FAIL'} {c.label} {c.detail}" for c in self.checks]
        lines += [format_event(event) for event in self.events]
        return "\n".join(lines)


class Walkthrough:
    """
    The scripted visit: :meth:`run` plays the steps in order (each builds on
    the state the previous ones left) and stops after the first that fails.
    ``progress`` is told what a step is waiting for, while it waits.
    """

    STEPS: ClassVar[list[tuple[str, str]]] = [
        # (the method that plays it, its title)
        ("concurrent_quotes", "Concurrent quotes: five carts at once, six carriers each"),
        ("slow_carrier", f"A slow carrier: {SLOW} takes {SLOW_LATENCY_MS} ms"),
        ("failing_carrier", f"A failing carrier: {FAILING} answers 503, its circuit opens"),
        ("recovery", f"{FAILING} heals: its circuit lets a probe through"),
        ("burst", "A burst: twenty carts at once, every carrier slowed down"),
        ("first_quote", f"The first quote wins: {FAST} answers at once, the rest are slow"),
        ("order", "An order: ordered side effects, then the receipt in the worker"),
        ("status_page", "The staff status page: what the shop's process counted"),
        ("metrics", "One Prometheus scrape of /metrics: the same counts, for the fleet"),
    ]

    http: httpx.AsyncClient
    """The client for one :meth:`run`."""

    def __init__(self, stack: Stack, progress: Progress = lambda text: None) -> None:
        self.stack = stack
        self.progress = progress
        self.since: dict[str, int] = {}
        self.seen: Counter[str] = Counter()
        """Every carrier outcome the shop's responses reported."""
        self.counted: dict[str, list[bool]] = {carrier: [] for carrier in CARRIERS}
        """Each carrier's calls its circuit counted (True: failed), as the responses said."""
        self.cancelled = 0
        """The carrier calls a first-quote request cancelled when it had its answer."""
        self.staff_password = ""
        """The staff user's, once the status page step has made it."""

    async def run(
        self,
        on_start: Callable[[Step], None] = lambda step: None,
        on_end: Callable[[Step], None] = lambda step: None,
    ) -> list[Step]:
        """Play the steps; each step goes to ``on_start`` and, complete, to ``on_end``."""
        done = []
        async with httpx.AsyncClient(timeout=30.0) as self.http:
            for name, title in self.STEPS:
                step = Step(name, title)
                on_start(step)
                self.since = self.stack.log_positions()
                started = time.monotonic()
                try:
                    await getattr(self, name)(step)
                except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
                    step.check("the step ran to its end", False, repr(exc))
                step.elapsed = time.monotonic() - started
                step.events = [e for e in self.events() if e["event"] in INTERESTING]
                done.append(step)
                on_end(step)
                if not step.passed:
                    break
        return done

    # -- the steps ------------------------------------------------------------------------

    async def concurrent_quotes(self, step: Step) -> None:
        await self.carriers("POST", "/reset")
        carts = [1, 2, 3, 4, 5]
        before = await self.carriers("GET", "/stats")
        responses = await asyncio.gather(*(self.quote(cart) for cart in carts))
        after = await self.carriers("GET", "/stats")
        self.quote_table(step, responses)

        statuses = Counter(q["status"] for r in responses for q in r["carriers"])
        every = len(carts) * len(CARRIERS)
        step.check("every carrier quoted every cart", statuses == {"ok": every}, statuses)
        wrong = [
            (r["cart"], q["carrier"], q["price"])
            for r in responses
            for q in r["carriers"]
            if q["price"] != str(list_price(q["carrier"], r["cart"]))
        ]
        step.check("each price is the carrier's list price", not wrong, wrong)
        step.check(
            "the cheapest is the lowest list price",
            all(Decimal(r["cheapest"]["price"]) == cheapest(r["cart"]) for r in responses),
            [r["cheapest"] for r in responses],
        )
        calls = called(before, after)
        step.check(
            "each request called each carrier once",
            calls == dict.fromkeys(CARRIERS, len(carts)),
            calls,
        )
        peak = after["peak_in_flight"]
        step.check(
            f"calls overlapped, never more than {MAX_WORKERS} at once (the queue's bound)",
            1 < peak <= MAX_WORKERS,
            f"peak_in_flight={peak}",
        )

    async def slow_carrier(self, step: Step) -> None:
        await self.control(SLOW, latency_ms=SLOW_LATENCY_MS)
        response = await self.quote(1)
        await self.control(SLOW, latency_ms=LATENCY_MS[SLOW])
        self.quote_table(step, [response])

        slow = by_carrier(response)[SLOW]
        step.check(
            f"{SLOW} timed out at {TIMEOUT_S:g} s and gave no price",
            (slow["status"], slow["price"]) == ("timeout", None),
            slow,
        )
        step.check("the other carriers quoted", only(response, "ok", but=SLOW), response)
        step.check(
            f"the request did not wait {SLOW_LATENCY_MS} ms for {SLOW}",
            response["elapsed_ms"] < SLOW_LATENCY_MS,
            f"elapsed_ms={response['elapsed_ms']}",
        )
        logged = await self.logged("listener_timeout", listener=listener(SLOW))
        step.check("listener_timeout was logged", logged is not None, self.event_names())

    async def failing_carrier(self, step: Step) -> None:
        # fedex's circuit counted every call so far (it never opened): its window holds them.
        threshold = failures_to_open(self.counted[FAILING])
        await self.control(FAILING, fail_rate=1.0, latency_ms=FAILING_LATENCY_MS)
        before = await self.carriers("GET", "/stats")
        responses = [await self.quote(2) for _ in range(threshold + 2)]
        after = await self.carriers("GET", "/stats")
        self.quote_table(step, responses)

        outcomes = [by_carrier(r)[FAILING] for r in responses]
        statuses = [q["status"] for q in outcomes]
        failed = all(s in ("error", "timeout") for s in statuses[:threshold])
        step.check(
            f"{threshold} failures opened {circuit(FAILING)}: {RULE}",
            failed and statuses[threshold:] == ["circuit_open"] * 2,
            statuses,
        )
        calls = called(before, after)[FAILING]
        step.check(f"with the circuit open, {FAILING} was not called", calls == threshold, calls)
        open_ = outcomes[threshold:]
        step.check(
            f"{FAILING}'s fallback answered with its last quote",
            all(q["cached"] and q["price"] == str(list_price(FAILING, 2)) for q in open_),
            open_,
        )
        step.check(
            f"requests stopped waiting for {FAILING} ({FAILING_LATENCY_MS} ms)",
            all(q["elapsed_ms"] < FAILING_LATENCY_MS for q in open_),
            open_,
        )
        step.check(
            "the other carriers quoted every time, their circuits closed",
            all(only(r, "ok", but=FAILING) for r in responses),
            responses,
        )
        logged = await self.logged("circuit_opened", breaker=circuit(FAILING))
        step.check("circuit_opened was logged", logged is not None, self.event_names())
        chosen = await self.quote_from(FAILING, 2)
        step.check(
            f"GET /quotes/{FAILING}, whose call names the carrier: breaker={KEYED!r} keys it "
            f"to the same circuit, open, so {FAILING} was not asked",
            chosen["status"] == "circuit_open",
            chosen,
        )

    async def recovery(self, step: Step) -> None:
        await self.control(FAILING, fail_rate=0.0, latency_ms=LATENCY_MS[FAILING])
        before = await self.carriers("GET", "/stats")
        started = time.monotonic()
        polls = [await self.quote(2)]
        while by_carrier(polls[-1])[FAILING]["status"] == "circuit_open":
            waited = time.monotonic() - started
            if waited > BREAKER["reset_timeout"] + 10:
                break
            self.progress(
                f"{FAILING} is healthy again; {circuit(FAILING)} stays open for "
                f"{BREAKER['reset_timeout']:g} s: {waited:.1f} s"
            )
            await asyncio.sleep(0.5)
            polls.append(await self.quote(2))
        polls.append(await self.quote(2))
        after = await self.carriers("GET", "/stats")
        self.quote_table(step, polls[:1] + polls[-2:])
        if len(polls) > 3:
            step.rows.insert(1, ["...", f"{len(polls) - 3} more polls, {FAILING}: circuit_open"])

        statuses = [by_carrier(r)[FAILING]["status"] for r in polls]
        step.check(
            "the circuit stayed open, then one probe closed it",
            statuses[-2:] == ["ok", "ok"] and all(s == "circuit_open" for s in statuses[:-2]),
            statuses,
        )
        calls = called(before, after)[FAILING]
        step.check(
            f"{FAILING} was called only by the probe and the request after it", calls == 2, calls
        )
        half_open = await self.logged("circuit_half_opened", breaker=circuit(FAILING))
        closed = await self.logged("circuit_closed", breaker=circuit(FAILING))
        step.check(
            "circuit_half_opened and circuit_closed were logged",
            half_open is not None and closed is not None,
            self.event_names(),
        )

    async def burst(self, step: Step) -> None:
        await self.carriers("POST", "/reset")
        for carrier in CARRIERS:
            await self.control(carrier, latency_ms=BURST_LATENCY_MS)
        carts = [1, 2, 3, 4, 5] * 4
        responses = await asyncio.gather(*(self.quote(cart) for cart in carts))
        after = await self.carriers("GET", "/stats")
        await self.carriers("POST", "/reset")
        outcomes = [(r["cart"], q) for r in responses for q in r["carriers"]]
        statuses = Counter(q["status"] for _, q in outcomes)
        calls = called(None, after)
        step.columns = ["carrier", "ok", "expired", "calls it got"]
        for carrier in CARRIERS:
            mine = Counter(q["status"] for _, q in outcomes if q["carrier"] == carrier)
            step.rows.append([carrier, str(mine["ok"]), str(mine["expired"]), str(calls[carrier])])

        step.check(
            f"calls waited for one of {MAX_WORKERS} workers, and some expired",
            statuses["expired"] > 0 and set(statuses) <= {"ok", "timeout", "expired"},
            statuses,
        )
        step.check(
            "an expired call never reached its carrier",
            sum(calls.values()) == statuses["ok"] + statuses["timeout"],
            f"calls={calls} statuses={statuses}",
        )
        expired = [(cart, q) for cart, q in outcomes if q["status"] == "expired"]
        step.check(
            "each expired call was answered by its fallback (the last quote)",
            all(q["cached"] and q["price"] == str(list_price(q["carrier"], c)) for c, q in expired),
            expired,
        )
        peak = after["peak_in_flight"]
        step.check(
            f"never more than {MAX_WORKERS} calls at once", peak <= MAX_WORKERS, f"peak={peak}"
        )
        logged = [e for e in self.events() if e["event"] == "queue_item_expired"]
        carriers_logged = {e["listener"].rsplit("_", 1)[-1] for e in logged}
        expired_carriers = {q["carrier"] for _, q in expired}
        step.check(
            "queue_item_expired was logged for each carrier, not once per item (rate-limited)",
            carriers_logged == expired_carriers and len(logged) < statuses["expired"],
            f"{len(logged)} lines for {statuses['expired']} expired calls",
        )

    async def first_quote(self, step: Step) -> None:
        await self.carriers("POST", "/reset")
        for carrier in CARRIERS:
            await self.control(carrier, latency_ms=0 if carrier == FAST else FIRST_SLOW_MS)
        answer = (await self.shop("GET", "/quotes/first", params={"cart": 4})).json()
        self.seen.update(["ok"])  # the quote the page returned; the others were cancelled
        self.cancelled += len(CARRIERS) - 1
        await self.carriers("POST", "/reset")
        first = answer["first"] or {}
        step.columns = ["carrier", "status", "price", "elapsed ms"]
        step.rows.append(
            [
                first.get("carrier", "-"),
                first.get("status", "-"),
                str(first.get("price")),
                str(answer["elapsed_ms"]),
            ]
        )
        step.check(
            f"{FAST} answered first, at its list price",
            (first.get("carrier"), first.get("price")) == (FAST, str(list_price(FAST, 4))),
            answer,
        )
        step.check(
            f"the page did not wait for the others ({FIRST_SLOW_MS} ms each): their calls "
            "were cancelled (the status page counts them)",
            answer["elapsed_ms"] < FIRST_SLOW_MS,
            answer,
        )

    async def order(self, step: Step) -> None:
        created = await self.http.post(
            f"{self.stack.shop_url}/orders", json={"cart": 2, "total": "42.50"}
        )
        order = created.json()
        started = time.monotonic()
        while order.get("receipt_sent_at") is None:
            waited = time.monotonic() - started
            if waited > WORKER_DEADLINE_S:
                break
            self.progress(f"waiting for the worker to send order {order['id']}'s receipt")
            await asyncio.sleep(0.1)
            order = (await self.shop("GET", f"/orders/{order['id']}")).json()
        receipt_after = time.monotonic() - started
        step.columns = ["order", "total", "history", "loyalty points", "receipt sent"]
        step.rows.append(
            [
                str(order["id"]),
                order["total"],
                ", ".join(order["history"]),
                str(order["loyalty_points"]),
                f"{receipt_after * 1000:.0f} ms after the response",
            ]
        )

        step.check("201 Created", created.status_code == 201, created.status_code)
        step.check(
            "order_paid's listeners ran by priority: stock, then points, then audit",
            order["history"] == ["stock_reserved", "loyalty_points", "audited"],
            order["history"],
        )
        step.check("a loyalty point per euro", order["loyalty_points"] == 42, order)
        step.check(
            "the receipt was sent after the response", order["receipt_sent_at"] is not None, order
        )
        finished = await self.logged("background_finished", listener=RECEIPT)
        enqueued = await self.logged("background_enqueued", listener=RECEIPT)
        step.check(
            "by the Tasks worker, as the task the shop enqueued when its transaction committed",
            finished is not None
            and enqueued is not None
            and (finished["process"], enqueued["process"]) == ("worker", "shop")
            and finished["task_id"] == enqueued["task_id"]
            and enqueued["on_commit"] is True,
            (enqueued, finished),
        )

    async def status_page(self, step: Step) -> None:
        anonymous = await self.http.get(f"{self.stack.shop_url}/patchboard/")
        # Every listener call the shop made: the quotes, order_paid's three, the receipt's enqueue.
        expected = self.seen + Counter({"ok": 3, "enqueued": 1, "cancelled": self.cancelled})
        password = self.staff_password = secrets.token_urlsafe(12)
        await asyncio.to_thread(self.stack.create_staff_user, "staff", password)
        forced_open = circuit("ups")
        async with httpx.AsyncClient(base_url=self.stack.shop_url, timeout=30.0) as staff:
            await log_in(staff, "staff", password)
            snapshot = (await staff.get("/patchboard/", params={"format": "json"})).json()
            stylesheet = await staff.get("/static/admin/css/base.css")
            await submit(staff, "/patchboard/", breaker=forced_open, action="open")
            forced = by_carrier(await self.quote(1))["ups"]
            listed = (await staff.get("/patchboard/", params={"format": "json"})).json()
            html = await staff.get("/patchboard/")
            await submit(staff, "/patchboard/", breaker=forced_open, action="reset")
            reset = by_carrier(await self.quote(1))["ups"]
        step.columns = ["breaker", "state", "successes", "failures", "rejected"]
        for breaker in listed["breakers"]:  # ups's circuit forced open: listed
            counters = breaker["per_process"]
            state = breaker["state"] + (
                f" (forced {breaker['forced']})" if breaker["forced"] else ""
            )
            step.rows.append(
                [breaker["name"], state]
                + [str(counters[key]) for key in ("successes", "failures_total", "rejected")]
            )
        outcomes = {status: n for status, n in snapshot["outcomes"].items() if n}
        step.rows.append(["outcomes:", ", ".join(f"{k} {v}" for k, v in outcomes.items())])

        step.check(
            "anonymous users are sent to the login page",
            anonymous.is_redirect and "/admin/login/" in anonymous.headers["location"],
            anonymous,
        )
        step.check(
            f"staff see the keyed breaker {KEYED} and none of its circuits: all closed again",
            [(b["name"], b["state"]) for b in snapshot["breakers"]] == [(KEYED, "closed")],
            snapshot["breakers"],
        )
        ended = {status: n for status, n in outcomes.items() if status != "submitted"}
        step.check(
            "it counted every listener call the walkthrough saw, each once",
            ended == dict(expected) and outcomes.get("submitted") == sum(ended.values()),
            f"page {outcomes}, walkthrough {dict(expected)}",
        )
        step.check(
            "the queue counted each expired call",
            snapshot["queue"]["counters"]["expired"] == expected["expired"],
            snapshot["queue"],
        )
        step.check(
            "the HTML page, in the admin's frame and style",
            html.status_code == 200
            and f'data-breaker="{forced_open}"' in html.text
            and 'id="site-name"' in html.text
            and stylesheet.status_code == 200,
            (html, stylesheet),
        )
        step.check(
            f"{forced_open} forced open from the page: listed, ups not asked; reset: asked again",
            [(b["name"], b["forced"]) for b in listed["breakers"]]
            == [(KEYED, None), (forced_open, "open")]
            and (forced["status"], reset["status"]) == ("circuit_open", "ok"),
            (listed["breakers"], forced, reset),
        )

    async def metrics(self, step: Step) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        async with httpx.AsyncClient(base_url=self.stack.shop_url, timeout=30.0) as staff:
            await log_in(staff, "staff", self.staff_password)
            snapshot = (await staff.get("/patchboard/", params={"format": "json"})).json()
            scrape = await staff.get("/metrics")
        calls: Counter[str] = Counter()
        by_listener: Counter[tuple[str, str]] = Counter()
        for family in text_string_to_metric_families(scrape.text):
            if family.name != "patchboard_listener_calls":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    calls[sample.labels["status"]] += int(sample.value)
                    listener = sample.labels["listener"].rpartition(".")[2]
                    by_listener[listener, sample.labels["status"]] += int(sample.value)
        step.columns = ["listener", "patchboard_listener_calls_total by status"]
        for listener in sorted({listener for listener, _ in by_listener}):
            counts = [f"{s} {n}" for (who, s), n in sorted(by_listener.items()) if who == listener]
            step.rows.append([listener, ", ".join(counts)])
        counted = {k: n for k, n in snapshot["outcomes"].items() if n and k != "submitted"}
        step.check(
            "/metrics answers in Prometheus's text format",
            scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain"),
            scrape,
        )
        step.check(
            "patchboard_listener_calls_total, by status, equals the status page's counts",
            {k: n for k, n in calls.items() if n} == counted,
            f"scraped {dict(calls)}, page {counted}",
        )

    # -- talking to the stack -----------------------------------------------------------

    async def shop(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.http.request(method, f"{self.stack.shop_url}{path}", **kwargs)
        response.raise_for_status()
        return response

    async def carriers(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.http.request(method, f"{self.stack.carriers_url}{path}", **kwargs)
        response.raise_for_status()
        return response.json()

    async def quote(self, cart: int) -> Any:
        response = (await self.shop("GET", "/quotes", params={"cart": cart})).json()
        self.seen.update(q["status"] for q in response["carriers"])
        for q in response["carriers"]:
            if q["status"] in ("ok", "error", "timeout"):  # the calls that ran
                self.counted[q["carrier"]].append(q["status"] != "ok")
        return response

    async def quote_from(self, carrier: str, cart: int) -> Any:
        """One carrier's quote (``GET /quotes/<carrier>``): its listener's circuit comes
        from the call's ``carrier`` argument."""
        response = (await self.shop("GET", f"/quotes/{carrier}", params={"cart": cart})).json()
        self.seen.update([response["status"]])
        return response

    async def control(self, carrier: str, **changes: float) -> None:
        await self.carriers("POST", f"/control/{carrier}", json=changes)

    def events(self) -> list[dict[str, Any]]:
        """The events logged since the step started."""
        return self.stack.events(self.since)

    def event_names(self) -> Counter[str]:
        return Counter(event["event"] for event in self.events())

    async def logged(self, name: str, **match: Any) -> dict[str, Any] | None:
        """The first ``name`` event of this step matching ``match``, waiting a little for it."""
        deadline = time.monotonic() + 5.0
        while True:
            for event in self.events():
                if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
                    return event
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)

    @staticmethod
    def quote_table(step: Step, responses: Iterable[dict[str, Any]]) -> None:
        step.columns = ["cart", *CARRIERS, "cheapest", "elapsed"]
        for response in responses:
            best = response["cheapest"]
            step.rows.append(
                [
                    str(response["cart"]),
                    *(cell(q) for q in response["carriers"]),
                    f"{best['carrier']} {best['price']}" if best else "-",
                    f"{response['elapsed_ms']} ms",
                ]
            )


RECEIPT = "shop.receivers.send_receipt"


async def log_in(client: httpx.AsyncClient, username: str, password: str) -> None:
    """Log ``client`` in through the admin's login form."""
    await client.get("/admin/login/")  # sets the CSRF cookie
    await submit(client, "/admin/login/", username=username, password=password, next="/admin/")


async def submit(client: httpx.AsyncClient, path: str, **fields: str) -> None:
    """
    Post a form as a browser does, with the CSRF token.

    Raises:
        ValueError: the form was refused (a form that succeeds redirects).
    """
    token = client.cookies["csrftoken"]
    response = await client.post(path, data={**fields, "csrfmiddlewaretoken": token})
    if not response.is_redirect:
        raise ValueError(f"POST {path} was refused: {response.status_code}")


def circuit(carrier: str) -> str:
    """The name of ``carrier``'s circuit, as its events and the status page give it."""
    return f"{KEYED}[{carrier}]"


def failures_to_open(counted: list[bool]) -> int:
    """
    How many failures in a row open a circuit of :data:`BREAKER` (its rate
    rule, on a count window) that has counted ``counted`` (True: failed).
    """
    window = deque(counted, maxlen=BREAKER["window_size"])
    rate = Fraction(str(BREAKER["failure_rate"]))  # exact, as the breaker's integer arithmetic
    failures = 0
    while True:  # ends: a window full of failures has a rate of 1
        failures += 1
        window.append(True)
        if len(window) >= BREAKER["minimum_calls"] and sum(window) >= rate * len(window):
            return failures


def listener(carrier: str) -> str:
    return f"shop.receivers.quote_{carrier}"


def by_carrier(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {q["carrier"]: q for q in response["carriers"]}


def only(response: dict[str, Any], status: str, *, but: str) -> bool:
    """Whether every carrier but ``but`` ended with ``status``."""
    return all(q["status"] == status for q in response["carriers"] if q["carrier"] != but)


def cheapest(cart: int) -> Decimal:
    return min(list_price(carrier, cart) for carrier in CARRIERS)


def called(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, int]:
    """How many quote requests each carrier received between two ``/stats``."""
    start = before["carriers"] if before else {}
    return {
        name: counts["requests"] - start.get(name, {}).get("requests", 0)
        for name, counts in after["carriers"].items()
    }


def cell(quote: dict[str, Any]) -> str:
    """A carrier's outcome in a table: its price, its status, or both for a fallback."""
    status, price = quote["status"], quote["price"]
    if status == "ok":
        return str(price)
    return str(status) if price is None else f"{status} ({price})"


def format_event(event: dict[str, Any]) -> str:
    """A log event on one line: time, process, event, then its keys."""
    skip = {"event", "timestamp", "level", "process", "exception"}
    keys = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    clock = str(event.get("timestamp", ""))[11:23]
    return f"{clock} {event.get('process', ''):8} {event['event']:22} {keys}"
