"""``MemoryBus``: the ``Bus`` in one process, without Kafka, for tests and the fast tier.

It keeps Kafka's delivery semantics where handlers can tell: records go through the real Avro
codec; each topic has partitions and a key picks its partition with Kafka's own partitioner
(murmur2), so one key's records stay in order on one partition; consumer groups commit an offset
after its record was handled; members of a group split the partitions, and a member that stops
hands what it had not finished to the others, which get it again; dead letters and ``failed``
events come from the same ``kilnbus.dispatch`` as on Kafka. Readers and waiters wake on an
``asyncio.Condition``, never by polling.

Not modelled: crash markers (a process that dies here takes the bus with it), broker faults.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from aiokafka.partitioner import murmur2

from kilnbus.bus import Routes, as_routes
from kilnbus.codec import AvroCodec, default_codec
from kilnbus.dispatch import DispatchCounts, Dispatcher, Handler
from kilnbus.reader import CatchUp, LogRecord, Position, Start, topic_names
from kilnbus.records import Record
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic, Topics

log = logging.getLogger(__name__)
TP = tuple[str, int]

# BusConsumer options the dispatcher takes; others (crash markers, aiokafka's) mean nothing here.
_DISPATCH_OPTIONS = {"max_attempts", "retry_backoff_s", "max_backoff_s", "service"}
_DEFAULT: Any = object()  # failure_events not given: the bus's phase events, as KafkaBus does
_IGNORED_OPTIONS = {"max_crashes", "attempts_begin_in_handler", "commit_interval_s"}


@dataclass(frozen=True)
class StoredRecord:
    """One message in a partition, as Kafka would keep it (fits ``kilnbus.dispatch.RawRecord``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    sequence: int  # order of publishing across partitions, for inspecting a topic in tests


@dataclass
class _Group:
    name: str
    members: list[MemoryConsumer] = field(default_factory=list)
    topics: set[str] = field(default_factory=set)
    committed: dict[TP, int] = field(default_factory=dict)
    owner: dict[TP, MemoryConsumer] = field(default_factory=dict)  # who holds a partition now


class MemoryBus:
    """``Bus`` held in memory; ``records(topic)`` and ``drained(group)`` are for tests."""

    def __init__(self, settings: BusSettings | None = None, *, partitions: int | None = None,
                 codec: AvroCodec | None = None) -> None:
        self.settings = settings or BusSettings(topic_partitions=4)
        self.topics = Topics(self.settings.topic_prefix)
        self.partitions = partitions or self.settings.topic_partitions
        self.codec = codec or default_codec()
        self._logs: dict[str, list[list[StoredRecord]]] = {}
        self._groups: dict[str, _Group] = {}
        self._sequence = itertools.count()
        self._round_robin = itertools.count()
        # Every change (a record appended, an offset committed, a member joining or leaving) is notified here.
        self.changed = asyncio.Condition()

    # -- lifecycle: nothing to connect ---------------------------------------------------------

    async def start(self) -> None:
        for topic in self.topics.all():
            self._log(topic.name)

    async def stop(self) -> None:
        await self.notify()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # -- the log -------------------------------------------------------------------------------

    def _log(self, name: str) -> list[list[StoredRecord]]:
        # Topics exist from first use, with the bus's partition count (Kafka's are made by ensure_topics).
        return self._logs.setdefault(name, [[] for _ in range(self.partitions)])

    def partition_for(self, topic: Topic | str, key: str | bytes | None) -> int:
        """The partition Kafka's default partitioner picks for ``key`` (keyless records go round robin)."""
        n = len(self._log(topic.name if isinstance(topic, Topic) else topic))
        if key is None:
            return next(self._round_robin) % n
        raw = key.encode() if isinstance(key, str) else key
        return (int(murmur2(raw)) & 0x7FFFFFFF) % n

    async def publish(self, topic: Topic, key: str | None, record: Record) -> Position:
        if not isinstance(record, topic.record):
            raise TypeError(f"{topic.name} carries {topic.record.__name__}, not {type(record).__name__}")
        return await self.publish_raw(topic, key.encode() if key is not None else None, self.codec.encode(record))

    async def publish_raw(self, topic: Topic | str, key: bytes | None, value: bytes | None) -> Position:
        """Append bytes as they are (a test's garbage, or a dead letter's original)."""
        name = topic.name if isinstance(topic, Topic) else topic
        partition = self.partition_for(name, key)
        log_ = self._log(name)[partition]
        log_.append(StoredRecord(name, partition, len(log_), key, value, int(time.time() * 1000), next(self._sequence)))
        await self.notify()
        return Position(name, partition, len(log_) - 1)

    def raw(self, topic: Topic | str) -> list[StoredRecord]:
        """Every message of ``topic`` in the order it was published."""
        name = topic.name if isinstance(topic, Topic) else topic
        return sorted((r for part in self._log(name) for r in part), key=lambda r: r.sequence)

    def records(self, topic: Topic) -> list[Record]:
        """Every record of ``topic``, decoded, in the order it was published (undecodable ones skipped)."""
        out: list[Record] = []
        for stored in self.raw(topic):
            try:
                out.append(self.codec.decode(stored.value, expect=topic.record))
            except ValueError:
                continue
        return out

    def end(self, tp: TP) -> int:
        return len(self._log(tp[0])[tp[1]])

    def tps(self, names: Sequence[str]) -> list[TP]:
        return [(name, p) for name in names for p in range(len(self._log(name)))]

    # -- groups --------------------------------------------------------------------------------

    def consumer(self, group: str, routes: Routes | Sequence[Topic], handler: Handler | None = None,
                 **options: Any) -> MemoryConsumer:
        return MemoryConsumer(self, group, as_routes(routes, handler), **options)

    def committed(self, group: str) -> dict[TP, int]:
        """The group's committed offsets (a copy)."""
        return dict(self._groups[group].committed) if group in self._groups else {}

    def _caught_up(self, group: str) -> bool:
        g = self._groups.get(group)
        if g is None:
            return False
        return all(g.committed.get(tp, 0) >= self.end(tp) for tp in self.tps(sorted(g.topics)))

    async def drained(self, group: str, timeout: float | None = 10.0) -> None:
        """Wait until ``group`` has handled (committed) every record of its topics; TimeoutError after ``timeout``."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: self._caught_up(group)), timeout)

    def _join(self, member: MemoryConsumer) -> _Group:
        group = self._groups.setdefault(member.group, _Group(member.group))
        group.members.append(member)
        group.topics.update(t.name for t in member.routes.topics)
        self._rebalance(group)
        return group

    def _leave(self, member: MemoryConsumer) -> None:
        group = self._groups[member.group]
        group.members.remove(member)
        for tp in [tp for tp, owner in group.owner.items() if owner is member]:
            del group.owner[tp]
        self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        """Deal the group's partitions round robin over its members, in the order they joined."""
        for member in group.members:
            member.assigned = set()
        if not group.members:
            return
        for i, tp in enumerate(self.tps(sorted(group.topics))):
            group.members[i % len(group.members)].assigned.add(tp)

    # -- readers -------------------------------------------------------------------------------

    def reader(self, topics: Sequence[Topic | str], *, start: Start = "beginning") -> MemoryLogReader:
        return MemoryLogReader(self, topic_names(topics), start)


class MemoryConsumer(DispatchCounts):
    """One member of a group on a ``MemoryBus``: BusConsumer's semantics, without a broker."""

    def __init__(self, bus: MemoryBus, group: str, routes: Routes, *, failure_events: Any = _DEFAULT,
                 max_in_flight: int = 1, shutdown_grace_s: float = 30.0, codec: AvroCodec | None = None,
                 **options: Any) -> None:
        unknown = set(options) - _DISPATCH_OPTIONS - _IGNORED_OPTIONS
        if unknown:
            log.debug("%s: options without meaning in memory: %s", group, sorted(unknown))
        self.bus = bus
        self.group = group
        self.routes = routes
        events = bus.topics.phase_events if failure_events is _DEFAULT else failure_events
        assert events is None or isinstance(events, Topic)
        self.dispatcher = Dispatcher(group=group, topics=routes.topics, handler=routes, publisher=bus,
                                     dead_letter=bus.topics.dead_letter, codec=codec or bus.codec, failure_events=events,
                                     **{k: v for k, v in options.items() if k in _DISPATCH_OPTIONS})
        self._max_in_flight = max_in_flight
        self._shutdown_grace_s = shutdown_grace_s
        self.assigned: set[TP] = set()  # what the group's last rebalance gave this member
        self._position: dict[TP, int] = {}  # owned partitions: next offset to start
        self._in_flight: dict[TP, set[int]] = {}
        self._held: dict[TP, set[int]] = {}  # started and not handled (cancelled at stop): never committed past
        self._tasks: set[asyncio.Task[None]] = set()
        self._group: _Group | None = None
        self._turn = 0

    async def start(self) -> None:
        self._group = self.bus._join(self)
        await self.bus.notify()

    async def run(self, stop: asyncio.Event) -> None:
        """Handle records until ``stop`` is set; then finish what is in hand (up to the grace), commit, leave."""
        assert self._group is not None, "MemoryConsumer.run() before start()"
        changed = self.bus.changed

        async def wake_on_stop() -> None:
            await stop.wait()
            await self.bus.notify()

        waker = asyncio.create_task(wake_on_stop())
        try:
            found: tuple[TP, int] | None = None

            def ready() -> bool:
                nonlocal found
                found = self._next()
                return stop.is_set() or found is not None

            while True:
                async with changed:
                    await changed.wait_for(ready)
                if stop.is_set():
                    break
                assert found is not None
                self._start(*found)
        finally:
            waker.cancel()
            await self._shutdown()

    def _next(self) -> tuple[TP, int] | None:
        """Settle partitions moving in or out, then the next record to start, if a slot is free."""
        group = self._group
        assert group is not None
        for tp in [tp for tp in self._position if tp not in self.assigned and not self._in_flight.get(tp)]:
            self._commit(tp)  # revoked and nothing in hand: hand it over
            del group.owner[tp]
            del self._position[tp]
            self._held.pop(tp, None)
            self._in_flight.pop(tp, None)
        for tp in self.assigned:
            if tp not in self._position and tp not in group.owner:
                group.owner[tp] = self
                self._position[tp] = group.committed.get(tp, 0)
        if len(self._tasks) >= self._max_in_flight:
            return None
        owned = sorted(tp for tp in self._position if tp in self.assigned)
        for i in range(len(owned)):
            tp = owned[(self._turn + i) % len(owned)]  # take turns, so one busy partition starves no other
            if self._position[tp] < self.bus.end(tp):
                self._turn += i + 1
                return tp, self._position[tp]
        return None

    def _start(self, tp: TP, offset: int) -> None:
        stored = self.bus._log(tp[0])[tp[1]][offset]
        self._position[tp] = offset + 1
        self._in_flight.setdefault(tp, set()).add(offset)
        task = asyncio.create_task(self._process(tp, stored), name=f"{self.group} {tp[0]}[{tp[1]}]@{offset}")
        self._tasks.add(task)

    async def _process(self, tp: TP, stored: StoredRecord) -> None:
        handled = False
        try:
            await self.dispatcher.process(stored)
            handled = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: record %s@%d left unhandled", self.group, tp, stored.offset)
        finally:
            self._in_flight[tp].discard(stored.offset)
            if not handled:
                self._held.setdefault(tp, set()).add(stored.offset)
            self._commit(tp)
            self._tasks.discard(asyncio.current_task())
            # Wake the loop (a slot is free) and anyone waiting for the group to drain.
            await self.bus.notify()

    def _commit(self, tp: TP) -> None:
        assert self._group is not None
        unfinished = self._in_flight.get(tp, set()) | self._held.get(tp, set())
        self._group.committed[tp] = min(unfinished) if unfinished else self._position[tp]

    async def _shutdown(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._shutdown_grace_s)
            for task in pending:
                task.cancel()  # uncommitted: the group's next owner gets the record again
            if pending:
                await asyncio.wait(pending)
        for tp in self._position:
            self._commit(tp)
        self._position.clear()
        self.bus._leave(self)
        await self.bus.notify()


class MemoryLogReader:
    """``LogReader`` over a ``MemoryBus``."""

    def __init__(self, bus: MemoryBus, names: list[str], start: Start) -> None:
        self._bus = bus
        if isinstance(start, str):
            tps = bus.tps(names)
            self._position = {tp: (0 if start == "beginning" else bus.end(tp)) for tp in tps}
        else:
            self._position = dict(start)
        self.end_offsets: dict[TP, int] = {}
        self.caught_up = asyncio.Event()
        self._catch_up: CatchUp | None = None
        self._stopped = False
        self._turn = 0

    async def start(self) -> None:
        self.end_offsets = {tp: self._bus.end(tp) for tp in self._position}
        self._catch_up = CatchUp(self.end_offsets, self._position, self.caught_up)

    async def stop(self) -> None:
        self._stopped = True
        await self._bus.notify()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __aiter__(self) -> MemoryLogReader:
        return self

    def _next(self) -> TP | None:
        tps = sorted(self._position)
        for i in range(len(tps)):
            tp = tps[(self._turn + i) % len(tps)]
            if self._position[tp] < self._bus.end(tp):
                self._turn += i + 1
                return tp
        return None

    async def __anext__(self) -> LogRecord:
        assert self._catch_up is not None, "MemoryLogReader used before start()"
        self._catch_up.check()
        async with self._bus.changed:
            await self._bus.changed.wait_for(lambda: self._stopped or self._next_ready())
        if self._stopped:
            raise StopAsyncIteration
        tp = self._next()
        assert tp is not None
        stored = self._bus._log(tp[0])[tp[1]][self._position[tp]]
        self._position[tp] += 1
        self._catch_up.handed_out(stored.topic, stored.partition, stored.offset)
        return LogRecord(stored.topic, stored.partition, stored.offset,
                         stored.key.decode(errors="replace") if stored.key is not None else None, stored.value,
                         stored.timestamp)

    def _next_ready(self) -> bool:
        return any(self._position[tp] < self._bus.end(tp) for tp in self._position)
