"""
The seam where features plug into a listener call.

The core (the listener call, dispatch, the queue, ``Signal``) knows two
features only by what they do for a call, never by their modules:

* a **circuit breaker** guards a call: :class:`BreakerFeature` turns a
  listener's ``breaker=`` option (a name or a breaker) into a
  :class:`~patchboard._config.Guard`, an (async) context manager;
* a **background runner** enqueues a call instead of running it:
  :class:`BackgroundFeature` checks a listener at connect time, records it
  for the worker, and enqueues one call.

Each feature's package registers itself here when it is imported
(``patchboard/__init__.py`` imports both), so every import points down: the
features import the core, the core imports this seam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured

from patchboard._config import Guard, ListenerOptions
from patchboard._exceptions import CircuitOpen
from patchboard._outcomes import Outcome

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal


class BreakerFeature(Protocol):
    def resolve(self, breaker: str | Guard, /) -> Guard:
        """
        The breaker a listener's ``breaker=`` option names.

        Raises:
            ImproperlyConfigured: no breaker has that name.
        """
        ...

    def refusal(self, guard: Guard, /) -> CircuitOpen | None:
        """
        The ``CircuitOpen`` entering ``guard`` would raise now, when it can
        tell without I/O (counted as a rejected call); None when the call may
        go through, or ``guard`` is not one of patchboard's breakers.
        """
        ...


class BackgroundFeature(Protocol):
    def check(self, func: Callable[..., Any], options: ListenerOptions, /) -> None:
        """
        Validate a listener connected with ``mode="background"``.

        Raises:
            TypeError, ValueError, ImproperlyConfigured: it cannot run in a worker.
        """
        ...

    def connected(self, listener: Any, signal: DjangoSignal, sender: Any, /) -> None:
        """
        Record that ``listener`` is connected to ``signal`` for ``sender`` (None:
        any sender), so a worker may run it.
        """
        ...

    def enqueue_sync(self, call: Any, /) -> Outcome:
        """Enqueue one call (its ``"enqueued"`` outcome, or its error's)."""
        ...

    async def enqueue_async(self, call: Any, /) -> Outcome:
        """The async twin of :meth:`enqueue_sync`."""
        ...


class Features:
    """The features plugged in; each is set once, when its package is imported."""

    __slots__ = ("_background", "_breakers")

    def __init__(self) -> None:
        self._breakers: BreakerFeature | None = None
        self._background: BackgroundFeature | None = None

    def plug_breakers(self, feature: BreakerFeature) -> None:
        self._breakers = feature

    def plug_background(self, feature: BackgroundFeature) -> None:
        self._background = feature

    @property
    def breakers(self) -> BreakerFeature:
        if self._breakers is None:
            raise ImproperlyConfigured("patchboard's circuit breakers are not loaded")
        return self._breakers

    @property
    def background(self) -> BackgroundFeature:
        if self._background is None:
            raise ImproperlyConfigured("patchboard's background listeners are not loaded")
        return self._background


features = Features()
"""The seam itself: ``features.breakers`` and ``features.background``."""
