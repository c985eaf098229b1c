"""
The ``PATCHBOARD`` setting, validated into frozen dataclasses.

The dict in ``settings.PATCHBOARD`` is read once (and again whenever a test
overrides it) and turned into one :class:`Settings`. Each key maps to a field
of the same name in lower case; nested sections are dataclasses of their own.
A bad value is reported by the system check framework (``patchboard.E001`` and
on) at start-up; code that reads the settings anyway gets an
``ImproperlyConfigured`` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

OnError: TypeAlias = Literal["raise", "log"]
ON_ERROR_CHOICES: tuple[OnError, ...] = ("raise", "log")


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float, or raise naming ``name`` and the rule."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {rule} seconds, got {value!r}")
    return float(value)


def check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_on_error(name: str, value: object) -> OnError:
    if value not in ON_ERROR_CHOICES:
        raise ValueError(f"{name} must be 'raise' or 'log', got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSettings:
    """``PATCHBOARD["SHORT_TERM_QUEUE"]``: the per-process short-term queue."""

    min_workers: int = 4
    max_workers: int = 32
    task_time_limit: float = 15.0
    item_expiry: float = 45.0
    max_pending: int = 1000
    at_risk_fraction: float = 0.5
    """An item waiting longer than this fraction of ``item_expiry`` is at risk."""
    idle_shrink_after: float = 30.0
    """Seconds of idle capacity above ``min_workers`` before the pool shrinks."""

    def __post_init__(self) -> None:
        check_int("MIN_WORKERS", self.min_workers, minimum=1)
        check_int("MAX_WORKERS", self.max_workers, minimum=1)
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"MIN_WORKERS must be <= MAX_WORKERS, got {self.min_workers} > {self.max_workers}"
            )
        check_positive("TASK_TIME_LIMIT", self.task_time_limit)
        check_positive("ITEM_EXPIRY", self.item_expiry)
        check_int("MAX_PENDING", self.max_pending, minimum=0)
        if not 0 < check_positive("AT_RISK_FRACTION", self.at_risk_fraction) < 1:
            raise ValueError(
                f"AT_RISK_FRACTION must be between 0 and 1, got {self.at_risk_fraction!r}"
            )
        check_positive("IDLE_SHRINK_AFTER", self.idle_shrink_after)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackgroundSettings:
    """``PATCHBOARD["BACKGROUND"]``: background listeners run by ``django.tasks``."""

    backend: str = "default"
    """The ``TASKS`` backend alias background listeners enqueue to."""
    max_reschedules: int = 50
    """How many times a task whose circuit is open reschedules itself before giving up."""
    give_up_after: float = 86400.0
    """Seconds after the first enqueue past which a task no longer reschedules."""
    retry_delay: float = 60.0
    """Seconds a task waits before its next attempt when an open circuit names no retry time."""

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend:
            raise TypeError(f"BACKEND must be a backend alias, got {self.backend!r}")
        check_int("MAX_RESCHEDULES", self.max_reschedules, minimum=0)
        check_positive("GIVE_UP_AFTER", self.give_up_after)
        check_positive("RETRY_DELAY", self.retry_delay)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The whole ``PATCHBOARD`` setting."""

    on_error: OnError = "raise"
    """Error policy of listeners that don't set ``on_error`` themselves."""
    log_kwargs: bool = False
    """Log signal kwargs' values in failure events (they may hold secrets)."""
    collect_queue_threshold: int = 16
    """``collect_async(queue="auto")`` queues above this many live listeners."""
    short_term_queue: QueueSettings = field(default_factory=QueueSettings)
    store: str = "memory"
    """Default circuit breaker state store: ``"memory"`` or a ``redis://`` URL."""
    breakers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Named circuit breakers: name -> keyword arguments of ``CircuitBreaker``."""
    background: BackgroundSettings = field(default_factory=BackgroundSettings)

    def __post_init__(self) -> None:
        check_on_error("ON_ERROR", self.on_error)
        if not isinstance(self.log_kwargs, bool):
            raise TypeError(f"LOG_KWARGS must be a bool, got {self.log_kwargs!r}")
        check_int("COLLECT_QUEUE_THRESHOLD", self.collect_queue_threshold, minimum=0)
        if not isinstance(self.store, str) or not (
            self.store == "memory" or self.store.startswith(("redis://", "rediss://"))
        ):
            raise ValueError(f"STORE must be 'memory' or a redis:// URL, got {self.store!r}")
        if not isinstance(self.breakers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Mapping) for k, v in self.breakers.items()
        ):
            raise TypeError(
                "BREAKERS must map breaker names to dicts of CircuitBreaker "
                f"arguments, got {self.breakers!r}"
            )


_SECTIONS: dict[str, type[Any]] = {
    "short_term_queue": QueueSettings,
    "background": BackgroundSettings,
}


class SettingError(ImproperlyConfigured):
    """One bad key of ``PATCHBOARD``; ``key`` is its path, e.g. ``SHORT_TERM_QUEUE.MIN_WORKERS``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f'PATCHBOARD["{key}"]: {problem}' if key else f"PATCHBOARD: {problem}")
        self.key = key
        self.problem = problem


def _build(cls: type[Any], raw: object, path: str) -> tuple[Any, list[SettingError]]:
    """Build ``cls`` from ``raw``; return it (or the default) and every problem found."""
    if not isinstance(raw, Mapping):
        return cls(), [SettingError(path, f"must be a dict, got {raw!r}")]
    known = {f.name for f in dataclasses.fields(cls)}
    errors: list[SettingError] = []
    kwargs: dict[str, Any] = {}
    prefix = f"{path}." if path else ""
    for key, value in raw.items():
        name = key.lower() if isinstance(key, str) else ""
        if name not in known or key != key.upper():
            choices = ", ".join(sorted(n.upper() for n in known))
            errors.append(SettingError(prefix + str(key), f"unknown setting; known: {choices}"))
            continue
        if name in _SECTIONS:
            value, nested = _build(_SECTIONS[name], value, prefix + key)
            errors.extend(nested)
        kwargs[name] = value
    try:
        return cls(**kwargs), errors
    except (TypeError, ValueError) as exc:
        # __post_init__ names the offending key in its message.
        errors.append(SettingError(path, str(exc)))
        return cls(), errors


def parse(raw: object) -> tuple[Settings, list[SettingError]]:
    """Validate a ``PATCHBOARD`` dict: the settings and the list of problems."""
    settings, errors = _build(Settings, raw, "")
    return settings, errors


_cached: Settings | None = None


def get_settings() -> Settings:
    """
    The current settings, parsed once and cached until ``PATCHBOARD`` changes.

    Raises:
        SettingError: if ``PATCHBOARD`` is invalid (the system checks report
            the same problems at start-up).
    """
    global _cached
    if _cached is None:
        from django.conf import settings as django_settings

        raw = getattr(django_settings, "PATCHBOARD", None) or {}
        parsed, errors = parse(raw)
        if errors:
            raise errors[0]
        _cached = parsed
    return _cached


def _reset(*, setting: str, **kwargs: object) -> None:
    global _cached
    if setting == "PATCHBOARD":
        _cached = None


setting_changed.connect(_reset, dispatch_uid="patchboard.conf.reset")
