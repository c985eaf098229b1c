"""
End to end: the example shop (examples/shop) under uvicorn, its carriers
service and django-tasks-db's worker run as real processes on loopback
ports, driven over HTTP by the walkthrough that ``make demo`` prints
(examples/walkthrough.py). The steps are played once, in order; each test
reports one step's checks.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest

from examples.stack import Stack
from examples.walkthrough import Step, Walkthrough


@dataclass(frozen=True, slots=True)
class Played:
    steps: dict[str, Step]
    pids: list[int]
    """The stack's processes, each the leader of its process group."""


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Played:
    with Stack(tmp_path_factory.mktemp("example")) as stack:
        steps = asyncio.run(Walkthrough(stack).run())
        pids = [service.process.pid for service in stack.services]
    return Played({step.name: step for step in steps}, pids)


@pytest.mark.parametrize("name", [name for name, _ in Walkthrough.STEPS])
def test_step_behaves_as_described(played: Played, name: str) -> None:
    step = played.steps.get(name)
    if step is None:
        pytest.fail(f"{name} was not played: an earlier step failed", pytrace=False)
    assert step.passed, step.report()


def test_the_stack_leaves_no_process_behind(played: Played) -> None:
    assert len(played.pids) == 3  # the carriers, the shop, the worker
    for pid in played.pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nobody is left in the group
