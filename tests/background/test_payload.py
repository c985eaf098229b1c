"""
What crosses the process boundary to a background worker, and what is refused.

Internals on purpose: the payload's encoder and decoder (``_payload``): what
a worker receives is their contract, not the public API's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import os
import re
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from patchboard import NotSerializable, Signal, receiver
from patchboard._background._payload import (
    MAX_DEPTH,
    MAX_TRACE_ENTRIES,
    MAX_TRACE_VALUE,
    TAG,
    InstanceMissing,
    Job,
    PayloadError,
    decode,
    decode_kwargs,
    encode,
    encode_kwargs,
    trace_context,
)
from tests.testapp.models import Coupon, Order

LISTENER = "shop.receivers.send_receipt"
ROOT = Path(__file__).resolve().parents[2]
checkout = Signal(name="tests.payload.checkout")


class Colour(enum.Enum):
    RED = "red"


class Size(enum.StrEnum):
    SMALL = "s"


class Cart:
    """A sender class: crosses only while a background listener is connected for it."""


def on_checkout(sender: Any, **kwargs: Any) -> None:
    pass


def cross(value: Any) -> Any:
    """Encode, go through strict JSON text as a task backend stores it, decode."""
    encoded = encode(value, listener=LISTENER, argument="kwargs['value']")
    text = json.dumps(encoded, allow_nan=False)
    return decode(json.loads(text), argument="kwargs['value']", missing="report")


@pytest.mark.parametrize(
    "value",
    [
        "text",
        "",
        0,
        -7,
        2**70,
        1.5,
        True,
        False,
        None,
        [1, "two", None],
        {"a": 1, "nested": {"b": [True]}},
        {1: "int keys", 2: "stay ints"},
        {(1, 2): "tuple key"},
        {TAG: "a user dict that uses patchboard's tag key"},
        (1, "two", (3,)),
        {1, 2, 3},
        frozenset({"created", "paid_at"}),
        dt.datetime(2031, 5, 4, 12, 30, 15, 123456, tzinfo=dt.UTC),
        dt.datetime(2031, 5, 4, 12, 30, 15, 123456),
        dt.date(2031, 5, 4),
        dt.time(23, 59, 59, 999999),
        dt.time(8, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        Decimal("1.10"),
        Decimal("-0.000001"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        [{"when": dt.date(2031, 1, 1), "amounts": (Decimal("2.50"), Decimal("0"))}],
        Order,
    ],
    ids=repr,
)
def test_value_round_trips_with_its_type(value: Any) -> None:
    back = cross(value)
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_infinities_round_trip(value: float) -> None:
    assert cross(value) == value


def test_nan_round_trips() -> None:
    assert math.isnan(cross(math.nan))


def test_decimal_keeps_its_exponent() -> None:
    assert str(cross(Decimal("1.10"))) == "1.10"


def test_aware_datetime_keeps_its_instant_and_offset() -> None:
    paris = dt.datetime(2031, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    back = cross(paris)
    assert back == paris
    assert back.utcoffset() == dt.timedelta(hours=2)


def test_nested_collections_keep_their_types() -> None:
    value = {"items": [(1, {2, 3}), frozenset({(4, 5)})], 6: {"deep": (Decimal("7"),)}}
    back = cross(value)
    assert back == value
    assert type(back["items"][0]) is tuple
    assert type(back["items"][0][1]) is set
    assert type(back[6]["deep"][0]) is Decimal


def test_post_save_arguments_round_trip() -> None:
    kwargs = {
        "created": False,
        "update_fields": frozenset({"paid_at"}),
        "raw": False,
        "using": "default",
    }
    encoded = encode_kwargs(kwargs, listener=LISTENER)
    assert decode_kwargs(json.loads(json.dumps(encoded)), missing="report") == kwargs
    kwargs["update_fields"] = None
    encoded = encode_kwargs(kwargs, listener=LISTENER)
    assert decode_kwargs(encoded, missing="report")["update_fields"] is None


@pytest.mark.django_db
def test_model_instance_travels_as_a_reference_and_is_fetched_again() -> None:
    order = Order.objects.create(reference="A-1")
    encoded = encode(order, listener=LISTENER, argument="kwargs['order']")
    assert encoded == {TAG: "instance", "model": "testapp.Order", "pk": order.pk, "db": "default"}
    Order.objects.filter(pk=order.pk).update(reference="A-1 (changed)")

    back = decode(encoded, argument="kwargs['order']", missing="report")

    assert isinstance(back, Order)
    assert back is not order
    assert back.pk == order.pk
    assert back.reference == "A-1 (changed)"


@pytest.mark.django_db(databases=["default", "other"])
def test_model_instance_is_fetched_again_from_its_own_database() -> None:
    here = Order.objects.using("other").create(reference="on other")
    Order.objects.using("default").create(pk=here.pk, reference="on default, same pk")
    encoded = encode(here, listener=LISTENER, argument="kwargs['order']")
    assert encoded["db"] == "other"

    back = decode(json.loads(json.dumps(encoded)), argument="kwargs['order']", missing="report")

    assert (back.reference, back._state.db) == ("on other", "other")


@pytest.mark.django_db
def test_deleted_instance_is_reported_or_none() -> None:
    order = Order.objects.create(reference="A-2")
    encoded = encode_kwargs({"order": order}, listener=LISTENER)
    order.delete()

    with pytest.raises(InstanceMissing) as caught:
        decode_kwargs(encoded, missing="report")
    assert caught.value.argument == "kwargs['order']"
    assert caught.value.model == "testapp.Order"
    assert str(caught.value) == "kwargs['order']: the testapp.Order instance no longer exists"

    assert decode_kwargs(encoded, missing="none") == {"order": None}
    assert decode(encoded["order"], argument="kwargs['order']", missing="none") is None


@pytest.mark.parametrize(
    ("kwargs", "argument", "value_type"),
    [
        ({"cart": object()}, "kwargs['cart']", "object"),
        ({"cart": [{"sku": b"raw"}]}, "kwargs['cart'][0]['sku']", "bytes"),
        ({"cart": {"lines": (1, lambda: 2)}}, "kwargs['cart']['lines'][1]", "function"),
        ({"size": Size.SMALL}, "kwargs['size']", "tests.background.test_payload.Size"),
        ({"colour": Colour.RED}, "kwargs['colour']", "tests.background.test_payload.Colour"),
        ({"delay": dt.timedelta(seconds=1)}, "kwargs['delay']", "datetime.timedelta"),
        ({"keys": {object(): 1}}, "kwargs['keys'].keys()", "object"),
    ],
    ids=["object", "nested-bytes", "lambda", "str-enum", "enum", "timedelta", "key"],
)
def test_unencodable_value_names_listener_and_argument(
    kwargs: dict[str, Any], argument: str, value_type: str
) -> None:
    with pytest.raises(NotSerializable) as caught:
        encode_kwargs(kwargs, listener=LISTENER)
    error = caught.value
    assert isinstance(error, TypeError)
    assert (error.listener, error.argument, error.value_type) == (LISTENER, argument, value_type)
    assert LISTENER in str(error) and argument in str(error)


def test_unsaved_instance_is_refused() -> None:
    with pytest.raises(NotSerializable) as caught:
        encode_kwargs({"order": Order(reference="new")}, listener=LISTENER)
    assert caught.value.argument == "kwargs['order']"
    assert "unsaved" in caught.value.value_type


def test_local_class_is_refused() -> None:
    class Local:
        pass

    with pytest.raises(NotSerializable) as caught:
        encode(Local, listener=LISTENER, argument="sender")
    assert (caught.value.listener, caught.value.argument) == (LISTENER, "sender")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({TAG: "pickle", "v": "gASV"}, "unknown tag 'pickle'"),
        (
            {TAG: "instance", "model": "nope.Missing", "pk": 1, "db": "default"},
            "no installed model 'nope.Missing'",
        ),
        ({TAG: "datetime", "v": "yesterday"}, "malformed 'datetime' value"),
        ({TAG: "decimal", "v": "one"}, "malformed 'decimal' value"),
        ({TAG: "float", "v": "1.5"}, "malformed 'float' value"),
        ({TAG: "tuple", "v": "abc"}, "malformed 'tuple' value"),
    ],
)
def test_undecodable_data_is_a_payload_error(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(PayloadError, match=problem) as caught:
        decode(data, argument="kwargs['x']", missing="report")
    assert caught.value.argument == "kwargs['x']"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({TAG: "model", "model": 5}, "malformed model label 5"),
        ({TAG: "decimal", "v": 5}, "malformed 'decimal' value: 5"),
        ({TAG: "float", "v": "1.5"}, "malformed 'float' value (ValueError)"),
        ({TAG: "dict", "v": [[1]]}, "malformed 'dict' value: expected [key, value] pairs"),
        ({TAG: "dict", "v": [[1, 2], [1, 3]]}, "malformed 'dict' value: duplicate keys"),
        ({TAG: "set", "v": [1, 1]}, "malformed 'set' value: duplicate items"),
        (
            {TAG: "uuid", "v": "x", "extra": 1},
            "malformed 'uuid' value: keys [\"'__patchboard__'\", \"'extra'\", \"'v'\"]",
        ),
    ],
)
def test_undecodable_data_is_a_payload_error_saying_exactly_what_is_wrong(
    data: dict[str, Any], problem: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        decode(data, argument="kwargs['x']", missing="report")
    assert (caught.value.argument, caught.value.problem) == ("kwargs['x']", problem)
    assert str(caught.value) == f"kwargs['x']: {problem}"


@pytest.mark.parametrize("name", ["sender", "signal"])
def test_a_reserved_name_in_kwargs_is_a_payload_error_saying_why(name: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode_kwargs({name: 1}, missing="report")
    assert str(caught.value) == (
        f"kwargs['{name}']: not an argument a sender writes (the worker passes sender and signal)"
    )


def test_class_from_a_module_not_loaded_is_refused_without_importing_it() -> None:
    data = {TAG: "class", "module": "antigravity", "qualname": "Anything"}
    assert "antigravity" not in sys.modules
    with pytest.raises(PayloadError, match=r"no class 'antigravity\.Anything'"):
        decode(data, argument="sender", missing="report")
    assert "antigravity" not in sys.modules


def test_class_reference_must_name_a_class() -> None:
    data = {TAG: "class", "module": "os", "qualname": "system"}
    with pytest.raises(PayloadError, match=r"no class 'os\.system'"):
        decode(data, argument="sender", missing="report")


def test_job_round_trips_through_json() -> None:
    job = Job(
        listener=LISTENER,
        signal="shop.signals.order_paid",
        sender=encode(Order, listener=LISTENER, argument="sender"),
        kwargs=encode_kwargs({"amount": Decimal("9.99")}, listener=LISTENER),
        attempt=3,
        first_enqueued_at=dt.datetime(2031, 1, 1, tzinfo=dt.UTC),
    )
    assert Job.from_json(json.loads(json.dumps(job.to_json()))) == job


BARE = Job(
    listener=LISTENER,
    signal="s",
    sender=None,
    kwargs={},
    first_enqueued_at=dt.datetime(2031, 1, 1, tzinfo=dt.UTC),
)
"""A job without arguments."""


def test_job_with_a_trace_round_trips_and_one_without_writes_none() -> None:
    assert "trace" not in BARE.to_json()  # untraced: the payload of before tracing
    traced = dataclasses.replace(BARE, trace={"traceparent": TRACEPARENT, "baggage": "a=1"})
    assert Job.from_json(json.loads(json.dumps(traced.to_json()))) == traced


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_trace_context_keeps_what_fits_and_drops_the_rest() -> None:
    """The sender's side: a trace is never worth a call, so what the worker would refuse goes."""
    carrier = {
        "traceparent": TRACEPARENT,
        "baggage": "x" * (MAX_TRACE_VALUE + 1),
        "bad name": "1",
        "X-Amzn-Trace-Id": "Root=1-5759e988-bd862e3fe1be46a994272793",
        "newline": "a\nb",
        "latin": "caf\u00e9",
        **{f"h{i}": str(i) for i in range(MAX_TRACE_ENTRIES)},
    }
    kept = trace_context(carrier)
    assert kept is not None and len(kept) == MAX_TRACE_ENTRIES
    assert list(kept)[:3] == ["traceparent", "X-Amzn-Trace-Id", "h0"]
    assert trace_context({"baggage": "x" * (MAX_TRACE_VALUE + 1)}) is None
    assert trace_context({}) is None


