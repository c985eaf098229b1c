"""
System checks of the circuit breakers declared in ``PATCHBOARD["BREAKERS"]``.

``patchboard.E010``
    A declared breaker's arguments are invalid (unknown argument, wrong type,
    out of range, an ``exclude`` entry that cannot be imported) or its Redis
    store needs the ``redis`` package. One error per bad breaker, naming the
    breaker and the argument.

``patchboard.E011``
    A listener refers to a breaker by a name that is neither declared in
    ``PATCHBOARD["BREAKERS"]`` nor created in code.

A ``BREAKERS`` value that is not a dict of dicts is ``patchboard.E001``'s
business (:mod:`patchboard._checks`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register

from patchboard._config import BreakerConfig
from patchboard._state import state
from patchboard.breaker import all_breakers

E010_ID = "patchboard.E010"
E011_ID = "patchboard.E011"


def breaker_error(name: str, problem: str) -> Error:
    """The ``patchboard.E010`` error for the declared breaker ``name``."""
    return Error(
        f"circuit breaker {name!r}: {problem}",
        hint="See BreakerConfig for the arguments a circuit breaker takes.",
        obj=f'settings.PATCHBOARD["BREAKERS"][{name!r}]',
        id=E010_ID,
    )


@register()
def check_breakers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, "PATCHBOARD", None) or {}
    if not isinstance(raw, Mapping):
        return []
    declared = raw.get("BREAKERS") or {}
    default_store = raw.get("STORE", "memory")
    if not isinstance(declared, Mapping):
        return []
    errors: list[CheckMessage] = []
    for name, options in declared.items():
        if not isinstance(name, str) or not isinstance(options, Mapping):
            continue
        try:
            config = BreakerConfig.from_options(options)
        except (TypeError, ValueError) as exc:
            errors.append(breaker_error(name, str(exc)))
            continue
        store = config.store or default_store
        if (
            isinstance(store, str)
            and store.startswith(("redis://", "rediss://"))
            and importlib.util.find_spec("redis") is None
        ):
            errors.append(
                breaker_error(
                    name,
                    "store is a Redis URL but the redis package is not installed "
                    "(pip install 'django-patchboard[redis]')",
                )
            )
    return errors


@register()
def check_listener_breakers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, "PATCHBOARD", None) or {}
    declared = raw.get("BREAKERS") if isinstance(raw, Mapping) else None
    known = set(declared or ()) | {breaker.name for breaker in all_breakers()}
    return [
        Error(
            f"listener {label} refers to circuit breaker {name!r}, which is neither "
            f'declared in PATCHBOARD["BREAKERS"] nor created in code',
            hint=f"known breakers: {', '.join(map(repr, sorted(known))) or 'none'}",
            obj=label,
            id=E011_ID,
        )
        for label, name in sorted(
            (listener.label, str(listener.options.breaker))
            for listener in list(state.named_breakers)
        )
        if name not in known
    ]
