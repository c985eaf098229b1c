"""
What a background listener's arguments look like on their way to a worker.

A task backend stores JSON; a signal's arguments are Python objects. Each
argument is encoded at send time into JSON that says what it was, and decoded
in the worker into an object of the same type. No pickle is ever written or
read: a payload can name a type, never code to run.

What crosses, and how:

* ``str``, ``int``, ``float``, ``bool`` and ``None``: as they are (the exact
  types only: a ``str`` subclass such as a ``TextChoices`` member is refused,
  it would come back as a plain ``str``). NaN and the infinities are tagged.
* ``list``, and ``dict`` with ``str`` keys: recursively, as JSON. A dict with
  other keys (or with patchboard's tag key) is tagged as a list of pairs.
* ``tuple``, ``set``, ``frozenset``: tagged, recursively.
* ``datetime``, ``date``, ``time`` (ISO 8601; an aware value keeps its UTC
  offset, a named zone becomes a fixed offset), ``Decimal`` and ``UUID``: tagged.
* A model instance: a reference, its model's ``app_label.ModelName``, its
  primary key and its database, re-fetched from that database in the worker
  (through the model's base manager, so a filtering default manager does not
  hide it). An unsaved instance has no reference and is refused.
* A model class: its ``app_label.ModelName``. Any other class: its module and
  qualified name, resolved in the worker among the modules it has already
  imported (a payload never makes a worker import anything).

Anything else raises :class:`~patchboard.NotSerializable` at send time,
naming the listener and the argument (``kwargs['cart'][0]``).

Raises in the worker: :class:`PayloadError` for a payload this process cannot
read (a tag it does not know, a model it does not have), and
:class:`InstanceMissing` for a model instance deleted since the send.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import sys
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from django.apps import apps

from patchboard._exceptions import NotSerializable

if TYPE_CHECKING:
    from django.db import models

TAG = "__patchboard__"
"""The key that marks a JSON object as an encoded Python value."""

Missing: TypeAlias = Literal["report", "none"]


class PayloadError(ValueError):
    """A payload that this process cannot decode; ``argument`` says where."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"{argument}: {problem}")
        self.argument = argument
        self.problem = problem


class InstanceMissing(LookupError):
    """A model instance named by a payload no longer exists."""

    def __init__(self, argument: str, model: str) -> None:
        super().__init__(f"{argument}: the {model} instance no longer exists")
        self.argument = argument
        self.model = model


