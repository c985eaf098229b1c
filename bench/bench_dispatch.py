"""
What one dispatch costs: patchboard's verbs against Django's, blinker's and
bare asyncio/anyio, in the same process and the same run.

Overhead cases (1, 2, 4) time a loop of dispatches: each case is warmed up,
then timed in ``REPEAT`` rounds, the cases interleaved within a round so a
slow moment of the machine hits them all; the garbage collector runs before
each timed block and is off inside it. The tables give the best round and the
median round, in microseconds per dispatch, and the ratio of the median round
to Django's own verb's. Case 3 (listeners that sleep) gives wall-clock milliseconds.

Run ``python -m bench`` (all benchmarks) or ``python -m bench.bench_dispatch``
(``--quick`` for a rough run, ``--profile`` for where patchboard's time goes).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from time import perf_counter, perf_counter_ns
from typing import Any

LISTENERS = 10
REPEAT = 7
BLOCK_SECONDS = 0.05
"""Each timed block runs about this long (the loop count is calibrated per case)."""
SLEEP = 0.2


def setup_django() -> None:
    """Configure bare Django settings if nobody did (the benchmarks need no database)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
        django.setup()


# -- listeners -----------------------------------------------------------------------


def _async_noops(count: int) -> list[Callable[..., Any]]:
    def make() -> Callable[..., Any]:
        async def noop(*args: Any, **kwargs: Any) -> None:
            return None

        return noop

    return [make() for _ in range(count)]


def _sync_noops(count: int) -> list[Callable[..., Any]]:
    def make() -> Callable[..., Any]:
        def noop(*args: Any, **kwargs: Any) -> None:
            return None

        return noop

    return [make() for _ in range(count)]


# -- timing --------------------------------------------------------------------------

Case = Callable[[int], Any]
"""Runs ``n`` dispatches (a coroutine function for the async cases)."""


def _loop_async(dispatch: Callable[[], Awaitable[Any]]) -> Case:
    async def run(n: int) -> None:
        for _ in range(n):
            await dispatch()

    return run


def _loop_sync(dispatch: Callable[[], Any]) -> Case:
    def run(n: int) -> None:
        for _ in range(n):
            dispatch()

    return run


Results = dict[str, tuple[float, float]]
"""Per case: (best, median) microseconds per dispatch."""


def _measure(cases: dict[str, Case], call: Callable[[Case, int], Any], repeat: int) -> Results:
    """Per case: (best, median) microseconds per dispatch over ``repeat`` timed blocks."""
    numbers = {}
    for name, case in cases.items():
        call(case, 10)  # Warm-up (and a first check that the case works).
        n, elapsed = 10, 0.0
        while elapsed < BLOCK_SECONDS / 5:
            n *= 2
            started = perf_counter()
            call(case, n)
            elapsed = perf_counter() - started
        numbers[name] = max(10, int(n * BLOCK_SECONDS / elapsed))
    samples: dict[str, list[float]] = {name: [] for name in cases}
    enabled = gc.isenabled()
    try:
        for _ in range(repeat):
            for name, case in cases.items():
                gc.collect()
                gc.disable()
                started_ns = perf_counter_ns()
                call(case, numbers[name])
                elapsed_ns = perf_counter_ns() - started_ns
                gc.enable()
                samples[name].append(elapsed_ns / numbers[name] / 1000)
    finally:
        if enabled:
            gc.enable()
        else:
            gc.disable()
    return {name: (min(s), statistics.median(s)) for name, s in samples.items()}


def measure_async(cases: dict[str, Case], repeat: int) -> Results:
    """Time async cases, all in one event loop."""
    runner = asyncio.Runner()
    try:
        return _measure(cases, lambda case, n: runner.run(case(n)), repeat)
    finally:
        runner.close()


def measure_sync(cases: dict[str, Case], repeat: int) -> Results:
    return _measure(cases, lambda case, n: case(n), repeat)


def _table(title: str, results: Results, baseline: str, note: str = "") -> str:
    base = results[baseline][1]
    lines = [
        f"### {title}",
        "",
        *([note, ""] if note else []),
        "| dispatch | best µs | median µs | vs " + baseline + " (medians) |",
        "|---|---:|---:|---:|",
    ]
    for name, (best, median) in results.items():
        lines.append(f"| {name} | {best:.2f} | {median:.2f} | {median / base:.2f}x |")
    return "\n".join(lines)


