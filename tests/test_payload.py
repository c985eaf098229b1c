"""What crosses the process boundary to a background worker, and what is refused."""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
import sys
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from patchboard import NotSerializable
from patchboard.background.payload import (
    TAG,
    InstanceMissing,
    Job,
    PayloadError,
    decode,
    decode_kwargs,
    encode,
    encode_kwargs,
)
from tests.testapp.models import Order

LISTENER = "shop.receivers.send_receipt"


class Colour(enum.Enum):
    RED = "red"


class Size(enum.StrEnum):
    SMALL = "s"


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
        Decimal,
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


@pytest.mark.django_db
def test_deleted_instance_is_reported_or_none() -> None:
    order = Order.objects.create(reference="A-2")
    encoded = encode_kwargs({"order": order}, listener=LISTENER)
    order.delete()

    with pytest.raises(InstanceMissing) as caught:
        decode_kwargs(encoded, missing="report")
    assert caught.value.argument == "kwargs['order']"
    assert caught.value.model == "testapp.Order"

    assert decode_kwargs(encoded, missing="none") == {"order": None}


@pytest.mark.parametrize(
    ("kwargs", "argument", "value_type"),
    [
        ({"cart": object()}, "kwargs['cart']", "object"),
        ({"cart": [{"sku": b"raw"}]}, "kwargs['cart'][0]['sku']", "bytes"),
        ({"cart": {"lines": (1, lambda: 2)}}, "kwargs['cart']['lines'][1]", "function"),
        ({"size": Size.SMALL}, "kwargs['size']", "tests.test_payload.Size"),
        ({"colour": Colour.RED}, "kwargs['colour']", "tests.test_payload.Colour"),
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
    assert caught.value.argument == "sender"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({TAG: "pickle", "v": "gASV"}, "unknown tag 'pickle'"),
        ({TAG: "instance", "model": "nope.Missing", "pk": 1}, "no installed model 'nope.Missing'"),
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


def test_class_from_a_module_not_loaded_is_refused_without_importing_it() -> None:
    data = {TAG: "class", "module": "antigravity", "qualname": "Anything"}
    assert "antigravity" not in sys.modules
    with pytest.raises(PayloadError, match="not loaded"):
        decode(data, argument="sender", missing="report")
    assert "antigravity" not in sys.modules


def test_class_reference_must_name_a_class() -> None:
    data = {TAG: "class", "module": "os", "qualname": "system"}
    with pytest.raises(PayloadError, match=r"no class os\.system"):
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


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "text",
        {"v": 2},
        {"v": 1, "listener": 1, "signal": "s", "sender": None, "kwargs": {}, "attempt": 1},
        {"v": 1, "listener": "l", "signal": "s", "sender": None, "kwargs": {}, "attempt": 0},
        {"v": 1, "listener": "l", "signal": "s", "kwargs": {}, "attempt": 1},
        {
            "v": 1,
            "listener": "l",
            "signal": "s",
            "sender": None,
            "kwargs": {},
            "attempt": 1,
            "first_enqueued_at": "soon",
        },
    ],
)
def test_malformed_job_is_a_payload_error(payload: object) -> None:
    with pytest.raises(PayloadError):
        Job.from_json(payload)
