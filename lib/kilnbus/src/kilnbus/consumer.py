"""Consuming records at least once: an offset is committed only after its handler succeeded.

A message that cannot be decoded, or whose handler keeps failing, is set aside on the
dead-letter topic (with where it came from and why) and the consumer goes on: nothing is dropped
silently and one bad message never stops a partition.

Handlers may run concurrently (``max_in_flight``) for services whose work is long, such as builds;
the committed offset of a partition is then the first offset not yet handled, so a crash
redelivers exactly the unfinished work. Handlers must therefore be idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from kilnbus import metrics
from kilnbus.codec import AvroCodec, DecodeError, default_codec
from kilnbus.producer import BusProducer
from kilnbus.records import DeadLetter, Record
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record)


class Delivery(NamedTuple, Generic[R]):
    """A decoded record and where it sits in the log."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: R
    timestamp_ms: int


Handler = Callable[[Delivery[Any]], Awaitable[None]]


class _PartitionProgress:
    """Which offsets of one partition are being handled, and how far it is safe to commit."""

    def __init__(self) -> None:
        self.in_flight: set[int] = set()
        self.next_offset: int | None = None  # one past the highest offset handled
        self.committed: int | None = None

    def committable(self) -> int | None:
        if self.in_flight:
            return min(self.in_flight)
        return self.next_offset