def _collect_choice(verb: str, listeners: int) -> tuple[str, dict[str, Any], str]:
    """
    How to call ``verb`` so that it runs ``listeners`` inline: by default, unless
    ``COLLECT_QUEUE_THRESHOLD`` would send them through the short-term queue.
    """
    from patchboard._config import get_settings

    threshold = get_settings().collect_queue_threshold
    if listeners <= threshold:
        return f"patchboard {verb}", {}, ""
    note = (
        f'`{verb}` with `queue=False`: the default `queue="auto"` would send {listeners} '
        f"listeners (> COLLECT_QUEUE_THRESHOLD, {threshold}) through the short-term queue."
    )
    return f"patchboard {verb}(queue=False)", {"queue": False}, note


# -- 1. ten no-op async listeners ------------------------------------------------------


def async_overhead(repeat: int) -> str:
    import anyio
    import blinker
    from django.dispatch import Signal as DjangoSignal

    import patchboard

    funcs = _async_noops(LISTENERS)
    ours, theirs, blinks = patchboard.Signal(), DjangoSignal(), blinker.Signal()
    for func in funcs:
        ours.connect(func)
        theirs.connect(func)
        blinks.connect(func)
    assert len(ours.listeners(None)) == LISTENERS

    async def one_by_one() -> None:
        for func in funcs:
            await func(signal=None, sender=None)

    async def task_group() -> None:
        async with asyncio.TaskGroup() as tg:
            for func in funcs:
                tg.create_task(func(signal=None, sender=None))

    async def eager_tasks() -> None:
        loop = asyncio.get_running_loop()
        tasks = [
            asyncio.Task(func(signal=None, sender=None), loop=loop, eager_start=True)
            for func in funcs
        ]
        for task in tasks:
            await task

    async def anyio_group() -> None:
        async with anyio.create_task_group() as tg:
            for func in funcs:
                tg.start_soon(partial(func, signal=None, sender=None))

    collect, options, note = _collect_choice("collect_async", LISTENERS)
    django_asend = "Django asend"
    cases = {
        django_asend: _loop_async(lambda: theirs.asend(None)),
        collect: _loop_async(partial(ours.collect_async, None, **options)),
        "patchboard send_async": _loop_async(lambda: ours.send_async(None)),
        "patchboard asend (Django's verb)": _loop_async(lambda: ours.asend(None)),
        "blinker send_async (sequential)": _loop_async(lambda: blinks.send_async(None)),
        "ref: await each coroutine in turn": _loop_async(one_by_one),
        "ref: asyncio.TaskGroup": _loop_async(task_group),
        "ref: eagerly started tasks, awaited": _loop_async(eager_tasks),
        "ref: anyio task group": _loop_async(anyio_group),
    }
    results = measure_async(cases, repeat)
    return _table(
        f"1. One signal, {LISTENERS} no-op async listeners",
        results,
        django_asend,
        note,
    )


# -- 2. ten no-op sync listeners ---------------------------------------------------------


def sync_overhead(repeat: int) -> str:
    import blinker
    from django.dispatch import Signal as DjangoSignal

    import patchboard

    funcs = _sync_noops(LISTENERS)
    ours, theirs, blinks = patchboard.Signal(), DjangoSignal(), blinker.Signal()
    for func in funcs:
        ours.connect(func)
        theirs.connect(func)
        blinks.connect(func)

    def one_by_one() -> None:
        for func in funcs:
            func(signal=None, sender=None)

    collect, options, note = _collect_choice("collect", LISTENERS)
    # A collect's outcomes are built when first read: the rows after the verb's own
    # read them, as a caller would (Django's send returns its pairs built).
    read = (
        "The sync verbs build a call's `Outcome` only when it is first read: the "
        "`.values()` and `list(...)` rows read the result, as a caller would."
    )
    note = f"{note} {read}" if note else read
    django_send = "Django send"
    cases = {
        django_send: _loop_sync(lambda: theirs.send(None)),
        collect: _loop_sync(partial(ours.collect, None, **options)),
        f"{collect}, then `.values()`": _loop_sync(lambda: ours.collect(None, **options).values()),
        f"{collect}, then `list(...)`": _loop_sync(lambda: list(ours.collect(None, **options))),
        "patchboard send_sync": _loop_sync(lambda: ours.send_sync(None)),
        "patchboard send (Django's verb)": _loop_sync(lambda: ours.send(None)),
        "blinker send": _loop_sync(lambda: blinks.send(None)),
        "ref: call each function in turn": _loop_sync(one_by_one),
    }
    return _table(
        f"2. One signal, {LISTENERS} no-op sync listeners (sync verbs)",
        measure_sync(cases, repeat),
        django_send,
        note,
    )


# -- 3. four listeners that sleep 200 ms ------------------------------------------------