_JOB = {"v": 1, "listener": "l", "signal": "s", "sender": None, "kwargs": {}, "attempt": 1}
_TRACE = (
    f"trace must be an object of at most {MAX_TRACE_ENTRIES} header names (letters, digits, "
    f"'-' and '_', up to 64) to printable ASCII strings of at most {MAX_TRACE_VALUE} characters"
)
FORGED_TRACES = [  # what a worker refuses as a payload's trace
    None,
    TRACEPARENT,
    {},
    {"traceparent": 1},
    {"traceparent": [TRACEPARENT]},
    {"baggage": "x" * (MAX_TRACE_VALUE + 1)},
    {"baggage": "a=1\r\nX-Injected: 1"},
    {"trace parent": TRACEPARENT},
    {"n" * 65: "1"},
    {f"h{i}": "v" for i in range(MAX_TRACE_ENTRIES + 1)},
]


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (None, "expected an object, got None"),
        ("text", "expected an object, got 'text'"),
        ([_JOB], "expected an object, got a list"),
        ({"v": 2}, "unknown version 2"),
        ({"v": 2**63}, "unknown version 9223372036854775808"),  # 64 bits: still shown
        ({"v": 2**64}, "unknown version an int of 65 bits"),
        ({**_JOB, "listener": 1}, "listener and signal must be strings"),
        ({**_JOB, "attempt": 0}, "attempt must be an int >= 1, got 0"),
        ({key: v for key, v in _JOB.items() if key != "sender"}, "sender and kwargs are required"),
        ({**_JOB, "first_enqueued_at": 5}, "bad first_enqueued_at 5"),
        ({**_JOB, "first_enqueued_at": "soon"}, "bad first_enqueued_at 'soon'"),
        *[
            ({**_JOB, "first_enqueued_at": "2031-01-01", "trace": bad}, _TRACE)
            for bad in FORGED_TRACES
        ],
    ],
)
def test_malformed_job_is_a_payload_error_saying_what_is_wrong(
    payload: object, problem: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        Job.from_json(payload)
    assert (caught.value.argument, caught.value.problem) == ("payload", problem)
    assert str(caught.value) == f"payload: {problem}"


# -- what a worker refuses ---------------------------------------------------------------


def nested(depth: int, kind: str) -> Any:
    """JSON holding ``depth`` containers of one ``kind``, one inside the other."""
    value: Any = 0
    for _ in range(depth):
        value = {
            "list": lambda inner: [inner],
            "object": lambda inner: {"k": inner},
            "tuple": lambda inner: {TAG: "tuple", "v": [inner]},
            "dict": lambda inner: {TAG: "dict", "v": [[1, inner]]},
        }[kind](value)
    return value


CONTAINERS = ["list", "object", "tuple", "dict"]


@pytest.mark.parametrize("kind", CONTAINERS)
def test_nesting_beyond_the_recursion_limit_is_a_payload_error(kind: str) -> None:
    data = nested(sys.getrecursionlimit() + 50, kind)
    with pytest.raises(PayloadError, match=f"nested more than {MAX_DEPTH} containers deep"):
        decode(data, argument="kwargs['x']", missing="report")


@pytest.mark.parametrize("kind", CONTAINERS)
def test_nesting_is_bounded_by_max_depth(kind: str) -> None:
    deepest = nested(MAX_DEPTH, kind)
    assert encode(decode(deepest, argument="x", missing="report"), listener=LISTENER, argument="x")
    with pytest.raises(PayloadError):
        decode(nested(MAX_DEPTH + 1, kind), argument="x", missing="report")


def test_nesting_deeper_than_max_depth_is_refused_at_send() -> None:
    deepest: Any = 0
    for _ in range(MAX_DEPTH):
        deepest = [deepest]
    assert cross(deepest) == deepest
    looped: list[Any] = []
    looped.append(looped)
    for value in ([deepest], looped):
        with pytest.raises(NotSerializable, match=f"nested more than {MAX_DEPTH}"):
            encode_kwargs({"cart": value}, listener=LISTENER)


@pytest.mark.parametrize("version", [True, 1.0, "1", 10**5000], ids=["true", "1.0", "'1'", "huge"])
def test_version_must_be_the_int_1(version: object) -> None:
    with pytest.raises(PayloadError, match="unknown version"):
        Job.from_json({**BARE.to_json(), "v": version})


def test_sender_and_signal_are_never_sent_nor_read_as_arguments() -> None:
    assert encode_kwargs({"signal": checkout, "n": 1}, listener=LISTENER) == {"n": 1}
    for name in ("sender", "signal"):
        with pytest.raises(PayloadError) as caught:
            decode_kwargs({name: None}, missing="report")
        assert caught.value.argument == f"kwargs[{name!r}]"


@pytest.mark.parametrize("db", ["elsewhere", 5, ["default"]])
def test_instance_on_a_database_this_process_lacks_is_a_payload_error(db: object) -> None:
    data = {TAG: "instance", "model": "testapp.Order", "pk": 1, "db": db}
    with pytest.raises(PayloadError, match="no database"):
        decode(data, argument="kwargs['order']", missing="report")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("model", "pk"),
    [
        ("testapp.Order", "abc"),
        ("testapp.Order", "1"),
        ("testapp.Order", True),
        ("testapp.Order", 1.0),
        ("testapp.Order", 2**70),
        ("testapp.Order", None),
        ("testapp.Order", {TAG: "uuid", "v": "12345678-1234-5678-1234-567812345678"}),
        ("testapp.Coupon", "abc"),
        ("testapp.Coupon", 1),
    ],
    ids=repr,
)
def test_primary_key_of_another_type_is_a_payload_error(model: str, pk: object) -> None:
    Order.objects.create(pk=1, reference="A-1")  # What "1", True and 1.0 would fetch.
    Coupon.objects.create(code=uuid.UUID("12345678-1234-5678-1234-567812345678"))
    data = {TAG: "instance", "model": model, "pk": pk, "db": "default"}
    with pytest.raises(PayloadError, match="is not a primary key of") as caught:
        decode(data, argument="kwargs['order']", missing="report")
    assert caught.value.argument == "kwargs['order'].pk"


