"""Consuming records at least once: an offset is committed only after its handler succeeded.

A message that cannot be decoded, or whose handler keeps failing, is set aside on the
dead-letter topic (with where it came from and why) and the consumer goes on: nothing is dropped
silently and one bad message never stops a partition.

Handlers may run concurrently (``max_in_flight``) for services whose work is long, such as builds;
the committed offset of a partition is then the first offset not yet handled, so a crash
redelivers exactly the unfinished work. Handlers must therefore be idempotent.

Decoding, handling, retries, publishing what the handler returned and setting records aside are
``kilnbus.dispatch``'s (shared with the in-memory bus; the rules are in ``kilnbus.errors``): a
``KilnError`` is an outcome for the user (retried first when ``retriable``), a transient network or
broker failure is retried with back-off up to ``max_attempts``, anything else is a bug, set aside at
once with a ``failed`` event (cause ``internal_error``) when ``failure_events`` is set.

What is this module's own is where a record stands in the group:

- A record that *crashes* the process (OOM-killed, SIGKILL, a segfault) raises nothing anyone can
  catch. So before its handler starts, the consumer commits an attempt marker for it in the
  metadata of the partition's committed offset (``AttemptLedger``); a finished record's marker is
  dropped at the next commit. The markers live in the consumer group, so they survive the process
  and follow the partition to another member: a redelivered record whose markers show
  ``max_crashes`` attempts begun and never finished is set aside (dead letter and ``failed``
  event, cause ``repeated_crash``) instead of taking down the next replica too. Records that were in
  hand beside it during each of those crashes are counted as well (the consumer cannot tell which
  record killed it), unless the consumer marks an attempt only where its handler calls
  ``begin_attempt()`` (``attempts_begin_in_handler``: the builder, whose records mostly wait in its
  queue). An orderly stop (SIGTERM, a rebalance) does not count.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from kilnbus.codec import AvroCodec, DecodeError, default_codec
from kilnbus.dispatch import (
    CRASH_MESSAGE,
    INTERNAL_ERROR_MESSAGE,
    Delivery,
    DispatchCounts,
    Dispatcher,
    Handler,
    Publisher,
    failure_event,
)
from kilnbus.errors import TransientError, is_transient
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic

log = logging.getLogger(__name__)
REVOKE_CANCEL_S = 15.0  # how long a record cancelled at revocation may take to wind down (cleanup)

# Re-exported: they lived here before kilnbus.dispatch and kilnbus.errors held them.
__all__ = [
    "CRASH_MESSAGE",
    "INTERNAL_ERROR_MESSAGE",
    "AttemptLedger",
    "BusConsumer",
    "Delivery",
    "Handler",
    "TransientError",
    "begin_attempt",
    "failure_event",
    "is_transient",
]

# The record in hand's "attempt begins now", for consumers that let the handler say when (tasks the
# handler starts inherit it, so a build started for the record can call it when it takes its slot).
_ATTEMPT: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar("kilnbus_attempt",
                                                                                              default=None)


async def begin_attempt() -> None:
    """From here on, a crash of this process counts against the record being handled.

    For consumers made with ``attempts_begin_in_handler=True``; elsewhere (and when called twice)
    it does nothing.
    """
    begin = _ATTEMPT.get()
    if begin is not None:
        await begin()


class AttemptLedger:
    """Attempts begun and not yet finished, per record, kept as the metadata of committed offsets.

    ``begin`` is called before a record's handler starts and its result committed before the handler
    runs; ``finish`` after it ended (handled or set aside); ``interrupt`` when it was stopped on
    purpose (shutdown, rebalance), which is not a crash. A member that takes a partition over
    ``load``s what the previous one committed, so a record redelivered after a crash shows how many
    attempts at it never came back.
    """

    PREFIX = "kiln-attempts:1:"
    MAX_METADATA = 3500  # brokers refuse more than offset.metadata.max.bytes (4096 by default)

    def __init__(self) -> None:
        self._counts: dict[TopicPartition, dict[int, int]] = {}
        self.loaded: set[TopicPartition] = set()

    def load(self, tp: TopicPartition, metadata: str | None) -> None:
        """Take the markers the partition's last commit carried."""
        self._counts[tp] = self.decode(metadata)
        self.loaded.add(tp)

    def begin(self, tp: TopicPartition, offset: int) -> int:
        """Record one more attempt at ``offset``; return how many were begun before (and never finished)."""
        counts = self._counts.setdefault(tp, {})
        before = counts.get(offset, 0)
        counts[offset] = before + 1
        return before

    def count(self, tp: TopicPartition, offset: int) -> int:
        """Attempts at ``offset`` begun and never finished, as known now."""
        return self._counts.get(tp, {}).get(offset, 0)

    def finish(self, tp: TopicPartition, offset: int) -> None:
        self._counts.get(tp, {}).pop(offset, None)

    def interrupt(self, tp: TopicPartition, offset: int) -> None:
        """The attempt in hand at ``offset`` was stopped on purpose: it does not count."""
        counts = self._counts.get(tp, {})
        if counts.get(offset, 0) > 1:
            counts[offset] -= 1
        else:
            counts.pop(offset, None)

    def forget(self, tp: TopicPartition) -> None:
        self._counts.pop(tp, None)
        self.loaded.discard(tp)

    def metadata(self, tp: TopicPartition, committed_offset: int) -> str:
        """The markers at or past ``committed_offset`` (earlier records are done), encoded for a commit."""
        counts = {o: n for o, n in self._counts.get(tp, {}).items() if o >= committed_offset}
        return self.encode(counts)

    @classmethod
    def encode(cls, counts: dict[int, int]) -> str:
        if not counts:
            return ""
        # Highest counts first, so that if the list must be cut, the likeliest culprits are kept.
        items = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        out = cls.PREFIX
        for offset, count in items:
            entry = f"{offset}={count},"
            if len(out) + len(entry) > cls.MAX_METADATA:
                log.warning("attempt markers cut at %d of %d records in hand", out.count(","), len(items))
                break
            out += entry
        return out.rstrip(",")

    @classmethod
    def decode(cls, metadata: str | None) -> dict[int, int]:
        if not metadata or not metadata.startswith(cls.PREFIX):
            return {}
        counts: dict[int, int] = {}
        for entry in metadata[len(cls.PREFIX):].split(","):
            if m := re.fullmatch(r"(\d+)=(\d+)", entry):
                counts[int(m.group(1))] = int(m.group(2))
        return counts


