"""Sentry with an in-memory transport, for the tests that read its spans back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations import Integration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.transport import Transport

from patchboard.testing import reset


class InMemory(Transport):
    """Keeps every envelope instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def spans(self) -> list[dict[str, Any]]:
        sentry_sdk.flush()
        return [
            span
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == "span" and item.payload.json is not None
            for span in item.payload.json["items"]
        ]


@contextlib.contextmanager
def sentry_running(*integrations: Integration) -> Iterator[InMemory]:
    """sentry-sdk running with ``DjangoIntegration(signals_spans=True)`` and ``integrations``."""
    transport = InMemory()
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=transport,
        traces_sample_rate=1.0,
        integrations=[DjangoIntegration(signals_spans=True), *integrations],
        default_integrations=False,
    )
    reset()  # PATCHBOARD is read again at the next dispatch: the instrument is chosen then
    try:
        yield transport
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
        reset()


@pytest.fixture
def sentry() -> Iterator[InMemory]:
    with sentry_running() as transport:
        yield transport