@pytest.mark.django_db
def test_instance_with_a_uuid_primary_key_crosses() -> None:
    coupon = Coupon.objects.create(code=uuid.uuid4())
    assert cross(coupon) == coupon


@pytest.mark.parametrize(
    ("tag", "text"),
    [
        ("float", "NaN"),
        ("float", "Infinity"),
        ("float", "1e999"),
        ("float", "-nan"),
        ("decimal", " 1.5"),
        ("decimal", "1e2"),
        ("datetime", "2031-05-04"),
        ("date", "20310504"),
        ("uuid", "{12345678-1234-5678-1234-567812345678}"),
    ],
)
def test_scalar_not_in_the_form_the_sender_writes_is_a_payload_error(tag: str, text: str) -> None:
    with pytest.raises(PayloadError) as caught:
        decode({TAG: tag, "v": text}, argument="x", missing="report")
    assert caught.value.argument == "x"
    # What the parser read was not what the sender writes, or it could not read it at all.
    assert caught.value.problem in (
        f"malformed {tag!r} value: {text!r}",
        f"malformed {tag!r} value (ValueError)",
    )


@pytest.mark.parametrize(
    "data",
    [
        {TAG: None, "v": 1},
        {TAG: ["tuple"], "v": []},
        {TAG: "tuple", "v": [], "extra": 1},
        {TAG: "tuple", "v": {"0": 1}},
        {TAG: "set", "v": [1, 1]},
        {TAG: "set", "v": [[1]]},
        {TAG: "dict", "v": ["ab"]},
        {TAG: "dict", "v": [[1, 2], [1, 3]]},
        {TAG: "decimal", "v": 5},
        {TAG: "model", "model": ["testapp.Order"]},
        {TAG: "class", "module": 1, "qualname": "Cart"},
    ],
    ids=repr,
)
def test_tag_with_the_wrong_shape_is_a_payload_error(data: dict[str, Any]) -> None:
    with pytest.raises(PayloadError):
        decode(data, argument="x", missing="report")


