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
* A model class: its ``app_label.ModelName``. Another class only if a
  background listener is connected for it (``sender=SomeClass``): its module
  and qualified name, resolved in the worker among the classes *its*
  background listeners are connected for (see
  :func:`~patchboard._background._registry.sender_class`). A payload never
  makes a worker import a module or read a module's attributes.

Values nest at most :data:`MAX_DEPTH` containers deep. The keyword arguments
``sender`` and ``signal`` are never sent: the worker passes the listener its
own. Anything else raises :class:`~patchboard.NotSerializable` at send time,
naming the listener and the argument (``kwargs['cart'][0]``).

In the worker, a payload is decoded only if it is exactly what the sending
side writes: every tag with its own keys and value types, scalars in the form
the encoder writes them (``"nan"``, not ``"NaN"``), primary keys of the
model's primary key type on a database this process has, nothing nested
deeper than :data:`MAX_DEPTH`. Anything else is a :class:`PayloadError`,
never another exception, so a tampered payload is refused and no listener
is called with it; :class:`InstanceMissing` reports a model instance deleted
since the send.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import connections

from patchboard._background._registry import sender_class
from patchboard._config import Missing
from patchboard._exceptions import NotSerializable

if TYPE_CHECKING:
    from django.db import models

TAG = "__patchboard__"
"""The key that marks a JSON object as an encoded Python value."""


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

MAX_DEPTH = 100
"""
How many containers deep a value may nest (lists, dicts, tuples, sets): deeper
is refused at send time and in the worker, well within Python's recursion limit.
"""

RESERVED = frozenset({"sender", "signal"})
"""Keyword names a payload never carries: the worker passes the listener its own."""

MAX_TRACE_ENTRIES = 8
"""
How many headers a payload's trace context holds at most: OpenTelemetry's
three (``traceparent``, ``tracestate``, ``baggage``), sentry-sdk's
``sentry-trace``, and room for another propagator's.
"""

MAX_TRACE_VALUE = 8192
"""The longest header value a trace context holds: W3C's limit on a ``baggage`` header."""

