"""
The background feature, as the listener call sees it (``patchboard._features``):
importing this module plugs it in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.dispatch import Signal as DjangoSignal

from patchboard._background._enqueue import check_listener, enqueue_async, enqueue_sync
from patchboard._background._registry import register
from patchboard._call import Call
from patchboard._config import ListenerOptions
from patchboard._features import features
from patchboard._outcomes import Outcome


class _Background:
    """The background feature, as the listener call sees it."""

    def check(self, func: Callable[..., Any], options: ListenerOptions, /) -> None:
        check_listener(func, options)

    def connected(self, listener: Any, signal: DjangoSignal, sender: Any, /) -> None:
        register(listener, signal, sender)

    def enqueue_sync(self, call: Call, /) -> Outcome:
        return enqueue_sync(call)

    async def enqueue_async(self, call: Call, /) -> Outcome:
        return await enqueue_async(call)


features.plug_background(_Background())