def test_huge_values_are_not_repeated_in_the_error() -> None:
    with pytest.raises(PayloadError) as caught:
        decode_kwargs({"x" * 10_000: {TAG: "uuid", "v": "y" * 10_000}}, missing="report")
    assert len(str(caught.value)) < 300


# -- classes ---------------------------------------------------------------------------


@pytest.fixture
def cart_listener() -> Iterator[None]:
    """A background listener connected for the sender class Cart."""
    receiver(checkout, sender=Cart, mode="background")(on_checkout)
    yield
    checkout.disconnect(on_checkout, sender=Cart)


def test_class_a_background_listener_is_connected_for_crosses(cart_listener: None) -> None:
    assert cross(Cart) is Cart


def test_class_stops_crossing_when_its_listener_disconnects(cart_listener: None) -> None:
    encoded = encode(Cart, listener=LISTENER, argument="sender")
    checkout.disconnect(on_checkout, sender=Cart)
    with pytest.raises(PayloadError, match=rf"no class '{re.escape(__name__)}\.Cart'"):
        decode(encoded, argument="sender", missing="report")


def test_a_sender_instance_names_no_class() -> None:
    cart = Cart()
    receiver(checkout, sender=cart, mode="background")(on_checkout)
    try:
        with pytest.raises(NotSerializable):
            encode(Cart, listener=LISTENER, argument="sender")
        with pytest.raises(PayloadError):
            decode(
                {TAG: "class", "module": __name__, "qualname": "Cart"},
                argument="s",
                missing="report",
            )
    finally:
        checkout.disconnect(on_checkout, sender=cart)


