"""
Small functions compiled from source, spelled for the call they make.

A call that passes its arguments by name in its code (``func(a, b, c=c)``)
costs far less than one that packs them into a tuple and a dict and unpacks
them again (``func(*args, **kwargs)``): on the hot paths the difference is a
fifth of what patchboard adds to a call. So a dispatch calls listeners through
a function compiled for its keyword names (``patchboard._run.applier``), and a
breaker's decorator wraps a function in a guard with that function's own
parameters (``patchboard._breaker``), as attrs and dataclasses compile their
``__init__``. Only names that survive compilation unchanged are spelled.
"""

from __future__ import annotations

import keyword
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from inspect import CO_VARARGS, CO_VARKEYWORDS
from types import FunctionType
from typing import Any


def spellable(name: str) -> bool:
    """Whether ``name`` can be written in source and reach the callee as it is."""
    # The compiler rewrites identifiers to their NFKC form, so "\u00b5" (the micro
    # sign) in source would reach the callee as "\u03bc" (a Greek mu).
    return (
        name.isidentifier()
        and not keyword.iskeyword(name)
        and unicodedata.normalize("NFKC", name) == name
    )


def compiled(source: str, name: str, namespace: dict[str, Any] | None = None) -> Any:
    """The object that ``source`` defines as ``name``, compiled with ``namespace`` as globals."""
    scope: dict[str, Any] = {} if namespace is None else dict(namespace)
    exec(source, scope)
    return scope[name]


@dataclass(frozen=True, slots=True)
class Forwarding:
    """
    How a wrapper with a function's own parameters passes them on: its
    ``parameters`` (a ``def``'s list, without defaults: copy them with
    :func:`copy_defaults`), the ``call``'s arguments, and the same arguments
    as a tuple's and a dict's items (``args``, ``kwargs``).
    """

    parameters: str
    call: str
    args: str
    kwargs: str


GENERIC = Forwarding("*args, **kwargs", "*args, **kwargs", "*args,", "**kwargs")
"""The forwarding of a wrapper that takes any arguments."""


def forwarding(func: object, *, reserved: str) -> Forwarding | None:
    """
    The forwarding for a wrapper of ``func`` with its own parameters, read from its
    code; None when it cannot be spelled: ``func`` is not a plain Python function,
    or a parameter's name is not spellable or starts with ``reserved`` (the
    wrapper's own names).
    """
    if type(func) is not FunctionType:
        return None
    code = func.__code__
    flags, names = code.co_flags, code.co_varnames
    keywords_at = code.co_argcount
    rest_at = keywords_at + code.co_kwonlyargcount
    positional = list(names[:keywords_at])
    keywords = list(names[keywords_at:rest_at])
    varargs = names[rest_at] if flags & CO_VARARGS else None
    varkw = names[rest_at + (varargs is not None)] if flags & CO_VARKEYWORDS else None
    every = [*positional, *keywords, *(name for name in (varargs, varkw) if name is not None)]
    if not all(spellable(name) and not name.startswith(reserved) for name in every):
        return None

    parameters = list(positional)
    if code.co_posonlyargcount:
        parameters.insert(code.co_posonlyargcount, "/")
    if varargs is not None:
        parameters.append(f"*{varargs}")
    elif keywords:
        parameters.append("*")
    parameters += keywords
    if varkw is not None:
        parameters.append(f"**{varkw}")

    args = positional + ([f"*{varargs}"] if varargs is not None else [])
    kwargs = [f"{name!r}: {name}" for name in keywords]
    kwargs += [f"**{varkw}"] if varkw is not None else []
    call = args + [f"{name}={name}" for name in keywords]
    call += [f"**{varkw}"] if varkw is not None else []
    return Forwarding(
        ", ".join(parameters),
        ", ".join(call),
        "".join(f"{arg}, " for arg in args),
        ", ".join(kwargs),
    )


def copy_defaults(wrapper: Callable[..., Any], func: Callable[..., Any]) -> None:
    """Give a wrapper made with :func:`forwarding` the defaults of ``func``."""
    wrapper.__defaults__ = func.__defaults__
    wrapper.__kwdefaults__ = func.__kwdefaults__