_TRACE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A trace header's name: what propagators write (``traceparent``, ``X-Amzn-Trace-Id``)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """
    One background call: the only argument of its task, as JSON.

    ``listener`` is the listener's dotted path, ``signal`` the signal's key
    (see ``patchboard._background.signal_key``), ``sender`` and ``kwargs`` the
    encoded arguments, ``attempt`` counts from 1 (a reschedule is the next
    attempt) and ``first_enqueued_at`` is when the first attempt was enqueued.
    ``trace`` is the trace context of the call that enqueued it (header names
    to values, see :func:`trace_context`), None when no tracing was active
    there: the payload then has no ``trace`` at all, as before it existed.
    ``key`` and ``db`` are set when the call went through the outbox: its
    entry's id (the idempotency key) and the database the entry is on.
    """

    listener: str
    signal: str
    sender: Any
    kwargs: dict[str, Any]
    attempt: int = 1
    first_enqueued_at: dt.datetime
    trace: dict[str, str] | None = None
    key: str | None = None
    db: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "v": VERSION,
            "listener": self.listener,
            "signal": self.signal,
            "sender": self.sender,
            "kwargs": self.kwargs,
            "attempt": self.attempt,
            "first_enqueued_at": self.first_enqueued_at.isoformat(),
        }
        if self.trace is not None:
            data["trace"] = self.trace
        if self.key is not None:  # Left out otherwise: optional, as older payloads lack them.
            data["key"], data["db"] = self.key, self.db
        return data

    @classmethod
    def from_json(cls, data: object) -> Job:
        """
        Read a payload made by :meth:`to_json` (arguments still encoded).

        Raises:
            PayloadError: ``data`` is not such a payload.
        """
        if type(data) is not dict:
            raise PayloadError("payload", f"expected an object, got {_shown(data)}")
        version = data.get("v")
        if type(version) is not int or version != VERSION:  # True == 1: the type first
            raise PayloadError("payload", f"unknown version {_shown(version)}")
        listener, signal = data.get("listener"), data.get("signal")
        attempt, first = data.get("attempt"), data.get("first_enqueued_at")
        if type(listener) is not str or type(signal) is not str:
            raise PayloadError("payload", "listener and signal must be strings")
        if type(attempt) is not int or attempt < 1:
            raise PayloadError("payload", f"attempt must be an int >= 1, got {_shown(attempt)}")
        if type(data.get("kwargs")) is not dict or "sender" not in data:
            raise PayloadError("payload", "sender and kwargs are required")
        if type(first) is not str:
            raise PayloadError("payload", f"bad first_enqueued_at {_shown(first)}")
        try:
            first_enqueued_at = dt.datetime.fromisoformat(first)
        except ValueError:
            raise PayloadError("payload", f"bad first_enqueued_at {_shown(first)}") from None
        if first_enqueued_at.tzinfo is None:
            first_enqueued_at = first_enqueued_at.replace(tzinfo=dt.UTC)
        trace = data.get("trace")
        if "trace" in data and (trace is None or trace_context(trace) != trace):
            raise PayloadError(
                "payload",
                f"trace must be an object of at most {MAX_TRACE_ENTRIES} header names "
                f"(letters, digits, '-' and '_', up to 64) to printable ASCII strings of "
                f"at most {MAX_TRACE_VALUE} characters",
            )
        key, db = _outbox_fields(data)
        return cls(
            listener=listener,
            signal=signal,
            sender=data["sender"],
            kwargs=data["kwargs"],
            attempt=attempt,
            first_enqueued_at=first_enqueued_at,
            key=key,
            db=db,
            trace=trace,
        )


def trace_context(carrier: object) -> dict[str, str] | None:
    """
    What of ``carrier`` (headers an instrument wrote, see
    ``patchboard._instrument``) a payload may carry as its trace context: the
    entries whose name and value are strings within bounds (names of letters,
    digits, ``-`` and ``_``, up to 64; values of printable ASCII, up to
    :data:`MAX_TRACE_VALUE`), the first :data:`MAX_TRACE_ENTRIES` of them;
    None if none is left. The sender keeps what fits (a trace is never worth
    a call); a worker refuses a payload whose trace is not exactly that.
    """
    if type(carrier) is not dict:
        return None
    kept = {
        name: value
        for name, value in carrier.items()
        if type(name) is str
        and _TRACE_NAME.fullmatch(name)
        and type(value) is str
        and len(value) <= MAX_TRACE_VALUE
        and value.isascii()
        and value.isprintable()
    }
    return dict(list(kept.items())[:MAX_TRACE_ENTRIES]) or None


def _outbox_fields(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """A payload's ``key`` and ``db``: both absent, or a UUID and a database of this process."""
    key, db = data.get("key"), data.get("db")
    if key is None and db is None:
        return None, None
    if type(key) is not str or type(db) is not str:
        raise PayloadError("payload", "key and db must be strings, together")
    try:
        key = str(uuid.UUID(key))
    except ValueError:
        raise PayloadError("payload", f"key must be a UUID, got {_shown(key)}") from None
    if db not in connections.settings:
        raise PayloadError("payload", f"db {_shown(db)} is not a database of this process")
    return key, db


# -- encoding --------------------------------------------------------------------


def encode_kwargs(kwargs: Mapping[str, Any], *, listener: str) -> dict[str, Any]:
    """
    Encode a signal's keyword arguments, each under its own name; ``sender``
    and ``signal`` are left out (see :data:`RESERVED`).

    Raises:
        NotSerializable: an argument (or a value nested in it) cannot cross;
            the error names ``listener`` and the argument, e.g. ``kwargs['cart']``.
    """
    encoder = _Encoder(listener)
    return {
        name: encoder.value(value, f"kwargs[{name!r}]", 0)
        for name, value in kwargs.items()
        if name not in RESERVED
    }


