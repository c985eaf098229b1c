"""
Tracing: a span per dispatch and per listener call, for OpenTelemetry and Sentry.

The package: :mod:`._otel` (``PATCHBOARD["OPENTELEMETRY"]``) and
:mod:`._sentry` (sentry-sdk's ``DjangoIntegration(signals_spans=True)``)
build instruments for the seam (``patchboard._instrument``); :mod:`._plug`
plugs their chooser in when imported (``patchboard/__init__.py`` imports
it). Neither library is imported unless it is installed and enabled.
"""
