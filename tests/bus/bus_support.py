"""Helpers for tests written against the ``Bus`` interface, so one test runs on MemoryBus and on KafkaBus."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from kilnbus import Bus, BusSettings, KafkaBus, MemoryBus, Record, Routes, Topic, default_codec
from kilnbus.bus import Consumer

T = TypeVar("T")


class Collector(Generic[T]):
    """Items handlers saw, and a condition to wait on them (no polling)."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._changed = asyncio.Condition()

    async def add(self, item: T) -> None:
        async with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    async def wait(self, predicate: Callable[[list[T]], bool], timeout: float = 30, what: str = "") -> list[T]:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self.items)), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; have {self.items}") from None
        return self.items


@asynccontextmanager
async def running(bus: Bus, group: str, routes: Routes, **options: Any) -> AsyncIterator[Consumer]:
    """A member of ``group`` consuming in the background for the block's duration."""
    consumer = bus.consumer(group, routes, retry_backoff_s=options.pop("retry_backoff_s", 0.01), **options)
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def publish_raw(bus: Bus, topic: Topic, key: bytes | None, value: bytes | None) -> None:
    if isinstance(bus, MemoryBus):
        await bus.publish_raw(topic, key, value)
    else:
        assert isinstance(bus, KafkaBus)
        await bus.producer.send_raw(topic.name, key, value)


async def read_until(bus: Bus, topic: Topic, predicate: Callable[[list[Any]], bool], timeout: float = 30) -> list[Any]:
    """Records of ``topic`` from the beginning, until ``predicate`` holds of them."""
    out: list[Any] = []
    codec = default_codec()
    async with bus.reader([topic]) as reader:
        async def follow() -> None:
            async for entry in reader:
                out.append(codec.decode(entry.value, expect=topic.record))
                if predicate(out):
                    return
        if not predicate(out):
            try:
                await asyncio.wait_for(follow(), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out reading {topic.name}; have {out}") from None
    return out


async def read_all(bus: Bus, topic: Topic, timeout: float = 30) -> list[Record]:
    """Every record ``topic`` held when this was called (the reader's end offsets at start)."""
    out: list[Record] = []
    codec = default_codec()
    async with bus.reader([topic]) as reader:
        entries = reader.__aiter__()

        async def drain() -> None:
            while True:
                nxt = asyncio.ensure_future(entries.__anext__())
                caught_up = asyncio.ensure_future(reader.caught_up.wait())
                done, _ = await asyncio.wait({nxt, caught_up}, return_when=asyncio.FIRST_COMPLETED)
                if nxt in done:
                    caught_up.cancel()
                    out.append(codec.decode(nxt.result().value, expect=topic.record))
                    continue
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)
                return

        await asyncio.wait_for(drain(), timeout)
    return out


def kafka_settings(bootstrap: str) -> BusSettings:
    """A topic prefix of the test's own, so tests never see each other's records."""
    return BusSettings(kafka_bootstrap=bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:10]}.", topic_partitions=3)
