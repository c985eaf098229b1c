"""
The worker's entry (``patchboard._background._tasks.run``) as a property: fed
any JSON at all, it returns one of its documented statuses and never raises;
anything that is not a valid payload of a connected background listener is
refused, with exactly one ``background_refused`` event, and no listener runs.

Three sources of input: random JSON (None, booleans, ints, floats, strings,
lists, objects, with patchboard's own key names mixed in); a valid envelope
whose fields are randomly swapped for random JSON; and real payloads, encoded
from real values, with one tag tampered (a value of the wrong type, a
spelling the sender never writes, a primary key of the wrong type, a database
or class this process lacks, nesting past the bound, a huge int).

And the sender's side: kwargs holding a value that cannot cross, however
deeply nested, are refused at send time, naming the path to it.

The worker's entry and the encoder are internals, tested here on purpose:
a forged payload can only reach the worker, never the public API.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from patchboard import NotSerializable, Signal, receiver
from patchboard._background._payload import MAX_DEPTH, RESERVED, TAG, Job, encode, encode_kwargs
from patchboard._background._tasks import run
from tests.testapp.models import Order

pytestmark = pytest.mark.stress  # part of `make stress` too

shop = Signal(name="tests.payload_property.shop")
LISTENER = "tests.background.test_payload_property.take"
SIGNAL = "tests.payload_property.shop"
STATUSES = {"ok", "error", "timeout", "rescheduled", "gave_up", "instance_missing", "refused"}

calls: list[tuple[Any, dict[str, Any]]] = []


class Cart:
    """A sender class a background listener is connected for: it may cross."""


def take(signal: Any, sender: Any, **kwargs: Any) -> None:
    assert signal is shop
    calls.append((sender, kwargs))


def for_carts(sender: Any, **kwargs: Any) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def connected() -> Iterator[None]:
    receiver(shop, mode="background", on_error="log")(take)
    receiver(shop, sender=Cart, mode="background", on_error="log")(for_carts)
    yield
    shop.disconnect(take)
    shop.disconnect(for_carts, sender=Cart)


def feed(payload: object) -> tuple[str, list[dict[str, Any]], list[tuple[Any, dict[str, Any]]]]:
    """Run ``payload`` in the worker: its status, its events, the listener's calls."""
    calls.clear()
    with capture_logs() as events:
        status = run(payload, SimpleNamespace(id="task-1"))
    assert status in STATUSES
    return status, events, list(calls)


def assert_refused(payload: object) -> None:
    """Refused, logged once as such, and nothing else happened (``background_started``
    may come first: the envelope is read before the arguments)."""
    status, events, ran = feed(payload)
    assert status == "refused"
    assert [e["event"] for e in events if e["event"] != "background_started"] == [
        "background_refused"
    ]
    assert ran == []


def contains_tag(data: object) -> bool:
    if type(data) is list:
        return any(contains_tag(item) for item in data)
    if type(data) is dict:
        return TAG in data or any(contains_tag(item) for item in data.values())
    return False


NAMES = [TAG, "v", "listener", "signal", "sender", "kwargs", "attempt", "first_enqueued_at"]
NAMES += ["model", "pk", "db", "module", "qualname", "tuple", "set", "dict", "instance", "class"]
keys = st.sampled_from(NAMES) | st.text(max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**70, -(2**64)])
    | st.integers(4301, 5000).map(lambda digits: 10**digits)  # repr() refuses these
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(NAMES)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)
plain_keys = keys.filter(lambda key: key != TAG)
plain_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(plain_keys, inner, max_size=4),
    max_leaves=16,
)
NOW = dt.datetime(2031, 1, 1, tzinfo=dt.UTC).isoformat()
VALID: dict[str, Any] = {
    "v": 1,
    "listener": LISTENER,
    "signal": SIGNAL,
    "sender": None,
    "kwargs": {},
    "attempt": 1,
    "first_enqueued_at": NOW,
}

HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@HYPOTHESIS
@given(payload=json_values)
def test_any_json_is_refused(payload: Any) -> None:
    assert_refused(payload)


