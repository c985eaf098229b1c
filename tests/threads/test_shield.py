"""
``patchboard._shield.finish``: work that ends even when its caller is
cancelled (internals on purpose: the breakers' Redis reports and admissions
rest on it; tests/breaker/test_redis.py shows them through a paused Redis).
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from patchboard._shield import finish


class Held:
    """Work that waits until released, then ends with 7."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.ended = False

    async def work(self) -> int:
        await self.release.wait()
        self.ended = True
        return 7


async def test_the_work_ends_though_its_caller_is_cancelled_twice() -> None:
    held = Held()
    caller = asyncio.create_task(finish(held.work()))
    await asyncio.sleep(0)  # the caller waits
    caller.cancel()
    await asyncio.sleep(0)
    caller.cancel()  # again: still waiting
    await asyncio.sleep(0)
    assert not caller.done()
    held.release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert held.ended


async def test_a_result_dropped_with_its_caller_is_undone_even_if_cancelled_again() -> None:
    held, release_undo = Held(), asyncio.Event()
    undone: list[int] = []

    async def undo(result: int) -> None:
        await release_undo.wait()
        undone.append(result)

    caller = asyncio.create_task(finish(held.work(), undo=undo))
    await asyncio.sleep(0)
    caller.cancel()
    held.release.set()
    for _ in range(3):
        await asyncio.sleep(0)  # the work ends, the undo starts and waits
    caller.cancel()  # cancelled again, during the undo
    await asyncio.sleep(0)
    assert not caller.done()
    release_undo.set()
    with pytest.raises(asyncio.CancelledError):  # once, the caller's own
        await caller
    assert undone == [7]


async def test_an_error_of_the_work_reaches_a_caller_still_there() -> None:
    async def work() -> None:
        raise LookupError("the work's own")

    with pytest.raises(LookupError, match="the work's own"):
        await finish(work(), undo=pytest.fail)


async def test_a_result_reaches_a_caller_still_there_and_nothing_is_undone() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert await finish(work(), undo=pytest.fail) == 7


async def test_inside_a_cancelled_anyio_scope_the_wait_is_cancelled_once() -> None:
    # anyio's scopes cancel level-triggered: every await inside is cancelled, again
    # and again, so an unshielded wait would spin on the loop until the work ends.
    held = Held()

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: loop.call_soon(lambda: loop.call_soon(held.release.set)))
    delivered = 0
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await finish(held.work())
        except asyncio.CancelledError:
            delivered = task.cancelling()
            raise
    assert scope.cancelled_caught
    assert (held.ended, delivered) == (True, 1)


async def test_the_work_starts_at_once_as_the_caller_would_have_run_it() -> None:
    # A Redis command is sent before the loop turns: no other task runs first.
    steps: list[str] = []

    async def other() -> None:
        steps.append("another task")

    async def work() -> None:
        steps.append("the work")
        await asyncio.sleep(0)

    scheduled = asyncio.create_task(other())
    await finish(work())
    await scheduled
    assert steps == ["the work", "another task"]
