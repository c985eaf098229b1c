"""
The carriers: a stand-in for the shipping companies' rate APIs, as one small
ASGI application (no framework) that the example shop calls over HTTP.

    GET  /quote/<carrier>?cart=<id>  a JSON quote after the carrier's latency,
                                     or a 503 at its failure rate
    POST /control/<carrier>          change its behaviour at run time:
                                     {"latency_ms": 3000} or {"fail_rate": 1.0}
    POST /reset                      every carrier healthy again, counters at zero
    GET  /stats                      per carrier: requests, failures, latency_ms, fail_rate;
                                     and the most quotes it served at once (peak_in_flight)

Run it with ``python -m uvicorn examples.carriers.app:app --port 8001 --lifespan off``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


PRICES: dict[str, tuple[str, str]] = {
    # name: base price, price per item
    "ups": ("6.90", "0.80"),
    "fedex": ("7.40", "0.60"),
    "dhl": ("5.90", "0.90"),
    "usps": ("8.20", "0.30"),
    "dpd": ("6.10", "0.70"),
    "gls": ("7.80", "0.50"),
}
LATENCY_MS = {"ups": 40, "fedex": 60, "dhl": 50, "usps": 80, "dpd": 30, "gls": 70}
"""How long each carrier takes to quote when nobody has changed it."""


def list_price(carrier: str, cart: int) -> Decimal:
    """The same cart always costs the same (the cart id stands for its size)."""
    base, per_item = PRICES[carrier]
    return Decimal(base) + Decimal(per_item) * (cart % 10)


@dataclass(slots=True, kw_only=True)
class Carrier:
    """One carrier's current behaviour and what it has served."""

    latency_ms: float
    fail_rate: float = 0.0
    requests: int = 0
    failures: int = 0


@dataclass(slots=True)
class Board:
    """Every carrier, and how many quotes are being served at once (for the bound's check)."""

    carriers: dict[str, Carrier]
    in_flight: int = 0
    peak_in_flight: int = 0


board = Board({})


def reset() -> None:
    """Every carrier back to its default behaviour, with the counters at zero."""
    board.carriers = {name: Carrier(latency_ms=ms) for name, ms in LATENCY_MS.items()}
    board.peak_in_flight = board.in_flight


class BadRequest(Exception):
    """The request names an invalid value; the message says which."""


async def quote(carrier: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
    state = board.carriers[carrier]
    state.requests += 1
    try:
        cart = int(query["cart"][0])
    except (KeyError, ValueError):
        raise BadRequest(f"cart must be an integer, got {query.get('cart')!r}") from None
    board.in_flight += 1
    board.peak_in_flight = max(board.peak_in_flight, board.in_flight)
    try:
        await asyncio.sleep(state.latency_ms / 1000)
    finally:
        board.in_flight -= 1
    if random.random() < state.fail_rate:
        state.failures += 1
        return 503, {"error": f"{carrier} is unavailable"}
    price = list_price(carrier, cart)
    return 200, {"carrier": carrier, "cart": cart, "price": str(price), "currency": "EUR"}


def control(carrier: str, body: bytes) -> tuple[int, dict[str, Any]]:
    try:
        changes = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(changes, dict) or not changes.keys() <= {"latency_ms", "fail_rate"}:
        raise BadRequest(f"expected latency_ms and/or fail_rate, got {changes!r}")
    state = board.carriers[carrier]
    if "latency_ms" in changes:
        state.latency_ms = _number("latency_ms", changes["latency_ms"], 0, 60_000)
    if "fail_rate" in changes:
        state.fail_rate = _number("fail_rate", changes["fail_rate"], 0, 1)
    return 200, {carrier: asdict(state)}


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number between {low} and {high}, got {value!r}")
    return float(value)


def stats() -> dict[str, Any]:
    return {
        "carriers": {name: asdict(state) for name, state in board.carriers.items()},
        "in_flight": board.in_flight,
        "peak_in_flight": board.peak_in_flight,
    }


async def route(method: str, path: str, query: str, body: bytes) -> tuple[int, dict[str, Any]]:
    known = board.carriers
    match method, path.strip("/").split("/"):
        case "GET", ["quote", name] if name in known:
            return await quote(name, parse_qs(query))
        case "POST", ["control", name] if name in known:
            return control(name, body)
        case "POST", ["reset"]:
            reset()
            return 200, stats()
        case "GET", ["stats"]:
            return 200, stats()
    return 404, {"error": f"no route for {method} {path}", "carriers": sorted(known)}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry point (HTTP only: run uvicorn with ``--lifespan off``)."""
    assert scope["type"] == "http", scope["type"]
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    try:
        status, payload = await route(
            scope["method"], scope["path"], scope["query_string"].decode(), body
        )
    except BadRequest as exc:
        status, payload = 400, {"error": str(exc)}
    content = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


reset()