def valid_field(name: str, value: Any) -> bool | None:
    """Whether a worker must accept ``value`` as field ``name``; None: it may do either."""
    if name == "v":
        return type(value) is int and value == 1
    if name == "listener":  # for_carts is connected for Cart only: not for this sender
        return value == LISTENER
    if name == "signal":  # Connected to one signal only: any key names it.
        return type(value) is str
    if name == "attempt":
        return type(value) is int and value >= 1
    if name == "first_enqueued_at":
        if type(value) is not str:
            return False
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    if name == "kwargs" and (type(value) is not dict or RESERVED & value.keys()):
        return False
    return None if contains_tag(value) else True


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "v": st.sampled_from([1, True, 1.0, 2, -1]),
    "listener": st.sampled_from([LISTENER, f"{__name__}.for_carts", "os.system"]),
    "signal": st.text(max_size=12),
    "sender": plain_json,
    "kwargs": st.dictionaries(plain_keys, plain_json, max_size=4),
    "attempt": st.integers(),
    "first_enqueued_at": st.datetimes().map(dt.datetime.isoformat) | st.text(max_size=12),
}
"""Near misses and valid values for each field; any JSON too (``json_values``)."""


@pytest.mark.parametrize("field", sorted(VALID))
def test_envelope_without_a_field_is_refused(field: str) -> None:
    assert_refused({name: value for name, value in VALID.items() if name != field})


@HYPOTHESIS
@given(data=st.data())
def test_envelope_with_random_fields(data: st.DataObject) -> None:
    names = data.draw(st.sets(st.sampled_from(sorted(VALID)), max_size=2), label="swapped")
    swapped = {name: data.draw(FIELDS[name] | json_values, label=name) for name in sorted(names)}
    payload = {**VALID, **swapped}
    verdicts = [valid_field(name, value) for name, value in swapped.items()]
    if False in verdicts:
        event("invalid")
        assert_refused(payload)
        return
    status, events, ran = feed(payload)
    event(f"{'tagged' if None in verdicts else 'plain'}: {status}")
    if None in verdicts:  # tagged values: either refused, or run once
        assert (status, len(ran)) in {("refused", 0), ("ok", 1)}
        return
    # Plain JSON crosses as it is.
    assert (status, ran) == ("ok", [(payload["sender"], payload["kwargs"])])
    assert [e["event"] for e in events] == ["background_started", "background_finished"]


# -- real payloads, tampered -----------------------------------------------------------------


