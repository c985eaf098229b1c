"""
A dispatch, where each of its listener calls runs, and running one call.

:class:`Dispatch` is what one verb call builds, once: the signal, the
sender and the keyword arguments, the resolved listeners, the deadline, the
short-term queue (or None) and whether the signal is ordered. Everything
under the verb takes it, never the pieces.

The placement rule, :func:`place`, decides where a listener's call runs
(see :class:`Place`); each listener learns its two answers (with and
without a deadline) once, when it is built, and the short-term queue, when a
dispatch uses it, takes every call but a background one
(:func:`placement`). Every verb reads it: patchboard's, ``stream_async``,
and Django's on a patchboard signal or listener.

Every listener call runs in its own copy of the caller's context, whatever
the verb: the listener sees the caller's context variables, and what it sets
is seen neither by its siblings nor by the caller afterwards. A task gets
its copy from asyncio, a listener thread from ``_threads``; a call made
right here (in the caller's thread or task) gets it from :func:`run_here`
and :class:`InOwnContext`. (The rule matters beyond tidiness: a circuit
breaker keeps each entry on a contextvar stack, and two calls sharing a
context would look like one nested in the other.)
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import TYPE_CHECKING, Any, Final

from patchboard import _clock
from patchboard._call import Call
from patchboard._features import features
from patchboard._instrument import Instrument, Span, instruments
from patchboard._ledger import ledger
from patchboard._outcomes import Outcome, new_outcome, ok_outcome
from patchboard._source import compiled, spellable

if TYPE_CHECKING:
    from django.dispatch import Signal as DjangoSignal

    from patchboard._listeners import Listener
    from patchboard._queue import ShortTermQueue


class Place(enum.Enum):
    """Where one listener call runs."""

    CALLER = "caller"
    """In the dispatching thread: a sync caller's own, or for an async caller the
    thread-sensitive thread, where the dispatch's ``CALLER`` calls go together in
    one hop, in priority order."""
    BACKGROUND = "background"
    """Enqueued as a task where ``CALLER`` calls run: a sync caller's enqueue sees its
    transaction."""
    THREAD = "thread"
    """A sync call in a listener thread of its own, which a time limit can abandon: a
    sync caller starts it and waits for it without an event loop."""
    TASK = "task"
    """A call that needs an event loop (an async listener; a sync one in a listener
    thread under a breaker): its own task, or awaited in turn on an ordered signal."""
    QUEUE = "queue"
    """Through the short-term queue (its own task)."""


CALLER: Final = Place.CALLER
BACKGROUND: Final = Place.BACKGROUND
THREAD: Final = Place.THREAD
TASK: Final = Place.TASK
QUEUE: Final = Place.QUEUE

HERE: Final = frozenset({CALLER, BACKGROUND})
"""The places that run in the dispatching thread (or the thread-sensitive batch)."""
LOOPLESS: Final = frozenset({CALLER, BACKGROUND, THREAD})
"""The places a sync caller reaches without an event loop."""


def place(listener: Listener, *, budgeted: bool) -> Place:
    """
    The placement rule: where ``listener``'s call runs, in a dispatch with a
    deadline (``budgeted``) or without, when it does not use the short-term
    queue (see :func:`placement`).

    A background listener enqueues where the caller runs. An async listener
    needs the event loop. A plain sync listener (no ``timeout``,
    ``thread_sensitive``) runs in the caller's thread, unless the dispatch has
    a deadline, which a thread that cannot be interrupted could not keep;
    every other sync listener runs in a listener thread, reached without an
    event loop unless a breaker guards it.
    """
    options = listener.options
    if options.mode == "background":
        return BACKGROUND
    if listener.is_async:
        return TASK
    if options.timeout is None and options.thread_sensitive and not budgeted:
        return CALLER
    return THREAD if options.breaker is None else TASK


def placement(listener: Listener, budgeted: bool, queued: bool) -> Place:
    """Where ``listener``'s call runs in a dispatch: :func:`place`, or ``QUEUE`` if ``queued``."""
    found = listener.places[budgeted]
    return QUEUE if queued and found is not BACKGROUND else found


