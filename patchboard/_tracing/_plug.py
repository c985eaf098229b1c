"""Plugs tracing into the instrument seam: which instruments the settings enable."""

from __future__ import annotations

from patchboard._config import Settings
from patchboard._instrument import Instrument, instruments
from patchboard._tracing import _otel, _sentry


def opentelemetry(settings: Settings) -> Instrument | None:
    """OpenTelemetry's instrument, when ``PATCHBOARD["OPENTELEMETRY"]`` is True."""
    return _otel.instrument() if settings.opentelemetry else None


def sentry(settings: Settings) -> Instrument | None:
    """Sentry's instrument, when sentry-sdk runs with ``signals_spans`` (its own option)."""
    return _sentry.instrument()


instruments.plug(opentelemetry)
instruments.plug(sentry)