class _PartitionProgress:
    """Which offsets of one partition are being handled, and how far it is safe to commit."""

    def __init__(self) -> None:
        self.in_flight: set[int] = set()
        self.next_offset: int | None = None  # one past the highest offset handled
        self.committed: tuple[int, str] | None = None  # offset and metadata of the last commit

    def committable(self) -> int | None:
        if self.in_flight:
            return min(self.in_flight)
        return self.next_offset


class BusConsumer(DispatchCounts):
    """A consumer-group member that decodes, handles, retries, dead-letters and commits.

    ``run(stop)`` returns after ``stop`` is set and the records in hand are finished (or the
    grace period ran out), their offsets committed and the group left.

    ``failure_events`` (the phase-events topic) and ``service`` turn a request set aside into a
    ``failed`` event for its user; ``max_crashes`` (0: off) is how many unfinished attempts at a
    record set it aside (see the module's description).
    """

    def __init__(
        self,
        settings: BusSettings,
        group_id: str,
        topics: list[Topic],
        handler: Handler,
        *,
        producer: Publisher,
        dead_letter: Topic,
        codec: AvroCodec | None = None,
        max_in_flight: int = 1,
        max_attempts: int = 5,
        retry_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        shutdown_grace_s: float = 30.0,
        commit_interval_s: float = 0.2,
        failure_events: Topic | None = None,
        service: str = "",
        max_crashes: int = 3,
        attempts_begin_in_handler: bool = False,
        cancel_on_revoke: bool = False,
        **overrides: Any,
    ) -> None:
        self.group_id = group_id
        self._attempts_in_handler = attempts_begin_in_handler
        self._begun: set[tuple[TopicPartition, int]] = set()  # attempts counted and not yet finished
        self._max_crashes = max_crashes
        self._ledger = AttemptLedger()
        self._commit_lock = asyncio.Lock()  # commits carry markers: an older one must not land after a newer
        self._topics = {t.name: t for t in topics}
        # Decoding, handling, retries and setting aside: the same for every bus (kilnbus.dispatch).
        self.dispatcher = Dispatcher(group=group_id, topics=topics, handler=handler, publisher=producer,
                                     dead_letter=dead_letter, codec=codec or default_codec(), failure_events=failure_events,
                                     service=service, max_attempts=max_attempts, retry_backoff_s=retry_backoff_s,
                                     max_backoff_s=max_backoff_s)
        self._shutdown_grace_s = shutdown_grace_s
        self._cancel_on_revoke = cancel_on_revoke
        self._commit_interval_s = commit_interval_s
        self._inline = max_in_flight == 1
        self._slots = asyncio.Semaphore(max_in_flight)
        self._revoked: set[TopicPartition] = set()
        self._commit_task: asyncio.Task[None] | None = None
        self._last_commit = 0.0
        self._progress: dict[TopicPartition, _PartitionProgress] = {}
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        # Markers of records begun while a commit is in flight share the next commit (_begin).
        self._marker_flush: dict[TopicPartition, tuple[asyncio.Future[bool], list[int]]] = {}
        self._marker_tasks: set[asyncio.Task[None]] = set()
        # The group waits this long for a member to rejoin after a rebalance begins. aiokafka's default
        # is the session timeout (10 s), shorter than _on_revoked may take (the grace, then cancelling
        # what is left): a member busy with a long record was dropped, rejoined, and started the next
        # rebalance, over and over, while two members ran the same record (found on Kubernetes).
        overrides.setdefault("rebalance_timeout_ms", max(overrides.get("session_timeout_ms", 10_000),
                                                         int((shutdown_grace_s + REVOKE_CANCEL_S + 20) * 1000)))
        self._consumer = AIOKafkaConsumer(
            **settings.client_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset=overrides.pop("auto_offset_reset", "earliest"),
            group_instance_id=overrides.pop("group_instance_id", settings.kafka_group_instance_id),
            **overrides,
        )

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
                    if self._max_crashes and tp not in self._ledger.loaded:
                        await self._load_markers(tp)
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
            batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = fetch.result()
            return batch
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
        if self._marker_tasks:
            await asyncio.gather(*self._marker_tasks, return_exceptions=True)
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
            else:
                if not t.cancelled():
                    log.error("%s: record %s@%d left unhandled: %r", self.group_id, tp, record.offset, t.exception())
                # Not handled and not set aside (cancelled at shutdown, or failed): hold the partition's
                # commit point before it, or a later record's success would commit past it.
                progress.in_flight.add(record.offset)

        task.add_done_callback(finished)

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            value = self.dispatcher.decode(record)
        except DecodeError as exc:
            await self.dispatcher.set_aside_undecodable(record, exc)
            return
        if not self._max_crashes:
            await self.dispatcher.handle(record, value)
            return
        tp = TopicPartition(record.topic, record.partition)
        token = None
        if self._attempts_in_handler:
            crashes = self._ledger.count(tp, record.offset)

            async def begin() -> None:
                if (tp, record.offset) not in self._begun:  # once per handling
                    await self._begin(tp, record.offset)

            token = _ATTEMPT.set(begin)
        else:
            crashes = await self._begin(tp, record.offset)
        try:
            if crashes >= self._max_crashes:
                await self.dispatcher.set_aside_crashed(record, value, crashes)
            else:
                await self.dispatcher.handle(record, value)
        except asyncio.CancelledError:
            if (tp, record.offset) in self._begun:
                self._ledger.interrupt(tp, record.offset)  # stopped on purpose: not a crash
                self._begun.discard((tp, record.offset))
            raise
        finally:
            if token is not None:
                _ATTEMPT.reset(token)
        self._ledger.finish(tp, record.offset)
        self._begun.discard((tp, record.offset))

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
        async with self._commit_lock:
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, progress in self._progress.items():
                if only is not None and tp not in only:
                    continue
                at = progress.committable()
                if at is None:
                    continue
                state = (at, self._ledger.metadata(tp, at))
                if state != progress.committed:
                    offsets[tp] = OffsetAndMetadata(*state)
            await self._write_offsets(offsets)

    async def _write_offsets(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> bool:
        """Commit ``offsets`` (with their markers); False if the broker refused (nothing lost: redelivered)."""
        if not offsets:
            return True
        try:
            await self._commit_offsets(offsets)
        except KafkaError as exc:
            # A rebalance or an unreachable broker: nothing is lost, the records are redelivered.
            log.warning("%s: commit failed (%r); will retry", self.group_id, exc)
            return False
        for tp, meta in offsets.items():
            if tp in self._progress:
                self._progress[tp].committed = (meta.offset, meta.metadata)
        return True

    async def _commit_offsets(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        await self._consumer.commit(offsets)

    async def _read_committed(self, tp: TopicPartition) -> OffsetAndMetadata | None:
        # aiokafka's public committed() drops the metadata, which is where the markers are. The public
        # AIOKafkaAdminClient.list_consumer_group_offsets returns it, but (aiokafka 0.14) does not retry
        # a coordinator that is loading or moved, and turns a per-partition error into the response's
        # top-level code; the coordinator's own fetch below handles both, so it stays until that is fixed.
        found = await self._consumer._coordinator.fetch_committed_offsets([tp])
        meta: OffsetAndMetadata | None = found.get(tp)
        return meta

    async def _load_markers(self, tp: TopicPartition) -> None:
        """Read the attempt markers the partition's last commit carried (by this member or another)."""
        try:
            meta = await self._read_committed(tp)
        except KafkaError as exc:
            # Without them a poison record gets max_crashes more tries; not a reason to stop consuming.
            log.warning("%s: could not read attempt markers of %s (%r)", self.group_id, tp, exc)
            meta = None
        self._ledger.load(tp, meta.metadata if meta is not None else None)
        if counts := self._ledger.decode(meta.metadata if meta is not None else None):
            log.warning("%s: %s was taken over with %d record(s) whose handling never finished: %s",
                        self.group_id, tp, len(counts), counts)

    async def _begin(self, tp: TopicPartition, offset: int) -> int:
        """Count an attempt at ``offset`` and commit that before its handler runs; return the attempts before."""
        before = self._ledger.begin(tp, offset)
        self._begun.add((tp, offset))
        # One commit at a time carries markers; records begun meanwhile join the next one rather than
        # each waiting for a commit of its own (with many in hand, one round trip each queued them up).
        pending = self._marker_flush.get(tp)
        if pending is None:
            pending = (asyncio.get_running_loop().create_future(), [offset])
            self._marker_flush[tp] = pending
            task = asyncio.create_task(self._flush_markers(tp, pending))
            self._marker_tasks.add(task)
            task.add_done_callback(self._marker_tasks.discard)
        else:
            pending[1].append(offset)
        if not await asyncio.shield(pending[0]):
            log.warning("%s: attempt marker for %s@%d not recorded; handling it anyway", self.group_id, tp, offset)
        return before

    async def _flush_markers(self, tp: TopicPartition, pending: tuple[asyncio.Future[bool], list[int]]) -> None:
        """Commit the markers of every record that joined ``pending`` (and any already recorded)."""
        done, offsets = pending
        try:
            async with self._commit_lock:
                if self._marker_flush.get(tp) is pending:
                    del self._marker_flush[tp]  # records begun from now on wait for the next commit
                progress = self._progress.setdefault(tp, _PartitionProgress())
                at = progress.committable()
                low = min(offsets)
                at = low if at is None else min(at, low)  # never past a record not yet handled
                state = (at, self._ledger.metadata(tp, at))
                written = await self._write_offsets({tp: OffsetAndMetadata(*state)})
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            raise
        done.set_result(written)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoked |= revoked
        tasks = [t for t, tp in self._tasks.items() if tp in revoked]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._shutdown_grace_s)
            # Past the grace they are the next owner's, which handles them again. With cancel_on_revoke
            # they are stopped here, so that one record is not handled twice at once (a build built by
            # two members); without it they run on, for handlers whose second run joins the first (a
            # launch the hub already started).
            if self._cancel_on_revoke:
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=REVOKE_CANCEL_S)
        for tp in revoked:
            # Not finished within the grace: the next owner redelivers them, and this is no crash.
            for offset in self._progress[tp].in_flight if tp in self._progress else ():
                if (tp, offset) in self._begun:  # a record that only waited was never counted
                    self._ledger.interrupt(tp, offset)
                    self._begun.discard((tp, offset))
        if self._commit_task is not None:
            await asyncio.wait([self._commit_task])
        await self._commit(only=revoked)
        for tp in revoked:
            self._progress.pop(tp, None)
            self._ledger.forget(tp)

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._revoked -= assigned
        for tp in assigned:
            self._ledger.forget(tp)  # markers are read afresh: another member may have moved them on

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
