"""Background tasks: stopped even when a library swallows a cancellation, and a crash is logged."""

from __future__ import annotations

import asyncio

import pytest

from bridge.tasks import spawn, stop


@pytest.mark.asyncio
async def test_stop_cancels_again_a_task_that_swallowed_one_cancellation() -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # as Python 3.11's wait_for can do
        await asyncio.sleep(60)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await stop([task], patience=5.0)
    assert swallowed.is_set() and task.cancelled()


@pytest.mark.asyncio
async def test_a_task_that_dies_of_a_bug_says_so(caplog: pytest.LogCaptureFixture) -> None:
    async def buggy() -> None:
        raise ZeroDivisionError("oops")

    task = spawn(buggy(), "bridge-test-buggy")
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    assert "bridge task bridge-test-buggy died" in caplog.text and "ZeroDivisionError" in caplog.text
