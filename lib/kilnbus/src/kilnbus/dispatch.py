"""One record's way through a consumer: decode, handle, retry, publish what the handler returned, or set aside.

Both buses (``KafkaBus`` and ``MemoryBus``) run every record through ``Dispatcher``, so a handler
meets the same rules on either; only offsets and crash markers are the bus's own business.

The handler contract: ``async handler(delivery) -> Iterable[Outgoing] | None``. The records it
returns are published in order, each acknowledged, before the record counts as handled; a
``KilnError`` it raises is an outcome for the user (see ``kilnbus.errors``); anything else is a bug.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from aiokafka.errors import BrokerResponseError, KafkaError, RecordTooLargeError

from kilnbus import metrics
from kilnbus.codec import AvroCodec, DecodeError
from kilnbus.errors import KilnError, is_transient
from kilnbus.records import DeadLetter, Phase, PhaseEvent, Record
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


class Outgoing(NamedTuple):
    """A record a handler asks to publish: where, under which key, what."""

    topic: Topic
    key: str | None
    record: Record


Handler = Callable[[Delivery[Any]], Awaitable[Iterable[Outgoing] | None]]


class Publisher(Protocol):
    """What the dispatcher publishes through (a BusProducer, a bus, a test's fake)."""

    async def publish(self, topic: Topic, key: str | None, record: Record) -> Any: ...


class RawRecord(Protocol):
    """A message as it came off the log, before decoding (aiokafka's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...


INTERNAL_ERROR_MESSAGE = ("Kiln hit an internal error while handling this launch ({service}). The operators can see what "
                          "happened; please try again later.")
UNDELIVERABLE_MESSAGE = ("This launch failed, and Kiln could not deliver the reason ({service}). The operators can see "
                         "what happened; please try again later.")
FAILURE_MESSAGE_CHARS = 4000  # a failure event's message past this is cut in its middle, with a marker
CRASH_MESSAGE = ("The {service} stopped unexpectedly {count} times while handling this launch (for example, it ran out "
                 "of memory), so the launch has been set aside instead of being tried again.")


def cut_message(message: str, limit: int = FAILURE_MESSAGE_CHARS) -> str:
    """``message``, or if longer than ``limit`` its start and end around a marker saying how much was cut
    (a failure's start says what failed, its end often why: a log's last lines)."""
    if len(message) <= limit:
        return message
    marker = f"\n[Kiln: {len(message) - limit} characters of this message cut]\n"
    head = (limit - len(marker)) // 3
    tail = limit - len(marker) - head
    return message[:head] + marker + message[-tail:]


def failure_event(value: Record, service: str, message: str, cause: str, status: int = 500) -> PhaseEvent | None:
    """The ``failed`` event telling the user their request failed, or None when ``value`` is no request."""
    if isinstance(value, (PhaseEvent, DeadLetter)):
        return None  # events about requests are not requests: failing them would fail someone's launch twice
    request_id = getattr(value, "request_id", None)
    if not request_id:
        return None
    message = cut_message(message.rstrip("\n")) + "\n"
    return PhaseEvent(request_id=request_id, phase=Phase.FAILED, service=service, message=message,
                      failure_cause=cause, status_code=status, provider=getattr(value, "provider", None),
                      spec=getattr(value, "spec", None), image_name=getattr(value, "image_name", None))


class Dispatcher:
    """Runs one consumer's handler on raw records with Kiln's rules; counts what happened."""

    def __init__(
        self,
        *,
        group: str,
        topics: Iterable[Topic],
        handler: Handler,
        publisher: Publisher,
        dead_letter: Topic,
        codec: AvroCodec,
        failure_events: Topic | None = None,
        service: str = "",
        max_attempts: int = 5,
        retry_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.group = group
        self.service = service or group.removeprefix("kiln-")
        self._topics = {t.name: t for t in topics}
        self._handler = handler
        self._publisher = publisher
        self._dead_letter = dead_letter
        self._codec = codec
        self._failure_events = failure_events
        self._max_attempts = max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self.handled = 0
        self.dead_lettered = 0
        self.failures_reported = 0

    def decode(self, raw: RawRecord) -> Record:
        """The record ``raw`` holds; DecodeError when it is none this topic carries."""
        return self._codec.decode(raw.value, expect=self._topics[raw.topic].record)

    async def process(self, raw: RawRecord) -> None:
        """Decode and handle ``raw``; return once it counts as handled (or set aside)."""
        try:
            value = self.decode(raw)
        except DecodeError as exc:
            await self.set_aside_undecodable(raw, exc)
            return
        await self.handle(raw, value)

    async def set_aside_undecodable(self, raw: RawRecord, exc: DecodeError) -> None:
        log.error("%s: undecodable message at %s[%d]@%d: %s; set aside", self.group, raw.topic, raw.partition, raw.offset, exc)
        await self.set_aside(raw, f"decode: {exc}", "undecodable")

    async def handle(self, raw: RawRecord, value: Record) -> None:
        """Run the handler on ``value`` and publish what it returns; failures as ``kilnbus.errors`` says."""
        delivery: Delivery[Record] = Delivery(raw.topic, raw.partition, raw.offset,
                                              raw.key.decode() if raw.key is not None else None, value, raw.timestamp)
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                outgoing = list(await self._handler(delivery) or ())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a handler raises is mapped to an outcome below
                final = attempt >= self._max_attempts or not is_transient(exc)
                if final:
                    await self._failed(raw, value, exc, attempt)
                    return
                metrics.HANDLER_RETRIES.labels(self.group, raw.topic).inc()
                delay = min(self._retry_backoff_s * 2 ** (attempt - 1), self._max_backoff_s)
                log.warning("%s: handler failed on %s@%d (%r); retry %d in %.1fs",
                            self.group, raw.topic, raw.offset, exc, attempt, delay)
                await asyncio.sleep(delay)
                continue
            try:
                await self._publish_all(outgoing)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a record on the wrong topic, or the broker gone for good
                await self._failed(raw, value, exc, attempt)
                return
            self.handled += 1
            metrics.HANDLED.labels(self.group, raw.topic).inc()
            metrics.HANDLE_SECONDS.labels(self.group, raw.topic).observe(time.monotonic() - started)
            return

    async def _publish_all(self, outgoing: list[Outgoing]) -> None:
        """Publish the handler's records in order, each acknowledged.

        The broker being away is retried here for as long as it takes, not by running the handler
        again (its side effects are done); the record must not count as handled before these are out.
        """
        for item in outgoing:
            await self._publish(item.topic, item.key, item.record, retry=is_transient)

    async def _publish(self, topic: Topic, key: str | None, record: Record,
                       retry: Callable[[BaseException], bool]) -> None:
        delay = self._retry_backoff_s
        while True:
            try:
                await self._publisher.publish(topic, key, record)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not retry(exc):
                    raise
                log.warning("%s: publishing to %s failed (%r); retrying in %.1fs", self.group, topic.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)

    async def _failed(self, raw: RawRecord, value: Record, exc: Exception, attempts: int) -> None:
        """The handler's last word was ``exc``: tell the user, and set the record aside unless it is an outcome."""
        if isinstance(exc, KilnError):
            event = failure_event(value, self.service, exc.message, exc.cause, exc.status)
            if not exc.retriable:
                # A decision about the request (bad spec, quota): the user hears it; nothing is poison.
                log.info("%s: %s@%d failed: %s (%s)", self.group, raw.topic, raw.offset, exc.cause, cut_message(exc.message))
                if event is not None and self._failure_events is not None:
                    try:
                        await self._publish(self._failure_events, event.request_id, event, retry=_worth_retrying)
                    except Exception as refused:  # only a permanent refusal gets here
                        if not _refused_for_good(refused):
                            raise
                        # The broker will never take this event (too large, not allowed): the user gets a
                        # short one, the record goes aside with why, and the partition moves on.
                        log.error("%s: the broker refused the failed event for %s@%d: %r; set aside",
                                  self.group, raw.topic, raw.offset, refused)
                        await self.set_aside(raw, f"failed event refused by the broker ({refused!r}) for: {exc!r}",
                                             "failure_event_refused", self._undeliverable(value, exc.cause, exc.status))
                        return
                    self.failures_reported += 1
                self.handled += 1
                metrics.HANDLED.labels(self.group, raw.topic).inc()
                return
            log.error("%s: %s@%d still failing after %d attempt(s): %r; set aside",
                      self.group, raw.topic, raw.offset, attempts, exc)
        else:
            log.error("%s: handler failed %d time(s) on %s@%d; set aside", self.group, attempts, raw.topic, raw.offset,
                      exc_info=exc)
            # The user gets a generic message; the exception goes to the log and the dead letter.
            event = failure_event(value, self.service, INTERNAL_ERROR_MESSAGE.format(service=self.service),
                                  "internal_error")
        await self.set_aside(raw, "".join(traceback.format_exception_only(exc)).strip(), "handler_failed", event)

    def _undeliverable(self, value: Record, cause: str, status: int) -> PhaseEvent | None:
        """A short ``failed`` event for when the broker refused the one that said why."""
        return failure_event(value, self.service, UNDELIVERABLE_MESSAGE.format(service=self.service), cause, status)

    async def _tell(self, event: PhaseEvent) -> None:
        """Publish the ``failed`` event ``event``; if the broker refuses it for good, a short generic one."""
        assert self._failure_events is not None
        try:
            await self._publish(self._failure_events, event.request_id, event, retry=_worth_retrying)
        except Exception as refused:  # only a permanent refusal gets here
            if not _refused_for_good(refused):
                raise
            log.error("%s: the broker refused a failed event for request %s (%r); sending a short one",
                      self.group, event.request_id, refused)
            short = dataclasses.replace(event, message=UNDELIVERABLE_MESSAGE.format(service=self.service) + "\n")
            try:
                await self._publish(self._failure_events, event.request_id, short, retry=_worth_retrying)
            except Exception as again:
                if not _refused_for_good(again):
                    raise
                log.error("%s: the broker refused the short failed event for request %s too (%r)",
                          self.group, event.request_id, again)
                return
        self.failures_reported += 1

    async def set_aside_crashed(self, raw: RawRecord, value: Record, crashes: int) -> None:
        """``raw`` was in hand during ``crashes`` crashes of its consumer: fail it without running it again."""
        log.error("%s: %s[%d]@%d was in hand during %d crash(es) of its consumer; set aside without handling",
                  self.group, raw.topic, raw.partition, raw.offset, crashes)
        await self.set_aside(raw, f"crashed its consumer {crashes} time(s)", "crashed",
                             failure_event(value, self.service, CRASH_MESSAGE.format(service=self.service, count=crashes),
                                           "repeated_crash"))

    async def set_aside(self, raw: RawRecord, error: str, reason: str, event: PhaseEvent | None = None) -> None:
        """Tell the user (``event``, if any), then put the record on the dead-letter topic."""
        letter = DeadLetter(
            source_topic=raw.topic, source_partition=raw.partition, source_offset=raw.offset,
            consumer_group=self.group, error=error[:4000], key=raw.key, value=raw.value,
        )
        if self._failure_events is not None and event is not None:
            await self._tell(event)
        key = raw.key.decode(errors="replace") if raw.key else None
        try:
            await self._publish(self._dead_letter, key, letter, retry=_worth_retrying)
        except Exception as refused:  # only a permanent refusal gets here
            if not _refused_for_good(refused):
                raise
            # The letter without the original message (it stays in its topic, at the offset the letter names).
            log.error("%s: the broker refused the dead letter for %s[%d]@%d (%r); writing it without the message",
                      self.group, raw.topic, raw.partition, raw.offset, refused)
            letter = DeadLetter(source_topic=raw.topic, source_partition=raw.partition, source_offset=raw.offset,
                                consumer_group=self.group, error=f"{error[:1000]} [letter refused: {refused!r}]")
            try:
                await self._publish(self._dead_letter, key, letter, retry=_worth_retrying)
            except Exception as again:
                if not _refused_for_good(again):
                    raise
                # Retrying for ever would hold the partition's commit point for ever; the log keeps it.
                log.critical("%s: the broker refuses dead letters (%r); %s[%d]@%d passed over without one",
                             self.group, again, raw.topic, raw.partition, raw.offset)
                metrics.DEAD_LETTERED.labels(self.group, raw.topic, "refused").inc()
                return
        self.dead_lettered += 1
        metrics.DEAD_LETTERED.labels(self.group, raw.topic, reason).inc()


def _refused_for_good(exc: BaseException) -> bool:
    """The broker answered, and will answer the same again: the record is too large, the client not
    allowed to write there, a policy refuses it. Retrying cannot help."""
    if isinstance(exc, KafkaError) and exc.retriable:
        return False
    return isinstance(exc, (BrokerResponseError, RecordTooLargeError))


def _worth_retrying(exc: BaseException) -> bool:
    # Telling the user and setting aside wait out the broker being away (retriable and connection
    # errors, and the client's own states such as a producer closing on shutdown): the record must not
    # count as handled until the user was told and the letter written. A permanent refusal is not
    # retried: it would hold a consumer slot and the partition's commit point for ever.
    return (isinstance(exc, KafkaError) and not _refused_for_good(exc)) or is_transient(exc)


class DispatchCounts:
    """What a consumer's dispatcher has done so far, read off it (both buses' consumers show these)."""

    dispatcher: Dispatcher

    @property
    def handled(self) -> int:
        return self.dispatcher.handled

    @property
    def dead_lettered(self) -> int:
        return self.dispatcher.dead_lettered

    @property
    def failures_reported(self) -> int:
        return self.dispatcher.failures_reported
