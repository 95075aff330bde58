"""Helpers for bus tests: run a BusConsumer in the background and wait for what it handles."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kilnbus import BusConsumer, BusProducer, BusSettings, Delivery, Topic, Topics


@dataclass
class Running:
    consumer: BusConsumer
    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self, timeout: float = 60) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout)


async def start_consumer(
    settings: BusSettings,
    topics: Topics,
    watch: list[Topic],
    handler: Callable[[Delivery[Any]], Awaitable[None]],
    producer: BusProducer,
    group: str = "test-group",
    **kwargs: Any,
) -> Running:
    consumer = BusConsumer(settings, group, watch, handler, producer=producer, dead_letter=topics.dead_letter, **kwargs)
    await consumer.start()
    stop = asyncio.Event()
    return Running(consumer, asyncio.create_task(consumer.run(stop)), stop)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
