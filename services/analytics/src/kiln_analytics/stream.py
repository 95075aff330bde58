"""The faust application: phase events in, one table of request records out.

The table is keyed by request id, like the phase-events topic, so it is co-partitioned with it and
needs no repartitioning. Faust keeps it in a changelog topic: a restarted replica of the same group
recovers it from there, and a new group (a new application id) builds it afresh from the log.
Events that cannot be decoded are set aside on the dead-letter topic and counted; the table goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
from kilnbus import DeadLetter, DecodeError, PhaseEvent, Topics, default_codec

from kiln_analytics import metrics
from kiln_analytics.index import Index
from kiln_analytics.requests import RequestRecord, fold
from kiln_analytics.settings import Settings

log = logging.getLogger(__name__)


class Analytics:
    """The faust app, its table and the index answered from; ``on_ready`` runs after each recovery."""

    def __init__(self, settings: Settings, on_ready: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.index = Index()
        self.ready = False
        self._on_ready = on_ready
        self._codec = default_codec()
        topics = Topics(settings.topic_prefix)
        self.group = settings.analytics_group
        datadir = Path(settings.analytics_data_dir) / self.group
        datadir.parent.mkdir(parents=True, exist_ok=True)  # faust makes only the last folder
        self.app = faust.App(
            self.group,
            broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
            broker_credentials=_credentials(settings),
            store=settings.analytics_store,
            datadir=str(datadir),
            web_enabled=False,
            topic_partitions=settings.topic_partitions,
            topic_replication_factor=settings.topic_replication,
            consumer_auto_offset_reset="earliest",  # a new group reads the whole log
            table_standby_replicas=0,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.source = self.app.topic(topics.phase_events.name, key_type=bytes, value_type=bytes,
                                     partitions=settings.topic_partitions)
        self.dead_letter = self.app.topic(topics.dead_letter.name, key_type=bytes, value_type=bytes)
        # Keys and values are raw bytes (the app's serializers): the record is JSON encoded here.
        # use_partitioner: a batch's records are written after its events, so the changelog partition
        # comes from hashing the key (as the services' producers do), not from "the current event".
        self.table = self.app.Table("requests", partitions=settings.topic_partitions, key_type=bytes, value_type=bytes,
                                    use_partitioner=True)
        self.table.on_recover(self._recovered)
        # Read from the index at each scrape: nothing to keep in step by hand.
        metrics.RUNNING_SERVERS.set_function(lambda: len(self.index.running()))
        self.app.agent(self.source, name="phase-events")(self._consume)

    async def _recovered(self) -> None:
        self.index.rebuild(RequestRecord.loads(v) for v in self.table.values())
        log.info("%s: table recovered with %d requests", self.group, len(self.index))
        if not self.ready:
            self.ready = True
            if self._on_ready is not None:
                self._on_ready()

    def records(self) -> list[RequestRecord]:
        return [RequestRecord.loads(v) for v in self.table.values()]

    def record(self, request_id: str) -> RequestRecord | None:
        value = self.table.get(request_id.encode())
        return RequestRecord.loads(value) if value is not None else None

    async def _consume(self, stream: Any) -> None:
        # Events come in batches and each request's record is written to the table once per batch,
        # however many of its events the batch held: a changelog write costs far more than a fold.
        # The batch's events are acknowledged (and their offsets become committable) only after it.
        async for batch in stream.take_events(self.settings.analytics_batch, within=self.settings.analytics_batch_wait_s):
            dirty: dict[bytes, RequestRecord] = {}
            for event in batch:
                metrics.EVENTS.inc()
                try:
                    phase_event = self._codec.decode(event.value, PhaseEvent)
                except DecodeError as exc:
                    await self._set_aside(event, str(exc))
                    continue
                assert isinstance(phase_event, PhaseEvent)
                self._fold_into(dirty, phase_event)
            self._write(dirty)

    def _fold_into(self, dirty: dict[bytes, RequestRecord], event: PhaseEvent) -> None:
        key = event.request_id.encode()
        before = dirty.get(key)
        if before is None and (stored := self.table.get(key)) is not None:
            before = RequestRecord.loads(stored)
        after = fold(before, event)
        if after is not None:
            dirty[key] = after

    def _write(self, dirty: dict[bytes, RequestRecord]) -> None:
        for key, record in dirty.items():
            self.table[key] = record.dumps()
            self.index.update(record)

    async def _set_aside(self, event: Any, error: str) -> None:
        metrics.MALFORMED.inc()
        message = event.message
        log.warning("set aside malformed event at %s[%d]@%d: %s", message.topic, message.partition, message.offset, error)
        letter = DeadLetter(source_topic=message.topic, source_partition=message.partition, source_offset=message.offset,
                            consumer_group=self.group, error=error[:2000], key=event.key, value=event.value)
        await self.dead_letter.send(key=event.key, value=self._codec.encode(letter))


def _credentials(settings: Settings) -> Any:
    """Faust's form of the bus's SASL/TLS settings (None for plaintext)."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        ssl_context = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism is None:
        return faust.SSLCredentials(ssl_context)
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                 mechanism=settings.kafka_sasl_mechanism, ssl_context=ssl_context)