def sleeping_listeners(repeat: int) -> str:
    from django.dispatch import Signal as DjangoSignal

    import patchboard

    def make_sync() -> Callable[..., Any]:
        def sleeper(*args: Any, **kwargs: Any) -> None:
            time.sleep(SLEEP)

        return sleeper

    def make_async() -> Callable[..., Any]:
        async def sleeper(*args: Any, **kwargs: Any) -> None:
            await asyncio.sleep(SLEEP)

        return sleeper

    sync_funcs = [make_sync(), make_sync()]
    async_funcs = [make_async(), make_async()]
    theirs, ours, ours_unbound = DjangoSignal(), patchboard.Signal(), patchboard.Signal()
    for func in [*sync_funcs, *async_funcs]:
        theirs.connect(func)
        ours.connect(func)
    for func in sync_funcs:
        ours_unbound.connect(func, thread_sensitive=False)
    for func in async_funcs:
        ours_unbound.connect(func)

    variants: list[tuple[str, Callable[[], Awaitable[Any]], str]] = [
        ("Django asend", lambda: theirs.asend(None), "~600: sync batch, then async"),
        (
            "patchboard collect_async",
            lambda: ours.collect_async(None),
            "~400: sync batch in one hop, concurrent with async",
        ),
        (
            "patchboard collect_async, sync listeners `thread_sensitive=False`",
            lambda: ours_unbound.collect_async(None),
            "~200: a worker thread each",
        ),
    ]

    async def timed(dispatch: Callable[[], Awaitable[Any]]) -> float:
        started = perf_counter()
        await dispatch()
        return (perf_counter() - started) * 1000

    async def run_all() -> list[list[float]]:
        await timed(variants[-1][1])  # Warm-up: starts the worker threads.
        samples: list[list[float]] = [[] for _ in variants]
        for _ in range(repeat):
            for index, (_, dispatch, _) in enumerate(variants):
                samples[index].append(await timed(dispatch))
        return samples

    samples = asyncio.run(run_all())
    lines = [
        "### 3. Two sync listeners (`time.sleep(0.2)`) and two async (`asyncio.sleep(0.2)`)",
        "",
        "| dispatch | best ms | median ms | expected ms |",
        "|---|---:|---:|---|",
    ]
    for (name, _, expected), times in zip(variants, samples, strict=True):
        lines.append(f"| {name} | {min(times):.0f} | {statistics.median(times):.0f} | {expected} |")
    return "\n".join(lines)


# -- 4. the cost of listener options ---------------------------------------------------


def option_costs(repeat: int) -> str:
    import patchboard

    variants: dict[str, dict[str, Any]] = {
        "plain": {},
        "on_error='log'": {"on_error": "log"},
        "timeout=5": {"timeout": 5.0},
        "timeout=5, on_error='log'": {"timeout": 5.0, "on_error": "log"},
    }
    _, collect_options, _ = _collect_choice("collect", 1)
    keep: list[Any] = []
    async_cases: dict[str, Case] = {}
    sync_cases: dict[str, Case] = {}
    for label, options in variants.items():
        for is_async, cases in ((True, async_cases), (False, sync_cases)):
            signal = patchboard.Signal()
            (func,) = _async_noops(1) if is_async else _sync_noops(1)
            signal.connect(func, **options)
            keep.append(func)
            if is_async:
                cases[label] = _loop_async(partial(signal.collect_async, None, **collect_options))
            else:
                cases[label] = _loop_sync(partial(signal.collect, None, **collect_options))
    async_results = measure_async(async_cases, repeat)
    sync_results = measure_sync(sync_cases, repeat)
    lines = [
        "### 4. One listener: the cost of options (`collect_async` / `collect`)",
        "",
        "A sync listener with a `timeout` leaves the calling thread: `collect` runs it in a "
        "listener thread and waits for it there, without an event loop.",
        "",
        "Medians, µs per dispatch.",
        "",
        "| listener options | async listener, µs | Δ plain | sync listener, µs | Δ plain |",
        "|---|---:|---:|---:|---:|",
    ]
    async_plain, sync_plain = async_results["plain"][1], sync_results["plain"][1]
    for label in variants:
        a, s = async_results[label][1], sync_results[label][1]
        lines.append(
            f"| {label} | {a:.2f} | {a - async_plain:+.2f} | {s:.2f} | {s - sync_plain:+.2f} |"
        )
    del keep
    return "\n".join(lines)


# -- profiling -------------------------------------------------------------------------


def profile(dispatches: int = 20_000) -> None:
    """Print where ``collect_async`` spends its time (case 1): pyinstrument, then cProfile."""
    import cProfile
    import pstats

    import patchboard

    setup_django()
    funcs = _async_noops(LISTENERS)
    signal = patchboard.Signal()
    for func in funcs:
        signal.connect(func)
    _, options, _ = _collect_choice("collect_async", LISTENERS)
    run = _loop_async(partial(signal.collect_async, None, **options))

    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: skipped")
    else:
        profiler = Profiler(interval=0.0001, async_mode="disabled")
        with asyncio.Runner() as runner:
            runner.run(run(1000))
            profiler.start()
            runner.run(run(dispatches))
            profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False))

    with asyncio.Runner() as runner:
        runner.run(run(1000))
        prof = cProfile.Profile()
        prof.enable()
        runner.run(run(dispatches))
        prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(25)


