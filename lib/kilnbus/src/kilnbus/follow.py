"""Reading a topic from its first record and then live: the base of every projection of the log.

A service that keeps state derived from the log (running servers, quotas) rebuilds it with this at
start-up instead of keeping a database: ``caught_up`` is set once every record that existed at
start has been applied, and records keep being applied as they arrive. It reads through a
``kilnbus.reader`` log reader, so a projection runs the same on Kafka and on the in-memory bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from kilnbus.codec import DecodeError, default_codec
from kilnbus.reader import KafkaLogReader, LogReader
from kilnbus.records import Record
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic

log = logging.getLogger(__name__)


class HasReader(Protocol):
    """A bus (``KafkaBus``, ``MemoryBus``): anything that makes group-less readers."""

    def reader(self, topics: Sequence[Topic | str]) -> LogReader: ...


class LogFollower:
    """Applies ``apply(record)`` to every record of ``topic``, oldest first, for as long as it runs.

    ``source`` is a bus, or (as before buses existed) the settings of a Kafka cluster.
    """

    def __init__(self, source: BusSettings | HasReader, topic: Topic, apply: Callable[[Record], None]) -> None:
        self._reader: LogReader = (KafkaLogReader(source, [topic]) if isinstance(source, BusSettings)
                                   else source.reader([topic]))
        self._topic = topic
        self._apply = apply
        # The reader's own: set once every record that existed at start was applied (the reader sets it
        # when this follower comes back for the next record).
        self.caught_up: asyncio.Event = self._reader.caught_up
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start reading; returns once the reader is in place (not caught up: wait on ``caught_up``)."""
        await self._reader.start()
        self._task = asyncio.create_task(self._follow(), name=f"follow {self._topic.name}")

    async def wait_caught_up(self, stop: asyncio.Event) -> bool:
        """Wait until ``caught_up`` (True) or until ``stop`` is set first (False): a service serves only after.

        Both waits end before this returns, cancelled and awaited, whichever way it returns.
        """
        waits = [asyncio.create_task(self.caught_up.wait(), name=f"caught up {self._topic.name}"),
                 asyncio.create_task(stop.wait(), name="stop")]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return self.caught_up.is_set()

    async def _follow(self) -> None:
        codec = default_codec()
        async for entry in self._reader:
            try:
                value = codec.decode(entry.value, expect=self._topic.record)
            except DecodeError:
                continue  # the consuming services set such records aside; a projection skips them
            self._apply(value)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._reader.stop()
