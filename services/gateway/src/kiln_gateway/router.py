"""One reader of the phase-event topic per gateway process, routing events to open streams.

The reader belongs to no consumer group: every gateway process must see every event, since any
of them may hold the stream a request's events are for. Records are routed by their Kafka key
(the request id) before decoding, so events of requests this process does not serve cost almost
nothing. A stream registers its route before its launch request is published, so it cannot miss
its first event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kilnbus import AvroCodec, BusSettings, DecodeError, Phase, PhaseEvent, Topic, default_codec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Routed:
    """A phase event and its place in the log."""

    partition: int
    offset: int
    event: PhaseEvent


class Subscription:
    """The events for one request, buffered for one client.

    The buffer is bounded for log lines only: when a slow client lets it fill, further ``building``
    and ``fetching`` lines are dropped and counted (the stream shows how many), while phase changes
    are always kept, so a slow client still sees every step and the end.
    """

    LOG_PHASES = frozenset({Phase.BUILDING, Phase.FETCHING, Phase.PUSHING, Phase.UNKNOWN})

    def __init__(self, request_id: str, limit: int) -> None:
        self.request_id = request_id
        self._limit = limit
        self._items: deque[Routed] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        self.last_offset = -1
        self._held: list[Routed] | None = None  # live events kept back while older ones are replayed

    def hold(self) -> None:
        """Keep live events back until ``release()``, so replayed events come first and in order."""
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for item in held:
            self.push(item)

    def push(self, item: Routed, replayed: bool = False) -> None:
        if self._held is not None and not replayed:
            self._held.append(item)
            return
        if item.offset <= self.last_offset:
            return  # already delivered (replay and live overlap)
        self.last_offset = item.offset
        if len(self._items) >= self._limit and item.event.phase in self.LOG_PHASES:
            self.dropped += 1
            return
        self._items.append(item)
        self._ready.set()

    async def next(self, timeout: float) -> Routed | None:
        """The next event, or None after ``timeout`` seconds without one."""
        if not self._items:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return None
        return self._items.popleft()

    def take_dropped(self) -> int:
        n, self.dropped = self.dropped, 0
        return n


class EventRouter:
    """Reads the phase topic from its end and hands each event to the streams waiting for it."""

    def __init__(self, settings: BusSettings, topic: Topic, codec: AvroCodec | None = None) -> None:
        self._settings = settings
        self._topic = topic
        self._codec = codec or default_codec()
        self._routes: dict[str, set[Subscription]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.partitions: list[TopicPartition] = []
        self.last_seen: dict[str, float] = {}  # service -> monotonic time of its latest event
        self.routed = 0

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(**self._settings.client_kwargs(), group_id=None, enable_auto_commit=False)
        await self._consumer.start()
        parts = await self._partitions(self._consumer)
        self.partitions = [TopicPartition(self._topic.name, p) for p in sorted(parts)]
        self._consumer.assign(self.partitions)
        await self._consumer.seek_to_end(*self.partitions)
        for tp in self.partitions:
            await self._consumer.position(tp)  # resolve "end" now, before any stream registers
        self._task = asyncio.create_task(self._run(), name="phase-router")

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        for _ in range(50):
            parts = consumer.partitions_for_topic(self._topic.name)
            if parts:
                return set(parts)
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {self._topic.name} not found; is Kafka up and were topics created?")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(self, request_id: str, limit: int) -> Subscription:
        sub = Subscription(request_id, limit)
        self._routes.setdefault(request_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._routes.get(sub.request_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._routes[sub.request_id]

    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self._routes.values())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("phase router: fetch failed (%r); retrying", exc)
                await asyncio.sleep(1)
                continue
            now = time.monotonic()
            for tp, records in batches.items():
                for record in records:
                    key = record.key.decode(errors="replace") if record.key else ""
                    subs = self._routes.get(key)
                    if not subs:
                        continue
                    try:
                        event = self._codec.decode(record.value, expect=PhaseEvent)
                    except DecodeError as exc:
                        log.error("phase router: undecodable event for %s at %s@%d: %s", key, tp, record.offset, exc)
                        continue
                    self.last_seen[event.service] = now
                    item = Routed(tp.partition, record.offset, event)
                    for sub in list(subs):
                        sub.push(item)
                    self.routed += 1

    async def replay(self, sub: Subscription, partition: int, after_offset: int) -> Phase | None:
        """Push to ``sub`` the events of its request after ``after_offset``, up to the log's current end.

        The subscription is already live, so events past the end arrive through the router; they
        are held back until the replay is done, and the overlap is removed by offset.

        Returns the phase of the event at ``after_offset`` itself (the last one the client saw), or
        None when that offset holds no event of this request.
        """
        sub.hold()
        try:
            return await self._replay(sub, partition, after_offset)
        finally:
            sub.release()

    async def _replay(self, sub: Subscription, partition: int, after_offset: int) -> Phase | None:
        """Read from ``after_offset`` (inclusive) to the end offset taken when the replay began."""
        tp = TopicPartition(self._topic.name, partition)
        if tp not in self.partitions:
            raise ValueError(f"no partition {partition}")
        consumer = AIOKafkaConsumer(**self._settings.client_kwargs(), group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            consumer.seek(tp, after_offset)
            position = after_offset
            seen_phase: Phase | None = None
            while position < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    position = record.offset + 1
                    if record.key is None or record.key.decode(errors="replace") != sub.request_id:
                        continue
                    try:
                        event = self._codec.decode(record.value, expect=PhaseEvent)
                    except DecodeError:
                        continue
                    if record.offset == after_offset:
                        seen_phase = event.phase  # the client has this one already
                        continue
                    sub.push(Routed(partition, record.offset, event), replayed=True)
                if not batch:
                    break  # nothing more within a second: the rest comes live
            return seen_phase
        finally:
            await consumer.stop()
