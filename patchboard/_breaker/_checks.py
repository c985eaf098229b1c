"""
System checks of the circuit breakers declared in ``PATCHBOARD["BREAKERS"]``.

``patchboard.E010``
    A declared breaker's arguments are invalid (unknown argument, wrong type,
    out of range, an ``exclude`` entry that cannot be imported), or its
    Redis store is not usable: the ``redis`` package is missing, or the URL
    is malformed (a port out of range or not a number, a database that is
    not a number, an unknown or invalid query parameter). One error per bad
    breaker, naming the breaker and the argument, or the URL with its
    password masked. ``PATCHBOARD["STORE"]``, the store of every breaker
    created without ``store=``, is checked the same way (one error for it),
    and so is the ``store=`` of a breaker created in code.

``patchboard.E011``
    A listener refers to a breaker by a name that is neither declared in
    ``PATCHBOARD["BREAKERS"]`` nor created in code, nor names a circuit
    (``"<name>[<key>]"``) of a keyed breaker that is.

A ``BREAKERS`` value that is not a dict of dicts is ``patchboard.E001``'s
business (:mod:`patchboard._checks`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

from patchboard._breaker._circuit import all_breakers
from patchboard._breaker._redis import check_url
from patchboard._config import REDIS_URL_PREFIXES, BreakerConfig
from patchboard._state import state

E010_ID = "patchboard.E010"
E011_ID = "patchboard.E011"

_URL_HINT = (
    "Give a URL redis-py can read, such as redis://127.0.0.1:6379/0 "
    "(a port in 1-65535, a database number), redis+cluster://host:port,host:port/ "
    "for a Redis Cluster, redis+sentinel://host:26379,host:26379/mymaster/0 for the "
    "primary Redis Sentinels watch, or 'memory'."
)


def breaker_error(name: str, problem: str) -> Error:
    """The ``patchboard.E010`` error for the declared breaker ``name``."""
    return Error(
        f"circuit breaker {name!r}: {problem}",
        hint="See BreakerConfig for the arguments a circuit breaker takes.",
        obj=f'settings.PATCHBOARD["BREAKERS"][{name!r}]',
        id=E010_ID,
    )


def store_error(problem: str) -> Error:
    """The ``patchboard.E010`` error for ``PATCHBOARD["STORE"]``."""
    return Error(
        f'PATCHBOARD["STORE"]: {problem}',
        hint=f"{_URL_HINT} Every circuit breaker created without store= keeps its state there.",
        obj='settings.PATCHBOARD["STORE"]',
        id=E010_ID,
    )


def store_problem(store: object) -> str | None:
    """
    What makes the Redis store ``store`` unusable, or ``None``. A value
    that is not a Redis URL is not this check's business (``"memory"``; a
    bad scheme is an invalid argument or setting, reported as such).
    """
    if not isinstance(store, str) or not store.startswith(REDIS_URL_PREFIXES):
        return None
    if importlib.util.find_spec("redis") is None:
        return (
            "store is a Redis URL but the redis package is not installed "
            "(pip install 'django-patchboard[redis]')"
        )
    try:
        check_url(store)
    except ValueError as exc:
        return str(exc)
    return None


@register()
def check_breakers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, "PATCHBOARD", None) or {}
    if not isinstance(raw, Mapping):
        return []
    errors: list[CheckMessage] = []
    problem = store_problem(raw.get("STORE"))
    if problem is not None:
        errors.append(store_error(problem))
    declared = raw.get("BREAKERS") or {}
    if not isinstance(declared, Mapping):
        declared = {}  # E001's business
    for name, options in declared.items():
        if not isinstance(name, str) or not isinstance(options, Mapping):
            continue
        try:
            config = BreakerConfig.from_options(options)
        except (TypeError, ValueError) as exc:
            errors.append(breaker_error(name, str(exc)))
            continue
        # A breaker without store= uses STORE, checked once above.
        problem = store_problem(config.store)
        if problem is not None:
            errors.append(breaker_error(name, problem))
    for breaker in all_breakers():  # built in code, with store=
        problem = None if breaker.name in declared else store_problem(breaker.config.store)
        if problem is not None:
            errors.append(
                Error(
                    f"circuit breaker {breaker.name!r}: {problem}",
                    hint=f"{_URL_HINT} Until then every call through this breaker raises "
                    "ImproperlyConfigured.",
                    obj=f"CircuitBreaker({breaker.name!r})",
                    id=E010_ID,
                )
            )
    return errors


@register()
def check_listener_breakers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, "PATCHBOARD", None) or {}
    declared = raw.get("BREAKERS") if isinstance(raw, Mapping) else None
    # A BREAKERS of the wrong shape is patchboard.E001's to report, not this check's to trip on.
    if not isinstance(declared, Mapping):
        declared = {}
    names = [name for name in declared if isinstance(name, str)]
    created = all_breakers()
    known = set(names) | {breaker.name for breaker in created}
    # A keyed breaker's circuits are named "<name>[<key>]", each made on first use.
    keyed = {
        name
        for name in names
        if isinstance(declared[name], Mapping) and declared[name].get("key") is not None
    } | {breaker.name for breaker in created if breaker.keyed}
    return [
        Error(
            f"listener {label} refers to circuit breaker {name!r}, which is neither "
            f'declared in PATCHBOARD["BREAKERS"] nor created in code',
            hint=f"known breakers: {', '.join(map(repr, sorted(known))) or 'none'}"
            + "".join(f"; {family}[<key>]: a circuit of {family!r}" for family in sorted(keyed)),
            obj=label,
            id=E011_ID,
        )
        for label, name in sorted(
            (listener.label, str(listener.options.breaker))
            for listener in list(state.named_breakers)
        )
        if name not in known and _circuit_family(name) not in keyed
    ]


def _circuit_family(name: str) -> str | None:
    """The keyed breaker that ``"<name>[<key>]"`` names a circuit of, read as get_breaker does."""
    family, bracket, key = name.partition("[")
    return family if bracket and len(key) > 1 and key.endswith("]") and family else None
