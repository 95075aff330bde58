"""The bus a service is written against, with Kafka behind it (``KafkaBus``) or nothing (``kilnbus.memory.MemoryBus``).

A service's logic is a ``Routes`` table, topic -> handler, so what it reacts to is visible at a
glance; ``serve`` runs the table as one consumer-group member until told to stop::

    routes = Routes({bus.topics.launch_requested: resolver.handle})
    await serve(bus, "kiln-resolver", routes, stop, max_in_flight=16)

Handlers follow ``kilnbus.dispatch``'s contract (return the records to publish; raise a
``kilnbus.errors.KilnError`` for an outcome the user should hear), and get the same treatment on
either bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, Self

from kilnbus.codec import AvroCodec, default_codec
from kilnbus.consumer import BusConsumer
from kilnbus.dispatch import Delivery, Handler, Outgoing
from kilnbus.metrics import serve_metrics
from kilnbus.producer import BusProducer
from kilnbus.reader import KafkaLogReader, LogReader, Position, Start
from kilnbus.records import Record
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic, Topics, ensure_topics

log = logging.getLogger(__name__)


class Routes(Mapping[Topic, Handler]):
    """Which handler takes the records of which topic; itself a handler that dispatches by topic."""

    def __init__(self, table: Mapping[Topic, Handler]) -> None:
        if not table:
            raise ValueError("Routes needs at least one topic")
        self._table = dict(table)
        self._by_name = {topic.name: handler for topic, handler in self._table.items()}

    def __getitem__(self, topic: Topic) -> Handler:
        return self._table[topic]

    def __iter__(self) -> Iterator[Topic]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def topics(self) -> list[Topic]:
        return list(self._table)

    async def __call__(self, delivery: Delivery[Any]) -> Iterable[Outgoing] | None:
        return await self._by_name[delivery.topic](delivery)

    def __repr__(self) -> str:
        return f"Routes({ {t.name: getattr(h, '__qualname__', h) for t, h in self._table.items()} })"


def as_routes(routes: Routes | Sequence[Topic], handler: Handler | None = None) -> Routes:
    """``routes`` as they are, or one handler for every topic of a list."""
    if isinstance(routes, Routes):
        if handler is not None:
            raise TypeError("give either Routes or topics and a handler, not both")
        return routes
    if handler is None:
        raise TypeError("a list of topics needs a handler")
    return Routes({topic: handler for topic in routes})


class Consumer(Protocol):
    """One member of a consumer group: ``start()`` joins, ``run(stop)`` consumes until ``stop`` is set."""

    async def start(self) -> None: ...
    async def run(self, stop: asyncio.Event) -> None: ...


class Bus(Protocol):
    """Publishing, consuming in groups, and reading the log: what a service needs of Kafka."""

    settings: BusSettings
    topics: Topics

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...

    async def publish(self, topic: Topic, key: str | None, record: Record) -> Position:
        """Publish ``record`` and wait until the bus has it; where it landed."""
        ...

    def consumer(self, group: str, routes: Routes | Sequence[Topic], handler: Handler | None = None,
                 **options: Any) -> Consumer:
        """A member of ``group`` (taken as given) running ``routes``.

        Options are BusConsumer's (``max_in_flight``, ``max_attempts``, ``retry_backoff_s``,
        ``shutdown_grace_s``, ``failure_events`` (default: the phase events; None: no failed
        events), ``service``, ``max_crashes``, ...); dead letters go to ``topics.dead_letter``.
        """
        ...

    def reader(self, topics: Sequence[Topic | str], *, start: Start = "beginning") -> LogReader:
        """A group-less reader of every partition of ``topics`` (see ``kilnbus.reader``)."""
        ...


class KafkaBus:
    """``Bus`` over Kafka: topics ensured and a producer at start, BusConsumers and KafkaLogReaders on demand."""

    def __init__(self, settings: BusSettings, *, codec: AvroCodec | None = None, ensure: bool = True,
                 **producer_options: Any) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self._codec = codec or default_codec()
        self._ensure = ensure
        self._producer_options = producer_options
        self._producer: BusProducer | None = None

    @property
    def producer(self) -> BusProducer:
        """The producer, for code not yet moved onto ``publish`` (e.g. ``send`` without waiting)."""
        assert self._producer is not None, "KafkaBus used before start()"
        return self._producer

    async def start(self) -> None:
        if self._ensure:
            await ensure_topics(self.settings)
        producer = BusProducer(self.settings, self._codec, **self._producer_options)
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def publish(self, topic: Topic, key: str | None, record: Record) -> Position:
        meta = await self.producer.publish(topic, key, record)
        return Position(meta.topic, meta.partition, meta.offset)

    def consumer(self, group: str, routes: Routes | Sequence[Topic], handler: Handler | None = None,
                 **options: Any) -> BusConsumer:
        table = as_routes(routes, handler)
        options.setdefault("failure_events", self.topics.phase_events)
        options.setdefault("codec", self._codec)
        return BusConsumer(self.settings, group, table.topics, table, producer=self, dead_letter=self.topics.dead_letter,
                           **options)

    def reader(self, topics: Sequence[Topic | str], *, start: Start = "beginning") -> KafkaLogReader:
        return KafkaLogReader(self.settings, topics, start=start)


async def serve(bus: Bus, group: str, routes: Routes, stop: asyncio.Event, **options: Any) -> None:
    """Run ``routes`` as a member of the service's group ``group`` (prefixed as settings say) until ``stop``.

    The bus must be started. Requests set aside (a bug, a crash loop) become failed events their
    users see at once; crash markers follow ``KILN_HANDLER_MAX_CRASHES``.
    """
    serve_metrics(bus.settings)
    # The service is named after the group as the service calls it, not as prefixed for a second Kiln.
    options = {"max_crashes": bus.settings.handler_max_crashes, "service": group.removeprefix("kiln-"), **options}
    group = bus.settings.group_id(group)
    consumer = bus.consumer(group, routes, **options)
    await consumer.start()
    log.info("%s: consuming %s", group, [t.name for t in routes.topics])
    await consumer.run(stop)