# -- the cost of the swap (a drop-in must cost nothing where nothing is used) ------------

_MODEL_CHILD = """
import sys, time
swap = sys.argv[1] == "swap"
import django, django.dispatch, django.dispatch.dispatcher
if swap:
    import patchboard
    django.dispatch.Signal = django.dispatch.dispatcher.Signal = patchboard.Signal
from django.conf import settings
settings.configure(INSTALLED_APPS=["django.contrib.contenttypes"], DATABASES={})
django.setup()
from django.contrib.contenttypes.models import ContentType
from django.db.models.signals import post_init, pre_init
assert (type(pre_init).__mro__[1].__module__ == "patchboard._signals") == swap
n, best = 20000, float("inf")
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    for _ in range(n):
        ContentType(app_label="a", model="b")
    best = min(best, (time.perf_counter() - started) / n)
print(best * 1e6)
"""


def swap_costs(repeat: int) -> str:
    """What swapping patchboard.Signal in costs a project that uses nothing of it."""
    import subprocess

    import django.dispatch

    import patchboard

    def model_instantiation(mode: str) -> float:
        done = subprocess.run(
            [sys.executable, "-c", _MODEL_CHILD, mode, str(repeat)],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(done.stdout.strip())

    runs: dict[str, list[float]] = {"baseline": [], "swap": []}
    for _ in range(3):  # interleaved: a slow moment of the machine hits both
        for mode in runs:
            runs[mode].append(model_instantiation(mode))
    django_signal, patchboard_signal = django.dispatch.Signal(), patchboard.Signal()

    def receiver(sender: Any, **kwargs: Any) -> None:
        return None

    def connect_disconnect(signal: Any) -> Case:
        def run(n: int) -> None:
            for _ in range(n):
                signal.connect(receiver)
                signal.disconnect(receiver)

        return run

    cases: dict[str, Case] = {
        "Django send(), no receivers": _loop_sync(partial(django_signal.send, None)),
        "patchboard send(), no receivers": _loop_sync(partial(patchboard_signal.send, None)),
        "Django connect() + disconnect()": connect_disconnect(django_signal),
        "patchboard connect() + disconnect()": connect_disconnect(patchboard_signal),
    }
    results = measure_sync(cases, repeat)
    rows = [
        (
            "send(), no receivers",
            results["Django send(), no receivers"],
            results["patchboard send(), no receivers"],
            "≤ 1.05x",
        ),
        (
            "connect() + disconnect()",
            results["Django connect() + disconnect()"],
            results["patchboard connect() + disconnect()"],
            "≤ 1.5x",
        ),
        (
            "a model instantiation (pre_init, post_init)",
            (min(runs["baseline"]), statistics.median(runs["baseline"])),
            (min(runs["swap"]), statistics.median(runs["swap"])),
            "≤ 1.05x",
        ),
    ]
    lines = [
        "### 5. The cost of the swap, where nothing of patchboard is used",
        "",
        "`django.dispatch.Signal` replaced by `patchboard.Signal` (as Django's own suites run "
        "in `make test`): every Django signal, model signals included, is then a patchboard "
        "signal. Model instantiation is timed in child processes, with and without the swap, "
        "three of each, interleaved. Medians.",
        "",
        "| operation | Django µs | patchboard µs | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    for name, (_, theirs), (_, ours), target in rows:
        lines.append(f"| {name} | {theirs:.2f} | {ours:.2f} | {ours / theirs:.2f}x | {target} |")
    return "\n".join(lines)


# -- entry point -------------------------------------------------------------------------


def main(*, quick: bool = False) -> str:
    """Run every case; print and return the markdown."""
    setup_django()
    repeat = 3 if quick else REPEAT
    header = (
        f"## Dispatch overhead\n\n"
        f"Python {sys.version.split()[0]}, Django {_version('django')}, "
        f"asgiref {_version('asgiref')}, anyio {_version('anyio')}, "
        f"blinker {_version('blinker')}; best and median of {repeat} rounds."
    )
    sections = [header]
    print(header, flush=True)
    for section in (async_overhead, sync_overhead, sleeping_listeners, option_costs, swap_costs):
        text = section(1 if quick and section is sleeping_listeners else repeat)
        print(f"\n{text}", flush=True)
        sections.append(text)
    return "\n\n".join(sections) + "\n"


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


if __name__ == "__main__":
    if "--profile" in sys.argv:
        profile()
    else:
        main(quick="--quick" in sys.argv)
