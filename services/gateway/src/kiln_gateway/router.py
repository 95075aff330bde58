"""One reader of the phase-event topic per gateway process, routing events to open streams.

The reader is the bus's group-less one (``bus.reader``, on Kafka or in memory): every gateway
process must see every event, since any of them may hold the stream a request's events are for.
Records are routed by their key (the request id) before decoding, so events of requests this
process does not serve cost almost nothing. A stream registers its route before its launch request
is published, so it cannot miss its first event. A resume replays from the log through a reader of
its own, started at the offset its event id names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kilnbus import AvroCodec, DecodeError, LogReader, LogRecord, Phase, PhaseEvent, Topic, default_codec
from kilnbus.reader import Start

log = logging.getLogger(__name__)


class Reads(Protocol):
    """What the router needs of a bus (``KafkaBus``, ``MemoryBus``): group-less readers."""

    def reader(self, topics: Sequence[Topic | str], *, start: Start = "beginning") -> LogReader: ...


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

    def __init__(self, bus: Reads, topic: Topic, codec: AvroCodec | None = None) -> None:
        self._bus = bus
        self._topic = topic
        self._codec = codec or default_codec()
        self._routes: dict[str, set[Subscription]] = {}
        self._reader: LogReader | None = None
        self._task: asyncio.Task[None] | None = None
        self.partitions: list[int] = []
        self.last_seen: dict[str, float] = {}  # service -> monotonic time of its latest event
        self.routed = 0

    async def start(self) -> None:
        """Start reading at the end of every partition; the end is fixed before this returns, so no
        stream that registers afterwards can miss its first event."""
        reader = self._bus.reader([self._topic], start="end")
        await reader.start()
        self._reader = reader
        self.partitions = sorted(p for (_, p) in reader.end_offsets)
        self._task = asyncio.create_task(self._run(reader), name="phase-router")

    async def stop(self) -> None:
        """Cancel and await the routing task, then close the reader."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.stop()

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

    async def _run(self, reader: LogReader) -> None:
        async for record in reader:
            subs = self._routes.get(record.key or "")
            if not subs:
                continue
            event = self._decode(record)
            if event is None:
                continue
            self.last_seen[event.service] = time.monotonic()
            item = Routed(record.partition, record.offset, event)
            for sub in list(subs):
                sub.push(item)
            self.routed += 1

    def _decode(self, record: LogRecord) -> PhaseEvent | None:
        try:
            event = self._codec.decode(record.value, expect=PhaseEvent)
        except DecodeError as exc:
            log.error("phase router: undecodable event for %s at %s[%d]@%d: %s", record.key, record.topic,
                      record.partition, record.offset, exc)
            return None
        assert isinstance(event, PhaseEvent)
        return event

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
        """Read from ``after_offset`` (inclusive) to the end offset the reader took when it started."""
        if partition not in self.partitions:
            raise ValueError(f"no partition {partition}")
        tp = (self._topic.name, partition)
        seen_phase: Phase | None = None
        async with self._bus.reader([self._topic], start={tp: after_offset}) as reader:
            while (record := await _next_before_end(reader)) is not None:
                if record.offset >= reader.end_offsets[tp]:
                    break  # live already: the router hands it over once the replay is done
                if record.key != sub.request_id:
                    continue
                try:
                    event = self._codec.decode(record.value, expect=PhaseEvent)
                except DecodeError:
                    continue
                assert isinstance(event, PhaseEvent)
                if record.offset == after_offset:
                    seen_phase = event.phase  # the client has this one already
                    continue
                sub.push(Routed(partition, record.offset, event), replayed=True)
        return seen_phase


async def _next_before_end(reader: LogReader) -> LogRecord | None:
    """The reader's next record, or None once every record before its end offsets was handed out.

    The reader says so with ``caught_up``, which also covers offsets that hold no record (a
    transaction marker, a record removed by retention), where waiting for the next one would
    wait for live traffic.
    """
    if reader.caught_up.is_set():
        return None
    following = asyncio.ensure_future(anext(reader))
    caught_up = asyncio.ensure_future(reader.caught_up.wait())
    try:
        await asyncio.wait({following, caught_up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        caught_up.cancel()
        if not following.done():
            following.cancel()
        await asyncio.gather(following, caught_up, return_exceptions=True)
    if following.cancelled():
        return None
    exc = following.exception()
    if isinstance(exc, StopAsyncIteration):
        return None  # the reader was stopped
    if exc is not None:
        raise exc
    return following.result()
