"""Reading the log outside any consumer group: from the beginning, from the end, or from given offsets.

``LogReader`` is what a projection (running servers, quotas), the gateway's router and its replay
read the log with. It is assigned every partition of its topics (or only the partitions it is
given offsets for), reports the end offsets as they were at start (``end_offsets``), and sets
``caught_up`` once every record before them has been handed out and the caller came back for the
next (so the caller has applied them). It yields records undecoded: callers that look at few of
them (the router) decode only those.

``KafkaLogReader`` implements it over aiokafka's public API only; ``kilnbus.memory`` has the
in-memory one.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from kilnbus.settings import BusSettings
from kilnbus.topics import Topic

log = logging.getLogger(__name__)


class Position(NamedTuple):
    """Where a record sits in the log."""

    topic: str
    partition: int
    offset: int


class LogRecord(NamedTuple):
    """A record as a reader hands it out: where it sits, its key, and its undecoded value."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    timestamp_ms: int


# "beginning" or "end" of every partition, or the offset to start at in each partition to read.
Start = Literal["beginning", "end"] | Mapping[tuple[str, int], int]


class PartitionsNotFound(RuntimeError):
    """A topic a reader was asked for did not appear within the wait."""


class LogReader(Protocol):
    """A group-less reader; use as ``async with reader: async for record in reader: ...``."""

    end_offsets: dict[tuple[str, int], int]
    caught_up: asyncio.Event

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...
    def __aiter__(self) -> AsyncIterator[LogRecord]: ...
    async def __anext__(self) -> LogRecord: ...


def topic_names(topics: Sequence[Topic | str]) -> list[str]:
    return [t.name if isinstance(t, Topic) else t for t in topics]


class CatchUp:
    """Which partitions still have records before their end offsets: the one rule both readers follow."""

    def __init__(self, ends: dict[tuple[str, int], int], positions: dict[tuple[str, int], int],
                 event: asyncio.Event) -> None:
        self.pending = {tp for tp, end in ends.items() if positions.get(tp, 0) < end}
        self.ends = ends
        self.event = event
        self.check()

    def handed_out(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        if tp in self.pending and offset + 1 >= self.ends[tp]:
            self.pending.discard(tp)

    def reached(self, tp: tuple[str, int], position: int) -> None:
        """The reader's position in ``tp`` (past gaps such as transaction markers)."""
        if position >= self.ends.get(tp, 0):
            self.pending.discard(tp)

    def check(self) -> None:
        """Called when the caller asks for the next record: everything handed out has been applied."""
        if not self.pending:
            self.event.set()


async def wait_for_partitions(settings: BusSettings, names: list[str], timeout_s: float) -> dict[str, list[int]]:
    """The partitions of each topic, waiting up to ``timeout_s`` for topics being created to appear."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    await admin.start()
    try:
        while True:
            found: dict[str, list[int]] = {}
            try:
                for meta in await admin.describe_topics(names):
                    parts = [p["partition"] for p in meta["partitions"] if p["error_code"] == 0]
                    if meta["error_code"] == 0 and parts:
                        found[meta["topic"]] = sorted(parts)
            except KafkaError as exc:
                log.warning("reading partitions of %s: %r", names, exc)
            missing = [n for n in names if n not in found]
            if not missing:
                return found
            if time.monotonic() + delay > deadline:
                raise PartitionsNotFound(f"topic(s) {missing} not found after {timeout_s:.0f}s; is Kafka up and were "
                                         "the topics created (ensure_topics)?")
            await asyncio.sleep(delay)  # a topic being created: its metadata follows within moments
            delay = min(delay * 2, 1.0)
    finally:
        await admin.close()


class KafkaLogReader:
    """A ``LogReader`` over Kafka: an aiokafka consumer in no group, assigned the partitions itself."""

    def __init__(self, settings: BusSettings, topics: Sequence[Topic | str], *, start: Start = "beginning",
                 partition_timeout_s: float = 30.0, **overrides: Any) -> None:
        self._settings = settings
        self._names = topic_names(topics)
        self._start = start
        self._partition_timeout_s = partition_timeout_s
        self._overrides = overrides
        self._consumer: AIOKafkaConsumer | None = None
        self._buffer: collections.deque[ConsumerRecord[bytes, bytes]] = collections.deque()
        self._catch_up: CatchUp | None = None
        self.end_offsets: dict[tuple[str, int], int] = {}
        self.caught_up = asyncio.Event()

    async def start(self) -> None:
        if isinstance(self._start, str):
            parts = await wait_for_partitions(self._settings, self._names, self._partition_timeout_s)
            tps = [TopicPartition(name, p) for name in self._names for p in parts[name]]
        else:
            tps = [TopicPartition(t, p) for (t, p) in self._start]
        consumer = AIOKafkaConsumer(**self._settings.client_kwargs(), group_id=None, enable_auto_commit=False,
                                    **self._overrides)
        await consumer.start()
        try:
            consumer.assign(tps)
            if self._start == "beginning":
                await consumer.seek_to_beginning(*tps)
            elif self._start == "end":
                await consumer.seek_to_end(*tps)
            else:
                assert not isinstance(self._start, str)
                for tp in tps:
                    consumer.seek(tp, self._start[(tp.topic, tp.partition)])
            # Resolved now, so that "end" means the end at start and not whenever the first fetch runs.
            positions = {(tp.topic, tp.partition): await consumer.position(tp) for tp in tps}
            ends = await consumer.end_offsets(tps)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self.end_offsets = {(tp.topic, tp.partition): end for tp, end in ends.items()}
        self._catch_up = CatchUp(self.end_offsets, positions, self.caught_up)

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __aiter__(self) -> KafkaLogReader:
        return self

    async def __anext__(self) -> LogRecord:
        assert self._consumer is not None and self._catch_up is not None, "KafkaLogReader used before start()"
        catch_up = self._catch_up
        catch_up.check()
        while not self._buffer:
            for tp in list(catch_up.pending):
                catch_up.reached(tp, await self._consumer.position(TopicPartition(*tp)))
            catch_up.check()
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("reading %s: %r; retrying", self._names, exc)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                self._buffer.extend(records)
        record = self._buffer.popleft()
        catch_up.handed_out(record.topic, record.partition, record.offset)
        return LogRecord(record.topic, record.partition, record.offset,
                         record.key.decode(errors="replace") if record.key is not None else None, record.value,
                         record.timestamp)
