"""The public surface: what __all__ promises exists, and nothing else is advertised."""

from __future__ import annotations

from pathlib import Path

import django.dispatch

import patchboard


def test_all_is_sorted_and_importable() -> None:
    assert patchboard.__all__ == sorted(patchboard.__all__)
    for name in patchboard.__all__:
        assert getattr(patchboard, name) is not None


def test_contract_names_exist() -> None:
    for name in ("Signal", "receiver", "Collected", "Outcome", "CircuitOpen"):
        assert name in patchboard.__all__


def test_signal_is_a_django_signal() -> None:
    assert issubclass(patchboard.Signal, django.dispatch.Signal)


def test_package_is_typed() -> None:
    assert (Path(patchboard.__file__).parent / "py.typed").exists()
