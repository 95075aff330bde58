"""kilnbus.tasks: background tasks with an owner that stops them. In memory."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kilnbus.tasks import Tasks


async def test_aclose_cancels_and_awaits_what_is_running() -> None:
    tasks = Tasks("test")
    ended: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("forever")

    async def quick() -> None:
        ended.append("quick")

    tasks.start(forever(), name="forever")
    await tasks.start(quick(), name="quick")
    assert ended == ["quick"] and len(tasks) == 1, "control: a finished task leaves, a running one stays"
    await tasks.aclose()
    assert ended == ["quick", "forever"] and len(tasks) == 0
    with pytest.raises(RuntimeError, match="stopping"):
        tasks.start(quick(), name="late")


async def test_a_failure_is_logged_when_it_happens(caplog: pytest.LogCaptureFixture) -> None:
    tasks = Tasks("test")

    async def fails() -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="kilnbus.tasks"):
        task = tasks.start(fails(), name="fails")
        await asyncio.wait([task])
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    assert "test: background task fails failed" in caplog.text and "boom" in caplog.text
    await tasks.aclose()