def encode(value: Any, *, listener: str, argument: str) -> Any:
    """
    Encode one value as JSON-compatible data (see the module docstring).

    Raises:
        NotSerializable: ``value`` or a value nested in it cannot cross.
    """
    return _Encoder(listener).value(value, argument, 0)


@dataclasses.dataclass(frozen=True, slots=True)
class _Encoder:
    listener: str

    def value(self, value: Any, argument: str, depth: int) -> Any:
        kind = type(value)
        if kind in _PLAIN:
            if kind is float and not math.isfinite(value):
                return {TAG: "float", "v": repr(value)}
            return value
        scalar = _SCALARS.get(kind)
        if scalar is not None:
            return {TAG: scalar.tag, "v": scalar.write(value)}
        if kind is list or kind is dict or kind in _COLLECTIONS:
            if depth >= MAX_DEPTH:
                raise NotSerializable(
                    self.listener,
                    argument,
                    f"{_type_name(kind)} nested more than {MAX_DEPTH} containers deep",
                )
            return self.container(value, argument, depth + 1)
        model = _model_base()
        if model is not None and isinstance(value, model):
            return self.instance(value, argument)
        if isinstance(value, type):
            return self.cls(value, argument)
        raise NotSerializable(self.listener, argument, _type_name(kind))

    def container(self, value: Any, argument: str, depth: int) -> Any:
        kind = type(value)
        if kind is list:
            return [self.value(item, f"{argument}[{i}]", depth) for i, item in enumerate(value)]
        if kind in _COLLECTIONS:
            items = [self.value(item, f"{argument}[{i}]", depth) for i, item in enumerate(value)]
            return {TAG: _COLLECTIONS[kind], "v": items}
        if TAG not in value and all(type(key) is str for key in value):
            return {
                key: self.value(item, f"{argument}[{key!r}]", depth) for key, item in value.items()
            }
        pairs = [
            [
                self.value(key, f"{argument}.keys()", depth),
                self.value(item, f"{argument}[{key!r}]", depth),
            ]
            for key, item in value.items()
        ]
        return {TAG: "dict", "v": pairs}

    def instance(self, value: models.Model, argument: str) -> dict[str, Any]:
        label = value._meta.label
        if value.pk is None:
            raise NotSerializable(self.listener, argument, f"{label} (unsaved, no primary key)")
        return {
            TAG: "instance",
            "model": label,
            "pk": self.value(value.pk, f"{argument}.pk", 0),
            "db": value._state.db,
        }

    def cls(self, value: type, argument: str) -> dict[str, Any]:
        model = _model_base()
        if model is not None and issubclass(value, model) and not value._meta.abstract:
            return {TAG: "model", "model": value._meta.label}
        module, qualname = value.__module__, value.__qualname__
        if sender_class(module, qualname) is not value:
            raise NotSerializable(
                self.listener,
                argument,
                f"class {module}.{qualname} (a class crosses only if it is a model, or the "
                f"sender= a background listener is connected for)",
            )
        return {TAG: "class", "module": module, "qualname": qualname}


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


def _shown(value: object) -> str:
    """
    ``value``, read from a payload, as an error message may show it: short,
    and safe for any JSON value (``repr`` of an int of more than 4,300
    digits raises ``ValueError``).
    """
    if type(value) is int and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    if type(value) not in _PLAIN:
        return f"a {_type_name(type(value))}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


# -- decoding --------------------------------------------------------------------


def decode_kwargs(data: object, *, missing: Missing) -> dict[str, Any]:
    """
    Decode what :func:`encode_kwargs` made.

    Raises:
        PayloadError: ``data`` is not what ``encode_kwargs`` makes (a name
            that is not a string, or one of :data:`RESERVED`, included).
        InstanceMissing: a model instance was deleted (``missing="report"``;
            with ``missing="none"`` it decodes as ``None``).
    """
    if type(data) is not dict:
        raise PayloadError("kwargs", f"expected an object, got {_shown(data)}")
    decoder = _Decoder(missing)
    decoded = {}
    for name, value in data.items():
        argument = f"kwargs[{_shown(name)}]"
        if type(name) is not str or name in RESERVED:
            raise PayloadError(
                argument, "not an argument a sender writes (the worker passes sender and signal)"
            )
        decoded[name] = decoder.value(value, argument, 0)
    return decoded


