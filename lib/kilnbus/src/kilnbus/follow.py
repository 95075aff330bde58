"""Reading a topic from its first record and then live: the base of every projection of the log.

A service that keeps state derived from the log (running servers, quotas) rebuilds it with this at
start-up instead of keeping a database: ``caught_up`` is set once every record that existed at
start has been applied, and records keep being applied as they arrive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kilnbus.codec import DecodeError, default_codec
from kilnbus.records import Record
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic

log = logging.getLogger(__name__)


class LogFollower:
    """Applies ``apply(record)`` to every record of ``topic``, oldest first, for as long as it runs."""

    def __init__(self, settings: BusSettings, topic: Topic, apply: Callable[[Record], None]) -> None:
        self._settings = settings
        self._topic = topic
        self._apply = apply
        self.caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = consumer = AIOKafkaConsumer(**self._settings.client_kwargs(), group_id=None, enable_auto_commit=False)
        await consumer.start()
        parts = consumer.partitions_for_topic(self._topic.name)
        while not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(self._topic.name)
        tps = [TopicPartition(self._topic.name, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._follow(consumer, tps, ends), name=f"follow {self._topic.name}")

    async def _follow(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int]) -> None:
        codec = default_codec()
        pending = {tp for tp in tps if ends[tp] > 0}
        while True:
            if not pending and not self.caught_up.is_set():
                self.caught_up.set()
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("following %s: %r; retrying", self._topic.name, exc)
                await asyncio.sleep(1)
                continue
            for tp, records in batches.items():
                for record in records:
                    try:
                        value = codec.decode(record.value, expect=self._topic.record)
                    except DecodeError:
                        continue  # the consuming services set such records aside; a projection skips them
                    self._apply(value)
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()
