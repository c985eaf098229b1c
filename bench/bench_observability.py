"""
What metrics and traces cost per listener call: ``collect`` and ``collect_async``
to 10 no-op listeners with nothing on, with the Prometheus metrics on
(``PATCHBOARD["METRICS"]``, one process's registry), with OpenTelemetry on
(``PATCHBOARD["OPENTELEMETRY"]``) and only its API installed as a tracer (no-op
spans), and with OpenTelemetry's SDK recording every span (sampled, handed to an
exporter that drops them). Each configuration is timed in turn within each
round (the settings change between blocks, never inside one); the table gives
the median round in microseconds per dispatch, and the cost per listener call
against nothing on.

Run ``python -m bench.bench_observability [--quick]`` or ``python -m bench``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Any

from bench.bench_dispatch import (
    LISTENERS,
    REPEAT,
    _async_noops,
    _loop_async,
    _loop_sync,
    _sync_noops,
    measure_async,
    measure_sync,
    setup_django,
)

Setup = Callable[[], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextlib.contextmanager
def _metrics() -> Iterator[None]:
    from django.test import override_settings

    from patchboard._config import get_settings
    from patchboard._metrics import install
    from patchboard._state import state

    with override_settings(PATCHBOARD={"METRICS": True}):
        install(get_settings().metrics)
        try:
            yield
        finally:
            state.reset()  # turns the metrics off (and zeroes the counts)


@contextlib.contextmanager
def _opentelemetry() -> Iterator[None]:
    from django.test import override_settings

    with override_settings(PATCHBOARD={"OPENTELEMETRY": True}):
        yield


@contextlib.contextmanager
def _opentelemetry_sdk() -> Iterator[None]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        # The global provider can be set once per process: this case runs last.
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Dropped()))
        trace.set_tracer_provider(provider)
    with _opentelemetry():
        yield


CONFIGURATIONS: dict[str, Setup] = {
    "nothing on": _nothing,
    "Prometheus metrics": _metrics,
    "OpenTelemetry, API only (no-op spans)": _opentelemetry,
}
SDK = "OpenTelemetry SDK, every span recorded"


def _signal(async_listeners: bool) -> Any:
    from patchboard import Signal

    signal = Signal(name=f"bench.observability.{'async' if async_listeners else 'sync'}")
    for func in (_async_noops if async_listeners else _sync_noops)(LISTENERS):
        signal.connect(func, weak=False)
    return signal


def _rounds(setups: dict[str, Setup], repeat: int) -> dict[str, tuple[float, float]]:
    """(sync, async) median microseconds per dispatch, per configuration."""
    sync_signal, async_signal = _signal(False), _signal(True)
    sync_case = _loop_sync(lambda: sync_signal.collect(sender=None))
    async_case = _loop_async(lambda: async_signal.collect_async(sender=None))
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in setups}
    for _ in range(repeat):
        for name, setup in setups.items():
            with setup():
                samples[name][0].append(measure_sync({"": sync_case}, 1)[""][1])
                samples[name][1].append(measure_async({"": async_case}, 1)[""][1])
    return {name: (statistics.median(s), statistics.median(a)) for name, (s, a) in samples.items()}


def main(*, quick: bool = False) -> str:
    """Run every configuration; print and return the markdown."""
    setup_django()
    repeat = 3 if quick else REPEAT
    results = _rounds(CONFIGURATIONS, repeat)
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        pass
    else:
        results.update(_rounds({SDK: _opentelemetry_sdk}, repeat))
    base_sync, base_async = results["nothing on"]
    lines = [
        "## Metrics and traces: the cost per listener call",
        "",
        f"`collect` / `collect_async` to {LISTENERS} no-op listeners, median of {repeat} "
        "rounds, µs per dispatch; the cost per listener call against nothing on.",
        "",
        "| configuration | `collect` µs | per call | `collect_async` µs | per call |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (sync_us, async_us) in results.items():
        lines.append(
            f"| {name} | {sync_us:.2f} | +{(sync_us - base_sync) / LISTENERS:.2f} "
            f"| {async_us:.2f} | +{(async_us - base_async) / LISTENERS:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