class BusConsumer:
    """A consumer-group member that decodes, handles, retries, dead-letters and commits.

    ``run(stop)`` returns after ``stop`` is set and the records in hand are finished (or the
    grace period ran out), their offsets committed and the group left.
    """

    def __init__(
        self,
        settings: BusSettings,
        group_id: str,
        topics: list[Topic],
        handler: Handler,
        *,
        producer: BusProducer,
        dead_letter: Topic,
        codec: AvroCodec | None = None,
        max_in_flight: int = 1,
        max_attempts: int = 5,
        retry_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        shutdown_grace_s: float = 30.0,
        commit_interval_s: float = 0.2,
        **overrides: Any,
    ) -> None:
        self.group_id = group_id
        self._topics = {t.name: t for t in topics}
        self._handler = handler
        self._producer = producer
        self._dead_letter = dead_letter
        self._codec = codec or default_codec()
        self._max_attempts = max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self._shutdown_grace_s = shutdown_grace_s
        self._commit_interval_s = commit_interval_s
        self._inline = max_in_flight == 1
        self._slots = asyncio.Semaphore(max_in_flight)
        self._revoked: set[TopicPartition] = set()
        self._commit_task: asyncio.Task[None] | None = None
        self._last_commit = 0.0
        self._progress: dict[TopicPartition, _PartitionProgress] = {}
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._consumer = AIOKafkaConsumer(
            **settings.client_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset=overrides.pop("auto_offset_reset", "earliest"),
            **overrides,
        )
        self.handled = 0
        self.dead_lettered = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._consumer.subscribe(list(self._topics), listener=_Rebalance(self))
        await self._consumer.start()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then shut down cleanly."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                batches = await self._fetch(stopped)
                for tp, records in batches.items():
                    progress = self._progress.setdefault(tp, _PartitionProgress())
                    for record in records:
                        # A record not started is not committed: the next member of the group gets it.
                        if stop.is_set() or tp in self._revoked:
                            break
                        if self._inline:
                            await self._process(record)
                            progress.next_offset = record.offset + 1
                            continue
                        await self._slots.acquire()
                        if stop.is_set() or tp in self._revoked:
                            self._slots.release()
                            break
                        self._start_task(tp, progress, record)
                self._commit_soon()
        finally:
            stopped.cancel()
            await self._shutdown()

    async def _fetch(self, stopped: asyncio.Future[Any]) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """The next batch, or nothing once ``stopped`` resolves (a fetch may wait up to half a second)."""
        fetch = asyncio.ensure_future(self._consumer.getmany(timeout_ms=500))
        done, _ = await asyncio.wait((fetch, stopped), return_when=asyncio.FIRST_COMPLETED)
        if fetch in done:
            return fetch.result()
        fetch.cancel()
        return {}

    async def _shutdown(self) -> None:
        if self._commit_task is not None:
            await asyncio.wait([self._commit_task])
        if self._tasks:
            log.info("%s: finishing %d record(s) in hand", self.group_id, len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._shutdown_grace_s)
            for task in pending:
                task.cancel()  # their offsets stay uncommitted and will be redelivered
            if pending:
                await asyncio.wait(pending)
        await self._commit()
        await self._consumer.stop()  # leaves the group, so partitions move at once

    # -- handling ------------------------------------------------------------------------------

    def _start_task(self, tp: TopicPartition, progress: _PartitionProgress, record: ConsumerRecord[bytes, bytes]) -> None:
        progress.in_flight.add(record.offset)
        task = asyncio.create_task(self._process(record))
        self._tasks[task] = tp

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.pop(t, None)
            self._slots.release()
            progress.in_flight.discard(record.offset)
            if not t.cancelled() and t.exception() is None:
                progress.next_offset = max(progress.next_offset or 0, record.offset + 1)
            elif not t.cancelled():
                log.error("%s: record %s@%d left unhandled: %r", self.group_id, tp, record.offset, t.exception())
                # Not handled and not set aside: hold the partition's commit point before it.
                progress.in_flight.add(record.offset)

        task.add_done_callback(finished)

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> None:
        topic = self._topics[record.topic]
        try:
            value = self._codec.decode(record.value, expect=topic.record)
        except DecodeError as exc:
            log.error("%s: undecodable message at %s[%d]@%d: %s; set aside",
                      self.group_id, record.topic, record.partition, record.offset, exc)
            await self._set_aside(record, f"decode: {exc}", "undecodable")
            return
        delivery = Delivery(record.topic, record.partition, record.offset,
                            record.key.decode() if record.key is not None else None, value, record.timestamp)
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                await self._handler(delivery)
                self.handled += 1
                metrics.HANDLED.labels(self.group_id, record.topic).inc()
                metrics.HANDLE_SECONDS.labels(self.group_id, record.topic).observe(time.monotonic() - started)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                final = attempt >= self._max_attempts or not getattr(exc, "retriable", True)
                if final:
                    log.exception("%s: handler failed %d time(s) on %s@%d; set aside",
                                  self.group_id, attempt, record.topic, record.offset)
                    await self._set_aside(record, "".join(traceback.format_exception_only(exc)).strip(), "handler_failed")
                    return
                metrics.HANDLER_RETRIES.labels(self.group_id, record.topic).inc()
                delay = min(self._retry_backoff_s * 2 ** (attempt - 1), self._max_backoff_s)
                log.warning("%s: handler failed on %s@%d (%r); retry %d in %.1fs",
                            self.group_id, record.topic, record.offset, exc, attempt, delay)
                await asyncio.sleep(delay)

    async def _set_aside(self, record: ConsumerRecord[bytes, bytes], error: str, reason: str) -> None:
        letter = DeadLetter(
            source_topic=record.topic, source_partition=record.partition, source_offset=record.offset,
            consumer_group=self.group_id, error=error[:4000], key=record.key, value=record.value,
        )
        delay = self._retry_backoff_s
        while True:  # the broker may be down; the record must not count as handled until set aside
            try:
                await self._producer.publish(self._dead_letter, record.key.decode(errors="replace") if record.key else None, letter)
                self.dead_lettered += 1
                metrics.DEAD_LETTERED.labels(self.group_id, record.topic, reason).inc()
                return
            except KafkaError as exc:
                log.warning("%s: dead-letter publish failed (%r); retrying in %.1fs", self.group_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)

    # -- offsets -------------------------------------------------------------------------------

    def _commit_soon(self) -> None:
        """Commit handled offsets in the background, at most once per interval, never two at a time.

        Committing after every batch would put a broker round trip between every fetch; a crash
        between commits only redelivers records that idempotent handlers already saw.
        """
        if self._commit_task is not None and not self._commit_task.done():
            return
        now = time.monotonic()
        if now - self._last_commit < self._commit_interval_s:
            return
        self._last_commit = now
        self._commit_task = asyncio.create_task(self._commit())

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, progress in self._progress.items():
            if only is not None and tp not in only:
                continue
            at = progress.committable()
            if at is not None and at != progress.committed:
                offsets[tp] = OffsetAndMetadata(at, "")
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            # A rebalance or an unreachable broker: nothing is lost, the records are redelivered.
            log.warning("%s: commit failed (%r); will retry", self.group_id, exc)
            return
        for tp, meta in offsets.items():
            self._progress[tp].committed = meta.offset

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoked |= revoked
        tasks = [t for t, tp in self._tasks.items() if tp in revoked]
        if tasks:
            await asyncio.wait(tasks, timeout=self._shutdown_grace_s)
        if self._commit_task is not None:
            await asyncio.wait([self._commit_task])
        await self._commit(only=revoked)
        for tp in revoked:
            self._progress.pop(tp, None)

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._revoked -= assigned

    async def lag(self) -> int:
        """Messages on the assigned partitions not yet consumed by this member."""
        total = 0
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            try:
                total += max(0, high - await self._consumer.position(tp))
            except KafkaError:
                continue
        return total


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Finishes and commits the work of partitions moving to another member."""

    def __init__(self, consumer: BusConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._consumer._on_assigned(set(assigned))