@pytest.mark.parametrize("cls", [Decimal, Cart, Colour], ids=repr)
def test_any_other_class_is_refused_at_send(cls: type) -> None:
    with pytest.raises(NotSerializable) as caught:
        encode_kwargs({"kind": cls}, listener=LISTENER)
    assert caught.value.argument == "kwargs['kind']"
    assert f"class {cls.__module__}.{cls.__qualname__}" in caught.value.value_type


@pytest.fixture
def lazy_module() -> Iterator[list[str]]:
    """A loaded module whose ``__getattr__`` makes classes up; the names it was asked for."""
    asked: list[str] = []
    module = types.ModuleType("tests.lazy_module")

    def __getattr__(name: str) -> type:
        asked.append(name)
        return type(name, (), {})

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[module.__name__] = module
    yield asked
    del sys.modules[module.__name__]


def test_class_reference_never_calls_a_module_getattr(lazy_module: list[str]) -> None:
    data = {TAG: "class", "module": "tests.lazy_module", "qualname": "Anything"}
    with pytest.raises(PayloadError):
        decode(data, argument="sender", missing="report")
    assert lazy_module == []


def test_class_reference_never_makes_the_worker_import_a_module() -> None:
    """The issue's case: concurrent.futures imports .process to answer ProcessPoolExecutor."""
    program = """
import sys
import django

django.setup()
import concurrent.futures

from patchboard._background._payload import TAG, PayloadError, decode

assert "concurrent.futures.process" not in sys.modules
data = {TAG: "class", "module": "concurrent.futures", "qualname": "ProcessPoolExecutor"}
try:
    decode(data, argument="sender", missing="report")
except PayloadError:
    print("refused")
else:
    print("resolved")
print("imported" if "concurrent.futures.process" in sys.modules else "not-imported")
"""
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "not-imported"]