def real_kwargs(order: Order) -> dict[str, Any]:
    return {
        "when": dt.datetime(2031, 5, 4, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "day": dt.date(2031, 5, 4),
        "at": dt.time(8, 15),
        "amount": Decimal("19.90"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "ratio": math.inf,
        "lines": [(1, "a"), {2, 3}, frozenset({"x"})],
        "by_id": {1: "one", (2, 3): "pair"},
        "order": order,
        "model": Order,
        "cart": Cart,
    }


def tagged_nodes(data: Any) -> list[dict[str, Any]]:
    """Every tagged object in encoded ``data``, outermost first."""
    found: list[dict[str, Any]] = []
    if type(data) is list:
        for item in data:
            found += tagged_nodes(item)
    elif type(data) is dict:
        if TAG in data:
            found.append(data)
        for item in data.values():
            found += tagged_nodes(item)
    return found


def deep(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


TAGS = ["float", "datetime", "date", "time", "decimal", "uuid", "tuple", "set", "frozenset"]
TAGS += ["dict", "instance", "model", "class"]
WRONG_FLOATS = ["NaN", "Infinity", "-Infinity", "1e999", "-nan", "+inf", "1.5", "nan "]
WRONG_KEYS = ["abc", True, 1.5, "1", 2**70, None, [1], {"pk": 1}]


def tampering(node: dict[str, Any]) -> st.SearchStrategy[Callable[[dict[str, Any]], None]]:
    """Ways to make ``node`` (a tagged object) invalid, each applied in place."""

    def setting(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return values.map(lambda value: lambda n: n.__setitem__(key, value))

    tag = node[TAG]
    nested = {"instance": "pk", "model": "model", "class": "module"}.get(tag, "v")
    ways = [
        setting(TAG, (st.text(max_size=8) | json_values).filter(lambda t: t not in TAGS)),
        st.just(lambda n: n.__setitem__("extra", 1)),
        st.sampled_from(sorted(set(node) - {TAG})).map(lambda key: lambda n: n.pop(key)),
        setting(nested, st.just(deep("x", MAX_DEPTH + 1))),
    ]
    if tag == "float":
        ways.append(setting("v", st.sampled_from(WRONG_FLOATS)))
    if tag in {"float", "datetime", "date", "time", "decimal", "uuid"}:
        ways.append(setting("v", json_values.filter(lambda v: type(v) is not str)))
    if tag in {"tuple", "set", "frozenset", "dict"}:
        ways.append(setting("v", json_values.filter(lambda v: type(v) is not list)))
    if tag == "instance":
        ways.append(setting("pk", st.sampled_from(WRONG_KEYS)))
        ways.append(setting("db", st.text(max_size=8).filter(lambda d: d != "default")))
    if tag in {"instance", "model"}:
        ways.append(setting("model", st.sampled_from(["testapp.Nope", "nope", "a.b.c", ""])))
    if tag == "class":
        ways.append(setting("qualname", st.text(max_size=12).filter(lambda q: q != "Cart")))
        ways.append(setting("module", st.sampled_from(["concurrent.futures", "os", "decimal"])))
    return st.one_of(ways)


@pytest.mark.django_db
@HYPOTHESIS
@given(data=st.data())
def test_real_payload_tampered_is_refused(data: st.DataObject) -> None:
    order, _ = Order.objects.get_or_create(reference="REAL")
    values = real_kwargs(order)
    job = Job(
        listener=LISTENER,
        signal=SIGNAL,
        sender=encode(Cart, listener=LISTENER, argument="sender"),
        kwargs=encode_kwargs(values, listener=LISTENER),
        first_enqueued_at=dt.datetime.now(dt.UTC),
    )
    payload = job.to_json()
    status, _, ran = feed(payload)
    assert (status, len(ran)) == ("ok", 1)  # untampered, it runs, with the real values
    assert ran[0][0] is Cart
    assert ran[0][1]["order"] == order

    nodes = tagged_nodes(payload)
    node = data.draw(st.sampled_from(nodes), label="node")
    tamper = data.draw(tampering(node), label="tampering")
    tamper(node)
    assert_refused(payload)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *[("v", value) for value in (10**5000, -(10**5000), True, 1.0, "1", 2, None)],
        *[("attempt", value) for value in (-(10**5000), True, 1.0, "1", 0, None)],
    ],
    ids=lambda value: "huge" if type(value) is int and abs(value) > 2**64 else repr(value),
)
def test_envelope_numbers_of_the_wrong_kind_are_refused(field: str, value: Any) -> None:
    assert_refused({**VALID, field: value})


@HYPOTHESIS
@given(name=st.sampled_from(sorted(RESERVED)), value=json_values)
def test_arguments_named_sender_or_signal_are_refused(name: str, value: Any) -> None:
    assert_refused({**VALID, "kwargs": {"n": 1, name: value}})


# -- the sender's side: what cannot cross is refused at send time ---------------------


class Colour(enum.Enum):
    RED = 1


UNENCODABLE = st.sampled_from(
    [b"bytes", bytearray(b"x"), Colour.RED, object(), complex(1, 2), range(3), Exception("x")]
)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.decimals()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@st.composite
def with_unencodable(draw: st.DrawFn) -> tuple[Any, str]:
    """A JSON-like value with one value that cannot cross, and the path to it."""
    leaf = draw(UNENCODABLE)
    depth = draw(st.integers(min_value=0, max_value=3))
    value, path = leaf, ""
    for _ in range(depth):
        if draw(st.booleans()):
            siblings = draw(st.lists(JSONISH, max_size=2))
            value, path = [*siblings, value], f"[{len(siblings)}]{path}"
        else:
            key = draw(st.text(alphabet="abcxyz", min_size=1, max_size=4))
            value, path = {key: value}, f"[{key!r}]{path}"
    return value, path


hostile = Signal(name="tests.payload_property.hostile")


def hostile_background(sender: Any, **kwargs: Any) -> None:
    pass


@HYPOTHESIS
@given(case=with_unencodable())
def test_kwargs_that_cannot_cross_are_refused_at_send_time_by_path(case: tuple[Any, str]) -> None:
    value, path = case
    hostile.connect(hostile_background, weak=False, mode="background")
    try:
        with (
            override_settings(PATCHBOARD={"BACKGROUND": {"BACKEND": "dummy"}}),
            pytest.raises(NotSerializable) as raised,
        ):
            hostile.send_sync(sender=None, cart=value)
    finally:
        hostile.disconnect(hostile_background)
    message = str(raised.value)
    assert f"kwargs['cart']{path}" in message, message
    assert "hostile_background" in message
