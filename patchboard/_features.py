"""
The seam where the background feature plugs into a listener call.

The core (the listener call, dispatch, the queue, ``Signal``) knows the
background runner only by what it does for a call, never by its modules:
:class:`BackgroundFeature` checks a listener at connect time, records it for
the worker, and enqueues one call instead of running it. Its package sits
above the core (it runs listeners through the core's own call) and registers
itself here when ``patchboard._background._feature`` is imported
(``patchboard/__init__.py`` imports it), so every import points down.

(Circuit breakers need no seam: ``patchboard._breaker`` sits under the
listener call, which imports it.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured

from patchboard._config import ListenerOptions
from patchboard._outcomes import Outcome

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal


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

    __slots__ = ("_background",)

    def __init__(self) -> None:
        self._background: BackgroundFeature | None = None

    def plug_background(self, feature: BackgroundFeature) -> None:
        self._background = feature

    @property
    def background(self) -> BackgroundFeature:
        if self._background is None:
            raise ImproperlyConfigured("patchboard's background listeners are not loaded")
        return self._background


features = Features()
"""The seam itself: ``features.background``."""