class Resolved:
    """
    The live listeners of one sender, as a signal resolved them from its
    receivers list (and caches them), with what their places say about a
    dispatch to them all.
    """

    __slots__ = (
        "batch",
        "count",
        "here",
        "listeners",
        "loopless",
        "own_tasks",
        "plain_refs",
        "receivers",
        "version",
    )

    def __init__(self, receivers: list[Any], version: int, listeners: list[Listener]) -> None:
        self.receivers = receivers
        self.count = len(receivers)
        self.version = version
        self.listeners = listeners
        self.here = all(listener.places[False] in HERE for listener in listeners)
        """Whether a sync caller runs them all in its thread (without a deadline)."""
        self.plain_refs = (
            tuple(listener.ref for listener in listeners)
            if self.here and all(listener.direct for listener in listeners)
            else None
        )
        """Their functions' references, when a sync caller calls each function
        itself (``_dispatch.dispatch_plain``), or None."""
        self.loopless = tuple(
            all(listener.places[budgeted] in LOOPLESS for listener in listeners)
            for budgeted in (False, True)
        )
        """Whether a sync caller reaches them all without an event loop, without a
        deadline and with one."""
        self.batch = tuple(
            tuple(i for i, listener in enumerate(listeners) if listener.places[budgeted] in HERE)
            for budgeted in (False, True)
        )
        """The indexes of the listeners an async caller runs in the thread-sensitive
        batch, without a deadline and with one."""
        self.own_tasks = all(
            listener.direct_async and listener.options.fallback is None for listener in listeners
        )
        """Whether, without a deadline or a queue, each listener's own coroutine can be its
        task (``_dispatch.run_plain``): plain async listeners, no fallback to await."""


_NOBODY: Final = Resolved([], 0, [])


Apply = Callable[[Callable[..., Any], Any], Any]
"""``apply(func, arguments)``: calls a listener's function with a dispatch's
arguments (see :func:`applier`)."""

_APPLIERS: dict[tuple[str, ...], Apply] = {}
"""The apply function of each set of keyword names seen (see :func:`applier`)."""
_APPLIERS_KEPT: Final = 256


def applier(signal: Any, sender: Any, kwargs: dict[str, Any]) -> tuple[Apply, Any]:
    """
    How a dispatch calls each listener's function with ``signal=signal,
    sender=sender, **kwargs``: ``(apply, arguments)``, for ``apply(func, arguments)``.

    ``apply`` is compiled once per set of keyword names and names every
    keyword in its code (``func(signal=a[0], sender=a[1], instance=a[2])``),
    with the values in the tuple ``arguments``: a call spelled that way costs
    about half of one that unpacks a dict (``func(**arguments)`` builds the
    keyword names again at every call), per listener. Names that cannot be
    spelled so (not identifiers, identifiers the compiler would normalize,
    or ``signal``/``sender`` again) are unpacked from a dict.
    """
    if not kwargs:
        return _apply_none, (signal, sender)
    names = tuple(kwargs)
    apply = _APPLIERS.get(names)
    if apply is None:
        spelled = all(spellable(name) for name in names)
        if not spelled or "signal" in kwargs or "sender" in kwargs:
            return _apply_dict, {"signal": signal, "sender": sender, **kwargs}
        apply = _compile_apply(names)
        if len(_APPLIERS) >= _APPLIERS_KEPT:
            _APPLIERS.clear()  # names come from code, so they are few; but stay bounded
        _APPLIERS[names] = apply
    return apply, (signal, sender, *kwargs.values())


def _apply_none(func: Callable[..., Any], a: tuple[Any, Any]) -> Any:
    return func(signal=a[0], sender=a[1])


