"""Consuming records at least once: an offset is committed only after its handler succeeded.

A message that cannot be decoded, or whose handler keeps failing, is set aside on the
dead-letter topic (with where it came from and why) and the consumer goes on: nothing is dropped
silently and one bad message never stops a partition.

Handlers may run concurrently (``max_in_flight``) for services whose work is long, such as builds;
the committed offset of a partition is then the first offset not yet handled, so a crash
redelivers exactly the unfinished work. Handlers must therefore be idempotent.

Failures, in the order a record meets them:

- A handler error that is *transient* (``is_transient``: the broker or the network briefly away,
  or an exception with ``retriable = True``) is retried with exponential back-off, up to
  ``max_attempts`` in all. Any other exception is a bug or a bad record: retrying cannot help, so
  it is set aside at once.
- A record set aside because its handler failed is a request some user is waiting for: with
  ``failure_events`` set, the consumer publishes a ``failed`` phase event for it (cause
  ``internal_error``, a generic message; the exception goes to the log and the dead letter), so
  the user hears within seconds instead of waiting for the stream to time out.
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
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from kilnbus import metrics
from kilnbus.codec import AvroCodec, DecodeError, default_codec
from kilnbus.producer import BusProducer
from kilnbus.records import DeadLetter, Phase, PhaseEvent, Record
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


class TransientError(Exception):
    """A failure worth retrying (a dependency briefly away); raise it, or set ``retriable = True`` on your own."""

    retriable = True


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, socket.gaierror, KafkaConnectionError,
                                        KafkaTimeoutError]
    try:  # not a dependency of kilnbus, but the services talk HTTP through it
        import httpx

        types += [httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError]
    except ImportError:
        pass
    return tuple(types)


_TRANSIENT = _transient_types()


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the handler could help: the broker or the network, not a bug or a bad record."""
    if isinstance(exc, KafkaError):
        return bool(exc.retriable) or isinstance(exc, _TRANSIENT)
    explicit = getattr(exc, "retriable", None)
    if isinstance(explicit, bool):
        return explicit
    return isinstance(exc, _TRANSIENT)


INTERNAL_ERROR_MESSAGE = ("Kiln hit an internal error while handling this launch ({service}). The operators can see what "
                          "happened; please try again later.")
CRASH_MESSAGE = ("The {service} stopped unexpectedly {count} times while handling this launch (for example, it ran out "
                 "of memory), so the launch has been set aside instead of being tried again.")


def failure_event(value: Record, service: str, message: str, cause: str) -> PhaseEvent | None:
    """The ``failed`` event telling the user their request was set aside, or None when ``value`` is no request."""
    if isinstance(value, (PhaseEvent, DeadLetter)):
        return None  # events about requests are not requests: failing them would fail someone's launch twice
    request_id = getattr(value, "request_id", None)
    if not request_id:
        return None
    return PhaseEvent(request_id=request_id, phase=Phase.FAILED, service=service, message=message.rstrip("\n") + "\n",
                      failure_cause=cause, status_code=500, provider=getattr(value, "provider", None),
                      spec=getattr(value, "spec", None), image_name=getattr(value, "image_name", None))


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


class BusConsumer:
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
        producer: BusProducer,
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
        **overrides: Any,
    ) -> None:
        self.group_id = group_id
        self._attempts_in_handler = attempts_begin_in_handler
        self._begun: set[tuple[TopicPartition, int]] = set()  # attempts counted and not yet finished
        self._failure_events = failure_events
        self._service = service or group_id.removeprefix("kiln-")
        self._max_crashes = max_crashes
        self._ledger = AttemptLedger()
        self._commit_lock = asyncio.Lock()  # commits carry markers: an older one must not land after a newer
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
        self.failures_reported = 0

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
            else:
                if not t.cancelled():
                    log.error("%s: record %s@%d left unhandled: %r", self.group_id, tp, record.offset, t.exception())
                # Not handled and not set aside (cancelled at shutdown, or failed): hold the partition's
                # commit point before it, or a later record's success would commit past it.
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
        if not self._max_crashes:
            await self._handle(record, value)
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
                log.error("%s: %s[%d]@%d was in hand during %d crash(es) of its consumer; set aside without handling",
                          self.group_id, record.topic, record.partition, record.offset, crashes)
                await self._set_aside(record, f"crashed its consumer {crashes} time(s)", "crashed",
                                      failure_event(value, self._service, CRASH_MESSAGE.format(service=self._service,
                                                                                             count=crashes), "repeated_crash"))
            else:
                await self._handle(record, value)
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

    async def _handle(self, record: ConsumerRecord[bytes, bytes], value: Record) -> None:
        """Run the handler on ``value``: transient failures retried, the rest set aside with a failed event."""
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
                final = attempt >= self._max_attempts or not is_transient(exc)
                if final:
                    log.exception("%s: handler failed %d time(s) on %s@%d; set aside",
                                  self.group_id, attempt, record.topic, record.offset)
                    # The user gets a generic message; the exception goes to the log and the dead letter.
                    message = INTERNAL_ERROR_MESSAGE.format(service=self._service)
                    await self._set_aside(record, "".join(traceback.format_exception_only(exc)).strip(), "handler_failed",
                                          failure_event(value, self._service, message, "internal_error"))
                    return
                metrics.HANDLER_RETRIES.labels(self.group_id, record.topic).inc()
                delay = min(self._retry_backoff_s * 2 ** (attempt - 1), self._max_backoff_s)
                log.warning("%s: handler failed on %s@%d (%r); retry %d in %.1fs",
                            self.group_id, record.topic, record.offset, exc, attempt, delay)
                await asyncio.sleep(delay)

    async def _set_aside(self, record: ConsumerRecord[bytes, bytes], error: str, reason: str,
                         event: PhaseEvent | None = None) -> None:
        """Tell the user (``event``, if any), then put the record on the dead-letter topic."""
        letter = DeadLetter(
            source_topic=record.topic, source_partition=record.partition, source_offset=record.offset,
            consumer_group=self.group_id, error=error[:4000], key=record.key, value=record.value,
        )
        if self._failure_events is None:
            event = None
        delay = self._retry_backoff_s
        while True:  # the broker may be down; the record must not count as handled until set aside
            try:
                if event is not None:
                    assert self._failure_events is not None
                    await self._producer.publish(self._failure_events, event.request_id, event)
                    self.failures_reported += 1
                    event = None  # told once, even if the dead letter needs retrying
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
        # aiokafka's public committed() drops the metadata, which is where the markers are.
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
        async with self._commit_lock:
            progress = self._progress.setdefault(tp, _PartitionProgress())
            at = progress.committable()
            at = offset if at is None else min(at, offset)  # never past a record not yet handled
            state = (at, self._ledger.metadata(tp, at))
            if not await self._write_offsets({tp: OffsetAndMetadata(*state)}):
                log.warning("%s: attempt marker for %s@%d not recorded; handling it anyway", self.group_id, tp, offset)
        return before

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoked |= revoked
        tasks = [t for t, tp in self._tasks.items() if tp in revoked]
        if tasks:
            await asyncio.wait(tasks, timeout=self._shutdown_grace_s)
        for tp in revoked:
            # Still running here past the grace: the next owner redelivers them, and this is no crash.
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