def decode(data: Any, *, argument: str, missing: Missing) -> Any:
    """
    Decode one value made by :func:`encode`.

    Raises:
        PayloadError: ``data`` is not what ``encode`` makes (see the module
            docstring): an unknown tag, a malformed value, a model, class or
            database this process does not have, nesting deeper than
            :data:`MAX_DEPTH`.
        InstanceMissing: as :func:`decode_kwargs`.
    """
    return _Decoder(missing).value(data, argument, 0)


@dataclasses.dataclass(frozen=True, slots=True)
class _Decoder:
    missing: Missing

    def value(self, data: Any, argument: str, depth: int) -> Any:
        kind = type(data)
        if kind in _PLAIN:
            return data
        if kind is not list and kind is not dict:
            raise PayloadError(argument, f"not JSON data: {_shown(data)}")
        if depth >= MAX_DEPTH:
            raise PayloadError(argument, f"nested more than {MAX_DEPTH} containers deep")
        if kind is list:
            return [self.value(item, f"{argument}[{i}]", depth + 1) for i, item in enumerate(data)]
        if TAG not in data:
            return {
                key: self.value(item, f"{argument}[{_shown(key)}]", depth + 1)
                for key, item in data.items()
            }
        tag = data[TAG]
        if type(tag) is not str or tag not in _FIELDS:
            raise PayloadError(argument, f"unknown tag {_shown(tag)}")
        if data.keys() != _FIELDS[tag]:
            keys = sorted(map(_shown, data))
            raise PayloadError(argument, f"malformed {tag!r} value: keys {keys}")
        try:
            return self.tagged(tag, data, argument, depth + 1)
        except PayloadError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:
            # What a parser or a set says of a bad value (unhashable items included).
            problem = f"malformed {tag!r} value ({type(exc).__name__})"
            raise PayloadError(argument, problem) from None

    def tagged(self, tag: str, data: dict[str, Any], argument: str, depth: int) -> Any:
        if tag in _PARSED:
            return _parse(_PARSED[tag], data["v"], argument)
        if tag == "instance":
            return self.instance(data, argument, depth)
        if tag == "model":
            return _model(data["model"], argument)
        if tag == "class":
            return _sender_class(data["module"], data["qualname"], argument)
        items = data["v"]
        if type(items) is not list:
            raise PayloadError(argument, f"malformed {tag!r} value: {_shown(items)}")
        if tag == "dict":
            return self.pairs(items, argument, depth)
        values = [self.value(item, f"{argument}[{i}]", depth) for i, item in enumerate(items)]
        built = _BUILDERS[tag](values)
        if len(built) != len(values):
            raise PayloadError(argument, f"malformed {tag!r} value: duplicate items")
        return built

    def pairs(self, pairs: list[Any], argument: str, depth: int) -> dict[Any, Any]:
        if not all(type(pair) is list and len(pair) == 2 for pair in pairs):
            raise PayloadError(argument, "malformed 'dict' value: expected [key, value] pairs")
        built = {
            self.value(key, f"{argument}.keys()", depth): (
                self.value(item, f"{argument}[{i}]", depth)
            )
            for i, (key, item) in enumerate(pairs)
        }
        if len(built) != len(pairs):
            raise PayloadError(argument, "malformed 'dict' value: duplicate keys")
        return built

    def instance(self, data: dict[str, Any], argument: str, depth: int) -> Any:
        model = _model(data["model"], argument)
        db = data["db"]
        if db is not None and (type(db) is not str or db not in connections.settings):
            raise PayloadError(argument, f"no database {_shown(db)} in this process")
        pk = _primary_key(model, self.value(data["pk"], f"{argument}.pk", depth), argument)
        manager = model._base_manager
        queryset = manager.all() if db is None else manager.using(db)
        try:
            return queryset.get(pk=pk)
        except ObjectDoesNotExist:  # the model's own DoesNotExist, which Model does not declare
            if self.missing == "none":
                return None
            raise InstanceMissing(argument, model._meta.label) from None