VERSION = 1
"""The payload format's version; a worker refuses payloads of another."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """
    One background call: the only argument of its task, as JSON.

    ``listener`` is the listener's dotted path, ``signal`` the signal's key
    (see ``patchboard.background.signal_key``), ``sender`` and ``kwargs`` the
    encoded arguments, ``attempt`` counts from 1 (a reschedule is the next
    attempt) and ``first_enqueued_at`` is when the first attempt was enqueued.
    """

    listener: str
    signal: str
    sender: Any
    kwargs: dict[str, Any]
    attempt: int = 1
    first_enqueued_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "listener": self.listener,
            "signal": self.signal,
            "sender": self.sender,
            "kwargs": self.kwargs,
            "attempt": self.attempt,
            "first_enqueued_at": self.first_enqueued_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: object) -> Job:
        """
        Read a payload made by :meth:`to_json` (arguments still encoded).

        Raises:
            PayloadError: ``data`` is not such a payload.
        """
        if type(data) is not dict:
            raise PayloadError("payload", f"expected an object, got {type(data).__name__}")
        if data.get("v") != VERSION:
            raise PayloadError("payload", f"unknown version {data.get('v')!r}")
        listener, signal = data.get("listener"), data.get("signal")
        attempt, first = data.get("attempt"), data.get("first_enqueued_at")
        if type(listener) is not str or type(signal) is not str:
            raise PayloadError("payload", "listener and signal must be strings")
        if type(attempt) is not int or attempt < 1:
            raise PayloadError("payload", f"attempt must be an int >= 1, got {attempt!r}")
        if type(data.get("kwargs")) is not dict or "sender" not in data:
            raise PayloadError("payload", "sender and kwargs are required")
        try:
            first_enqueued_at = dt.datetime.fromisoformat(first)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise PayloadError("payload", f"bad first_enqueued_at {first!r}") from None
        if first_enqueued_at.tzinfo is None:
            first_enqueued_at = first_enqueued_at.replace(tzinfo=dt.UTC)
        return cls(
            listener=listener,
            signal=signal,
            sender=data["sender"],
            kwargs=data["kwargs"],
            attempt=attempt,
            first_enqueued_at=first_enqueued_at,
        )


# -- encoding --------------------------------------------------------------------


def encode_kwargs(kwargs: Mapping[str, Any], *, listener: str) -> dict[str, Any]:
    """
    Encode a signal's keyword arguments, each under its own name.

    Raises:
        NotSerializable: an argument (or a value nested in it) cannot cross;
            the error names ``listener`` and the argument, e.g. ``kwargs['cart']``.
    """
    return {
        name: encode(value, listener=listener, argument=f"kwargs[{name!r}]")
        for name, value in kwargs.items()
    }


def encode(value: Any, *, listener: str, argument: str) -> Any:
    """
    Encode one value as JSON-compatible data (see the module docstring).

    Raises:
        NotSerializable: ``value`` or a value nested in it cannot cross.
    """
    kind = type(value)
    if kind in _PLAIN:
        if kind is float and not math.isfinite(value):
            return {TAG: "float", "v": repr(value)}
        return value
    if kind is list:
        return [
            encode(item, listener=listener, argument=f"{argument}[{i}]")
            for i, item in enumerate(value)
        ]
    if kind is dict:
        if TAG not in value and all(type(key) is str for key in value):
            return {
                key: encode(item, listener=listener, argument=f"{argument}[{key!r}]")
                for key, item in value.items()
            }
        return {
            TAG: "dict",
            "v": [
                [
                    encode(key, listener=listener, argument=f"{argument}.keys()"),
                    encode(item, listener=listener, argument=f"{argument}[{key!r}]"),
                ]
                for key, item in value.items()
            ],
        }
    if kind in _COLLECTIONS:
        return {
            TAG: _COLLECTIONS[kind],
            "v": [
                encode(item, listener=listener, argument=f"{argument}[{i}]")
                for i, item in enumerate(value)
            ],
        }
    scalar = _SCALARS.get(kind)
    if scalar is not None:
        return {TAG: scalar[0], "v": scalar[1](value)}
    model = _model_base()
    if model is not None and isinstance(value, model):
        return _encode_instance(value, listener=listener, argument=argument)
    if isinstance(value, type):
        return _encode_class(value, listener=listener, argument=argument)
    raise NotSerializable(listener, argument, _type_name(kind))


def _encode_instance(value: models.Model, *, listener: str, argument: str) -> dict[str, Any]:
    label = value._meta.label
    if value.pk is None:
        raise NotSerializable(listener, argument, f"{label} (unsaved, no primary key)")
    return {
        TAG: "instance",
        "model": label,
        "pk": encode(value.pk, listener=listener, argument=f"{argument}.pk"),
        "db": value._state.db,
    }


def _encode_class(value: type, *, listener: str, argument: str) -> dict[str, Any]:
    model = _model_base()
    if model is not None and issubclass(value, model) and not value._meta.abstract:
        return {TAG: "model", "model": value._meta.label}
    qualname = value.__qualname__
    if "<" in qualname:
        raise NotSerializable(listener, argument, f"class {value.__module__}.{qualname}")
    return {TAG: "class", "module": value.__module__, "qualname": qualname}


def _model_base() -> type[models.Model] | None:
    """
    ``django.db.models.Model`` if Django's ORM is loaded (else no value can be
    a model). Not imported here: importing django.db.models while patchboard
    loads would create Django's model signals before a project can swap
    ``patchboard.Signal`` in for ``django.dispatch.Signal``.
    """
    orm = sys.modules.get("django.db.models")
    return None if orm is None else orm.Model


def _type_name(kind: type) -> str:
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


_PLAIN: frozenset[type] = frozenset({str, int, float, bool, type(None)})

_COLLECTIONS: dict[type, str] = {tuple: "tuple", set: "set", frozenset: "frozenset"}

_SCALARS: dict[type, tuple[str, Callable[[Any], str]]] = {
    dt.datetime: ("datetime", dt.datetime.isoformat),
    dt.date: ("date", dt.date.isoformat),
    dt.time: ("time", dt.time.isoformat),
    Decimal: ("decimal", str),
    uuid.UUID: ("uuid", str),
}


# -- decoding --------------------------------------------------------------------


def decode_kwargs(data: object, *, missing: Missing) -> dict[str, Any]:
    """
    Decode what :func:`encode_kwargs` made.

    Raises:
        PayloadError: ``data`` is not what ``encode_kwargs`` makes.
        InstanceMissing: a model instance was deleted (``missing="report"``;
            with ``missing="none"`` it decodes as ``None``).
    """
    if type(data) is not dict:
        raise PayloadError("kwargs", f"expected an object, got {type(data).__name__}")
    return {
        name: decode(value, argument=f"kwargs[{name!r}]", missing=missing)
        for name, value in data.items()
    }


def decode(data: Any, *, argument: str, missing: Missing) -> Any:
    """
    Decode one value made by :func:`encode`.

    Raises:
        PayloadError: an unknown tag, a model or class this process does not have.
        InstanceMissing: as :func:`decode_kwargs`.
    """
    kind = type(data)
    if kind in _PLAIN:
        return data
    if kind is list:
        return [
            decode(item, argument=f"{argument}[{i}]", missing=missing)
            for i, item in enumerate(data)
        ]
    if kind is not dict:
        raise PayloadError(argument, f"not JSON data: {type(data).__name__}")
    tag = data.get(TAG)
    if tag is None:
        return {
            key: decode(item, argument=f"{argument}[{key!r}]", missing=missing)
            for key, item in data.items()
        }
    try:
        return _decode_tagged(tag, data, argument=argument, missing=missing)
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(argument, f"malformed {tag!r} value: {exc}") from None


def _decode_tagged(tag: object, data: dict[str, Any], *, argument: str, missing: Missing) -> Any:
    if tag in _PARSERS:
        value = data["v"]
        if type(value) is not str:
            raise PayloadError(argument, f"malformed {tag!r} value")
        return _PARSERS[tag](value)
    if tag in _BUILDERS:
        items = data["v"]
        if type(items) is not list:
            raise PayloadError(argument, f"malformed {tag!r} value")
        return _BUILDERS[tag](
            decode(item, argument=f"{argument}[{i}]", missing=missing)
            for i, item in enumerate(items)
        )
    if tag == "dict":
        return {
            decode(key, argument=f"{argument}.keys()", missing=missing): decode(
                item, argument=f"{argument}[{i}]", missing=missing
            )
            for i, (key, item) in enumerate(data["v"])
        }
    if tag == "instance":
        return _decode_instance(data, argument=argument, missing=missing)
    if tag == "model":
        return _model(data["model"], argument)
    if tag == "class":
        return _loaded_class(data["module"], data["qualname"], argument)
    raise PayloadError(argument, f"unknown tag {tag!r}")


def _decode_instance(data: dict[str, Any], *, argument: str, missing: Missing) -> Any:
    model = _model(data["model"], argument)
    pk = decode(data["pk"], argument=f"{argument}.pk", missing=missing)
    db = data.get("db")
    manager = model._base_manager
    queryset = manager.using(db) if isinstance(db, str) else manager.all()
    try:
        return queryset.get(pk=pk)
    except model.DoesNotExist:  # type: ignore[attr-defined]
        if missing == "none":
            return None
        raise InstanceMissing(argument, model._meta.label) from None


def _model(label: object, argument: str) -> type[models.Model]:
    if not isinstance(label, str):
        raise PayloadError(argument, f"malformed model label {label!r}")
    try:
        return apps.get_model(label)
    except (LookupError, ValueError):
        raise PayloadError(argument, f"no installed model {label!r}") from None


def _loaded_class(module_name: object, qualname: object, argument: str) -> type:
    # Only modules this process has already imported: a payload never causes an import.
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        raise PayloadError(argument, "malformed class reference")
    found: Any = sys.modules.get(module_name)
    if found is None:
        raise PayloadError(argument, f"module {module_name!r} is not loaded in this process")
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, type):
        raise PayloadError(argument, f"no class {module_name}.{qualname}")
    return found


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        raise ValueError(f"{text!r} is not NaN or an infinity")
    return value


_PARSERS: dict[str, Callable[[str], Any]] = {
    "float": _parse_float,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "decimal": Decimal,
    "uuid": uuid.UUID,
}

_BUILDERS: dict[str, Callable[[Any], Any]] = {
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
}
