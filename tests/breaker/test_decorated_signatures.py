"""
A decorated function keeps its signature: the breaker's guard has the function's
own parameters (so that a call passes them on by name), and every call, on the
fast path or off it, reaches the function exactly as a call of the function
itself would, or fails binding with the same error.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from patchboard import CircuitBreaker

NAMES = ("a", "b", "c", "fn", "args", "kwargs", "hasattr", "type", "next", "self", "_pb_fn")
"""Parameter names: plain ones, the guard's words, and one of its own (its reserved prefix)."""


@dataclass(frozen=True)
class Shape:
    positional_only: tuple[str, ...]
    positional: tuple[str, ...]
    defaults: int
    varargs: bool
    keyword_only: tuple[tuple[str, bool], ...]
    """Each keyword-only parameter, and whether it has a default."""
    varkw: bool

    def source(self, prefix: str) -> str:
        positional = [*self.positional_only, *self.positional]
        first_default = len(positional) - self.defaults
        params = [
            name if i < first_default else f"{name}=[{i}]" for i, name in enumerate(positional)
        ]
        if self.positional_only:
            params.insert(len(self.positional_only), "/")
        if self.varargs:
            params.append("*rest")
        elif self.keyword_only:
            params.append("*")
        params += [f"{name}=[{name!r}]" if default else name for name, default in self.keyword_only]
        if self.varkw:
            params.append("**extra")
        # The function returns what it was given, by name (the defaults are lists,
        # so the same default object must arrive, not a copy).
        names = [*positional, *(name for name, _ in self.keyword_only)]
        names += ["rest"] if self.varargs else []
        names += ["extra"] if self.varkw else []
        got = ", ".join(f"{name!r}: {name}" for name in names)
        return f"{prefix}def f({', '.join(params)}):\n    return {{{got}}}\n"


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=6))
    cut = sorted(draw(st.lists(st.integers(0, len(names)), min_size=2, max_size=2)))
    positional_only, positional = tuple(names[: cut[0]]), tuple(names[cut[0] : cut[1]])
    keyword_only = tuple((name, draw(st.booleans())) for name in names[cut[1] :])
    defaults = draw(st.integers(0, len(positional_only) + len(positional)))
    return Shape(
        positional_only,
        positional,
        defaults,
        draw(st.booleans()),
        keyword_only,
        draw(st.booleans()),
    )


@st.composite
def calls(draw: st.DrawFn) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args = tuple(range(draw(st.integers(0, 5))))
    names = draw(st.lists(st.sampled_from((*NAMES, "z")), unique=True, max_size=4))
    return args, {name: f"kw-{name}" for name in names}


def define(shape: Shape, *, is_async: bool) -> Callable[..., Any]:
    scope: dict[str, Any] = {}
    exec(shape.source("async " if is_async else ""), scope)
    return scope["f"]


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "returned", call()
    except TypeError as error:
        return "raised", str(error)


def sync_outcome(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
    return outcome(lambda: func(*args, **kwargs))


def async_outcome(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
    return outcome(lambda: asyncio.run(func(*args, **kwargs)))


def new_breaker() -> CircuitBreaker:
    return CircuitBreaker(f"signatures-{uuid.uuid4().hex[:8]}", store="memory")


EVERY_KIND = Shape(("a",), ("b",), 1, True, (("c", False), ("d", True)), True)
"""One parameter of each kind, for the examples every run tries."""


@given(shapes(), calls())
@example(EVERY_KIND, ((1, 2, 3), {"c": 4, "z": 5}))
def test_a_decorated_function_is_called_as_itself(shape: Shape, call) -> None:
    func = define(shape, is_async=False)
    breaker = new_breaker()
    guarded = breaker(func)
    args, kwargs = call
    expected = sync_outcome(func, args, kwargs)
    assert inspect.signature(guarded) == inspect.signature(func)
    # On the fast path, then nested in an entry of the same breaker (the context stack's).
    assert sync_outcome(guarded, args, kwargs) == expected
    with breaker:
        assert sync_outcome(guarded, args, kwargs) == expected
    assert sync_outcome(functools.partial(breaker.call_sync, func), args, kwargs) == expected


@given(shapes(), calls())
@example(EVERY_KIND, ((1, 2, 3), {"c": 4, "z": 5}))
def test_a_decorated_async_function_is_called_as_itself(shape: Shape, call) -> None:
    func = define(shape, is_async=True)
    breaker = new_breaker()
    guarded = breaker(func)
    args, kwargs = call
    expected = async_outcome(func, args, kwargs)
    assert inspect.iscoroutinefunction(guarded)
    assert async_outcome(guarded, args, kwargs) == expected

    async def nested(*args: Any, **kwargs: Any) -> Any:
        async with breaker:
            return await guarded(*args, **kwargs)

    assert async_outcome(nested, args, kwargs) == expected
    assert async_outcome(functools.partial(breaker.call, func), args, kwargs) == expected


def test_defaults_are_the_functions_own_objects() -> None:
    # The guard passes arguments on by name: a default must be the function's
    # object (one list, shared by every call), as without the breaker.
    def append(item: int, into: list[int] = []) -> list[int]:  # noqa: B006 (on purpose)
        into.append(item)
        return into

    guarded = new_breaker()(append)
    assert guarded(1) is guarded(2) is append.__defaults__[0]
    assert append.__defaults__[0] == [1, 2]


def test_a_call_that_does_not_bind_counts_nothing() -> None:
    # The function was never called: neither success nor failure of the service.
    breaker = new_breaker()

    @breaker
    def fetch(url: str) -> str:
        return url

    with pytest.raises(TypeError, match=r"fetch\(\) missing 1 required positional argument"):
        fetch()  # type: ignore[call-arg]
    assert fetch("x") == "x"
    stats = breaker.statistics()
    assert (stats.successes, stats.failures_total) == (1, 0)


def test_a_method_and_a_callable_object_are_guarded() -> None:
    breaker = new_breaker()

    class Client:
        @breaker
        def get(self, path: str, *, retries: int = 1) -> tuple[Client, str, int]:
            return self, path, retries

        def __call__(self, path: str) -> str:
            return path

    client = Client()
    assert client.get("/a", retries=2) == (client, "/a", 2)
    assert breaker(client)("/b") == "/b"  # no code of its own: the generic guard
    assert breaker(functools.partial(client.get, "/c"))() == (client, "/c", 1)
    assert breaker.statistics().successes == 3


def test_guards_of_one_shape_are_compiled_once() -> None:
    # Compiling a guard costs about 200 us: breakers, keyed circuits and functions
    # of one signature share its code, compiled the first time.
    def first(a: int, *, b: int = 1) -> int:
        return a + b

    def second(a: int, *, b: int = 2) -> int:
        return a * b

    one, other = new_breaker(), new_breaker()
    assert one(first).__code__ is other(second).__code__
    assert (one(first)(2), other(second)(2)) == (3, 4)  # each with its own defaults
