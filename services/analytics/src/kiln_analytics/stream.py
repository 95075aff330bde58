"""The faust application: phase events in, one table of request records out.

The table is keyed by request id, like the phase-events topic, so it is co-partitioned with it and
needs no repartitioning. Faust keeps it in a changelog topic: a restarted replica of the same group
recovers it from there, and a new group (a new application id) builds it afresh from the log.
Events that cannot be decoded are set aside on the dead-letter topic and counted; the table goes on.
The fold itself is ``kiln_analytics.table``'s; the faust app (the Kafka client) is made by
``kiln_analytics.bootstrap``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import faust

from kiln_analytics import metrics
from kiln_analytics.index import Index
from kiln_analytics.requests import RequestRecord
from kiln_analytics.settings import Settings
from kiln_analytics.table import RequestTable
from kilnbus import DeadLetter, DecodeError, PhaseEvent, Topics, default_codec

log = logging.getLogger(__name__)


class Analytics:
    """The faust app's topics, table and agent, and the ``RequestTable`` over that table.

    ``on_ready`` runs after the first recovery.
    """

    def __init__(self, settings: Settings, app: faust.App, on_ready: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.app = app
        self.ready = False
        self._on_ready = on_ready
        self._codec = default_codec()
        topics = Topics(settings.topic_prefix)
        self.group = settings.analytics_group
        self.source = app.topic(topics.phase_events.name, key_type=bytes, value_type=bytes,
                                partitions=settings.topic_partitions)
        self.dead_letter = app.topic(topics.dead_letter.name, key_type=bytes, value_type=bytes)
        # Keys and values are raw bytes (the app's serializers): the record is JSON encoded by the table.
        # use_partitioner: a batch's records are written after its events, so the changelog partition
        # comes from hashing the key (as the services' producers do), not from "the current event".
        self.table = app.Table("requests", partitions=settings.topic_partitions, key_type=bytes, value_type=bytes,
                               use_partitioner=True)
        self.requests = RequestTable(self.table, self._codec)
        self.table.on_recover(self._recovered)
        # Read from the index at each scrape: nothing to keep in step by hand.
        metrics.RUNNING_SERVERS.set_function(lambda: len(self.index.running()))
        app.agent(self.source, name="phase-events")(self._consume)

    @property
    def index(self) -> Index:
        return self.requests.index

    async def start(self) -> None:
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()

    async def _recovered(self) -> None:
        self.requests.recovered()
        log.info("%s: table recovered with %d requests", self.group, len(self.index))
        if not self.ready:
            self.ready = True
            if self._on_ready is not None:
                self._on_ready()

    def records(self) -> list[RequestRecord]:
        return self.requests.records()

    def record(self, request_id: str) -> RequestRecord | None:
        return self.requests.record(request_id)

    async def _consume(self, stream: Any) -> None:
        # The batch's events are acknowledged (and their offsets become committable) only after it.
        async for batch in stream.take_events(self.settings.analytics_batch, within=self.settings.analytics_batch_wait_s):
            events: list[PhaseEvent] = []
            for event in batch:
                metrics.EVENTS.inc()
                try:
                    events.append(self.requests.decode(event.value))
                except DecodeError as exc:
                    await self._set_aside(event, str(exc))
            self.requests.fold(events)

    async def _set_aside(self, event: Any, error: str) -> None:
        metrics.MALFORMED.inc()
        message = event.message
        log.warning("set aside malformed event at %s[%d]@%d: %s", message.topic, message.partition, message.offset, error)
        letter = DeadLetter(source_topic=message.topic, source_partition=message.partition, source_offset=message.offset,
                            consumer_group=self.group, error=error[:2000], key=event.key, value=event.value)
        await self.dead_letter.send(key=event.key, value=self._codec.encode(letter))