def _primary_key(model: type[models.Model], pk: Any, argument: str) -> Any:
    # What the query would do with ``pk`` (to_python, the field's validators, such as an
    # integer's range on this database), asked first, so a mistyped primary key is the
    # payload's fault and not the query's: ``"abc"`` for an AutoField, ``True`` for 1,
    # None (the sender never writes an unsaved instance).
    field = model._meta.pk
    assert field is not None
    try:
        value = field.to_python(pk)
        field.run_validators(value)
        valid = pk is not None and type(value) is type(pk) and value == pk
    except (ValidationError, TypeError, ValueError, ArithmeticError):
        valid = False
    if not valid:
        raise PayloadError(
            f"{argument}.pk", f"{_shown(pk)} is not a primary key of {model._meta.label}"
        )
    return value


def _model(label: object, argument: str) -> type[models.Model]:
    if type(label) is not str:
        raise PayloadError(argument, f"malformed model label {_shown(label)}")
    try:
        return apps.get_model(label)
    except (LookupError, ValueError):
        raise PayloadError(argument, f"no installed model {_shown(label)}") from None


def _sender_class(module: object, qualname: object, argument: str) -> type:
    if type(module) is not str or type(qualname) is not str:
        raise PayloadError(argument, "malformed class reference")
    found = sender_class(module, qualname)
    if found is None:
        raise PayloadError(
            argument,
            f"no class {_shown(f'{module}.{qualname}')} that a background listener is "
            f"connected for (a payload names models, and those classes only)",
        )
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class _Scalar:
    """How a tagged scalar is written at send time and read in the worker."""

    tag: str
    write: Callable[[Any], str]
    read: Callable[[str], Any]


def _parse(scalar: _Scalar, text: object, argument: str) -> Any:
    # Only the form ``write`` gives: "1e999" is not an infinity, nor " 1.5" a Decimal.
    if type(text) is not str:
        raise PayloadError(argument, f"malformed {scalar.tag!r} value: {_shown(text)}")
    value = scalar.read(text)
    if scalar.write(value) != text:
        raise PayloadError(argument, f"malformed {scalar.tag!r} value: {_shown(text)}")
    return value


def _read_float(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        raise ValueError("a finite float is not tagged")
    return value


_PLAIN: frozenset[type] = frozenset({str, int, float, bool, type(None)})

_COLLECTIONS: dict[type, str] = {tuple: "tuple", set: "set", frozenset: "frozenset"}

_BUILDERS: dict[str, Callable[[list[Any]], Any]] = {
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
}

_SCALARS: dict[type, _Scalar] = {
    dt.datetime: _Scalar("datetime", dt.datetime.isoformat, dt.datetime.fromisoformat),
    dt.date: _Scalar("date", dt.date.isoformat, dt.date.fromisoformat),
    dt.time: _Scalar("time", dt.time.isoformat, dt.time.fromisoformat),
    Decimal: _Scalar("decimal", str, Decimal),
    uuid.UUID: _Scalar("uuid", str, uuid.UUID),
}

_PARSED: dict[str, _Scalar] = {
    "float": _Scalar("float", repr, _read_float),
    **{scalar.tag: scalar for scalar in _SCALARS.values()},
}

_FIELDS: dict[str, frozenset[str]] = {
    **dict.fromkeys([*_PARSED, *_BUILDERS, "dict"], frozenset({TAG, "v"})),
    "instance": frozenset({TAG, "model", "pk", "db"}),
    "model": frozenset({TAG, "model"}),
    "class": frozenset({TAG, "module", "qualname"}),
}
"""Each tag's keys, exactly as the encoder writes them."""