def _apply_dict(func: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    return func(**arguments)


def _compile_apply(names: tuple[str, ...]) -> Apply:
    # Only spellable names reach the source (see applier).
    keywords = "".join(f", {name}=a[{i}]" for i, name in enumerate(names, start=2))
    source = f"def apply(func, a):\n    return func(signal=a[0], sender=a[1]{keywords})\n"
    apply: Apply = compiled(source, "apply")
    return apply


class Dispatch:
    """
    One call of a verb (see the module docstring). ``resolved`` are the
    listeners it calls, as the signal resolved them; ``queue`` is the
    short-term queue it uses, or None; ``deadline`` the seconds it was given
    (None: the inherited deadline, if any, applies); ``budgeted`` whether a
    deadline is in force, set when the engine starts running it (a
    listener's fast path is taken only without one). ``traced`` is the
    instrument that opens its spans, read once as it is built
    (``patchboard._instrument``: None, the common case, and every fast path
    is open), ``span`` its own span once the engine opened it.
    """

    __slots__ = (
        "apply",
        "arguments",
        "budgeted",
        "deadline",
        "grouped",
        "kwargs",
        "listeners",
        "ordered",
        "queue",
        "resolved",
        "sender",
        "signal",
        "span",
        "stopped",
        "traced",
    )

    apply: Apply
    arguments: Any

    def __init__(
        self,
        signal: DjangoSignal,
        sender: Any,
        kwargs: dict[str, Any],
        listeners: Sequence[Listener],
        resolved: Resolved = _NOBODY,
        deadline: float | None = None,
        queue: ShortTermQueue | None = None,
        ordered: bool = False,
    ) -> None:
        self.signal = signal
        self.sender = sender
        self.kwargs = kwargs
        # applier's answer, without the call where it knows the names (the hot path's case)
        if not kwargs:
            self.apply, self.arguments = _apply_none, (signal, sender)
        elif (apply := _APPLIERS.get(tuple(kwargs))) is not None:
            self.apply, self.arguments = apply, (signal, sender, *kwargs.values())
        else:
            self.apply, self.arguments = applier(signal, sender, kwargs)
        """What each listener is called with, ``apply(func, arguments)``: built once, not
        per listener."""
        self.listeners = listeners
        self.resolved = resolved
        self.deadline = deadline
        self.queue = queue
        self.ordered = ordered
        self.budgeted = False
        self.stopped: bool | None = None
        """Whether an outcome must propagate, when the runner knows (None: ``finish``
        looks at every outcome)."""
        self.grouped = False
        """Whether a call's error joins the group raised at the end (``on_error="group"``):
        set by the call as it is settled, so a dispatch without one looks at nothing."""
        self.traced: Instrument | None = instruments.active
        self.span: Span | None = None

    def __repr__(self) -> str:
        return f"<Dispatch of {len(self.listeners)} listeners>"

    def call(self, listener: Listener, started: float | None = None) -> Call:
        """The :class:`~patchboard._call.Call` of ``listener`` in this dispatch."""
        return Call(listener, self.signal, self.sender, self.kwargs, started, self.traced, self)

    def cancelled(self, listeners: Sequence[Listener]) -> None:
        """Count the calls of ``listeners``, which this dispatch never started, as cancelled."""
        if not listeners:
            return
        if self.traced is None:
            ledger.cancelled(listeners, self.signal, self.sender)
        else:  # through each call's door, which gives it a span too
            for listener in listeners:
                self.call(listener).ended("cancelled", None)


class InOwnContext[T]:
    """
    Await a coroutine in its own copy of the current context, in the
    awaiting task: what it sets stays in the copy.

    What a task spawned for it would give (``asyncio.Task(coro,
    context=copy_context())``), without the task: every step of the
    coroutine runs through ``Context.run`` (about 0.1 us each), and the
    coroutine stays part of the awaiting task, so its cancellation, its
    ``current_task()`` and its anyio cancel scopes are the caller's.
    """

    __slots__ = ("_coro",)

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        run = contextvars.copy_context().run
        try:
            step = run(coro.send, None)
            while True:
                try:
                    sent = yield step
                except GeneratorExit:
                    run(coro.close)
                    raise
                except BaseException as exc:
                    step = run(coro.throw, exc)
                else:
                    step = run(coro.send, sent)
        except StopIteration as returned:
            value: T = returned.value  # StopIteration.value is Any: the coroutine's T
            return value


# -- running one call ------------------------------------------------------------------


async def run_async(listener: Listener, dispatch: Dispatch) -> Outcome:
    """
    Call ``listener`` once from async code, in the awaiting task; its outcome
    (see ``Call.run_async``). A background listener enqueues its call.
    """
    if not listener.direct_async or dispatch.budgeted or dispatch.traced is not None:
        call = dispatch.call(listener)
        if listener.options.mode == "background":
            return await features.background.enqueue_async(call)
        return await call.run_async()
    # The fast path: an async listener with nothing to apply but its error policy.
    now = _clock.now
    started = now()
    func = listener.ref()
    if func is None:
        return dispatch.call(listener, started).gone()
    try:
        value = await dispatch.apply(func, dispatch.arguments)
    except BaseException as exc:
        return await dispatch.call(listener, started).failed_async(exc)
    elapsed = now() - started
    if ledger.observers:
        ledger.ended("ok", listener.label, dispatch.signal, dispatch.sender, elapsed)
    else:
        ledger.ok_one()
    return ok_outcome(func, value, elapsed)


def run_sync(listener: Listener, dispatch: Dispatch) -> Outcome:
    """
    Call a listener placed ``CALLER`` or ``BACKGROUND`` once, in the calling
    thread; its outcome (see :func:`run_here`).
    """
    if listener.direct and dispatch.traced is None:
        return run_here((listener,), dispatch)[0]
    call = dispatch.call(listener)
    if listener.options.mode == "background":
        # In the calling thread: the enqueue sees the caller's transaction.
        return features.background.enqueue_sync(call)
    return call.run_sync()


def run_here(listeners: Sequence[Listener], dispatch: Dispatch) -> list[Outcome]:
    """
    Run listeners placed ``CALLER`` or ``BACKGROUND`` one after another in the
    calling thread; their outcomes.

    Stops after an outcome that must propagate: the listeners after it are
    not called (they count as ``"cancelled"``), as Django's ``send()`` stops
    at an exception. A plain listener is called right here, the others
    through their ``Call``; each in its own copy of the caller's context.
    (The sync twins' hot path: one clock reading, one context copy and one
    small frame per listener, the successes counted once.) A traced
    dispatch takes :func:`_run_calls` instead.
    """
    if dispatch.traced is not None:
        return _run_calls(listeners, dispatch)
    outcomes: list[Outcome] = []
    append = outcomes.append
    settled = 0  # outcomes settled through their Call: they counted themselves
    observed = bool(ledger.observers)
    copy_context = contextvars.copy_context
    apply, arguments = dispatch.apply, dispatch.arguments
    now = _clock.now
    started = now()
    try:
        for listener in listeners:
            if not listener.direct:
                outcome = copy_context().run(run_sync, listener, dispatch)
            elif (func := listener.ref()) is None:
                outcome = dispatch.call(listener, started).gone()
            else:
                try:
                    value = copy_context().run(apply, func, arguments)
                except BaseException as exc:
                    outcome = dispatch.call(listener, started).failed_sync(exc)
                else:
                    ended = now()
                    # ok_outcome(func, value, elapsed), inlined: a frame less per listener.
                    ok = (func, "ok", value, None, ended - started, None, False, 1, False)
                    append(new_outcome(Outcome, ok))
                    if observed:  # else counted at the end, with the others that returned
                        signal, sender = dispatch.signal, dispatch.sender
                        ledger.ended("ok", listener.label, signal, sender, ended - started)
                    started = ended
                    continue
            append(outcome)
            settled += 1
            if outcome.propagate:
                break
            started = now()
    except BaseException:
        # The listener running counted its own cancellation; the ones after it never ran.
        dispatch.cancelled(listeners[len(outcomes) + 1 :])
        raise
    else:
        if len(outcomes) < len(listeners):  # after one that propagates
            dispatch.cancelled(listeners[len(outcomes) :])
    finally:
        if not observed and (returned := len(outcomes) - settled):
            ledger.ok_batch(("ok", returned))
    return outcomes


def _run_calls(listeners: Sequence[Listener], dispatch: Dispatch) -> list[Outcome]:
    """
    :func:`run_here` for a traced dispatch: every call through its ``Call``
    (:func:`run_sync`), which opens its span as it starts; the same stops
    and counts.
    """
    outcomes: list[Outcome] = []
    try:
        for listener in listeners:
            outcome = contextvars.copy_context().run(run_sync, listener, dispatch)
            outcomes.append(outcome)
            if outcome.propagate:
                break
    except BaseException:
        # The listener running counted its own cancellation; the ones after it never ran.
        dispatch.cancelled(listeners[len(outcomes) + 1 :])
        raise
    dispatch.cancelled(listeners[len(outcomes) :])
    return outcomes
