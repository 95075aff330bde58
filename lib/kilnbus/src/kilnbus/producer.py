"""Publishing records: acks=all with idempotence, so an acknowledged event is on every in-sync replica once."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.structs import RecordMetadata

from kilnbus.codec import AvroCodec, default_codec
from kilnbus.records import Record
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic

log = logging.getLogger(__name__)


def _retriable(exc: KafkaError) -> bool:
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, (KafkaConnectionError, KafkaTimeoutError))


class BusProducer:
    """Encodes records with the Avro codec and publishes them, keyed, to their topic."""

    def __init__(
        self,
        settings: BusSettings,
        codec: AvroCodec | None = None,
        delivery_timeout_s: float = 120.0,
        **overrides: Any,
    ) -> None:
        self._codec = codec or default_codec()
        self._delivery_timeout_s = delivery_timeout_s
        self._options = {
            **settings.client_kwargs(),
            "acks": "all",
            "enable_idempotence": True,
            # Low latency first: phase events are small and users watch them arrive.
            "linger_ms": 0,
            "request_timeout_ms": 30_000,
            **overrides,
        }
        self._producer: AIOKafkaProducer | None = None
        self._started = False

    async def start(self) -> None:
        """Connect. The client is made here because aiokafka needs the running event loop."""
        assert not self._started, "BusProducer.start() called twice"
        self._producer = AIOKafkaProducer(**self._options)
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        """Flush what is queued, then close."""
        if self._started and self._producer is not None:
            self._started = False
            await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def send(self, topic: Topic, key: str | None, record: Record) -> asyncio.Future[RecordMetadata]:
        """Queue ``record``; the returned future resolves when the broker has acknowledged it."""
        if not isinstance(record, topic.record):
            raise TypeError(f"{topic.name} carries {topic.record.__name__}, not {type(record).__name__}")
        value = self._codec.encode(record)
        assert self._producer is not None, "BusProducer used before start()"
        sent: asyncio.Future[RecordMetadata] = await self._producer.send(
            topic.name, value=value, key=key.encode() if key is not None else None)
        return sent

    async def publish(self, topic: Topic, key: str | None, record: Record) -> RecordMetadata:
        """Publish ``record`` and wait until the broker has it.

        Retriable failures (broker restarting, leader moving) are retried until ``delivery_timeout_s``
        has passed; a retry after a lost acknowledgement may write the record twice, which
        at-least-once consumers tolerate by design.
        """
        deadline = time.monotonic() + self._delivery_timeout_s
        delay = 0.1
        while True:
            try:
                return await (await self.send(topic, key, record))
            except KafkaError as exc:
                if not _retriable(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("publish to %s failed (%r); retrying in %.1fs", topic.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def send_raw(self, topic: str, key: bytes | None, value: bytes | None) -> RecordMetadata:
        """Publish bytes as they are (dead letters keep the original message untouched)."""
        assert self._producer is not None, "BusProducer used before start()"
        return await self._producer.send_and_wait(topic, value=value, key=key)
