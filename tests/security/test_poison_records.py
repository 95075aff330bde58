"""Requests that break their handler: reported to the user at once, and never crash-looping a fleet.

In memory, without a broker: the attempt markers (``AttemptLedger``) and a real ``BusConsumer``
whose broker calls (publishing, committing offsets, reading them back) go to a dict standing in for
the consumer group's offset store. A "crash" is a consumer dropped mid-handler without any cleanup,
as SIGKILL would leave it; the next consumer reads the same store, as another replica would.
The same scenario against the real broker, with processes that really die, is in
``test_poison_records_kafka.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, RequestTimedOutError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from kilnbus import BuildRequested, BusConsumer, BusSettings, DeadLetter, Phase, PhaseEvent, Topics, default_codec
from kilnbus.consumer import AttemptLedger, TransientError, _PartitionProgress, begin_attempt, is_transient

TOPICS = Topics("unit.")
TP = TopicPartition(TOPICS.build_requested.name, 0)


# -- the ledger --------------------------------------------------------------------------------

def test_markers_survive_a_crash_and_count_up_to_the_limit() -> None:
    committed = ""
    for crash in range(3):
        ledger = AttemptLedger()  # a new process, or another replica
        ledger.load(TP, committed)
        assert ledger.begin(TP, 7) == crash, "attempts begun before and never finished"
        committed = ledger.metadata(TP, 7)  # what the marker commit wrote before the handler ran
        # ... and the process dies here: nothing else is committed.
    ledger = AttemptLedger()
    ledger.load(TP, committed)
    assert ledger.begin(TP, 7) == 3


def test_finished_and_interrupted_attempts_do_not_count() -> None:
    ledger = AttemptLedger()
    ledger.begin(TP, 7)
    ledger.begin(TP, 8)
    ledger.finish(TP, 7)  # handled
    ledger.interrupt(TP, 8)  # stopped on purpose (SIGTERM, rebalance)
    after = AttemptLedger()
    after.load(TP, ledger.metadata(TP, 7))
    assert after.begin(TP, 7) == 0 and after.begin(TP, 8) == 0
    # Control: an attempt neither finished nor interrupted does count.
    crashed = AttemptLedger()
    crashed.begin(TP, 9)
    again = AttemptLedger()
    again.load(TP, crashed.metadata(TP, 9))
    assert again.begin(TP, 9) == 1


def test_markers_below_the_committed_offset_are_dropped_and_size_is_bounded() -> None:
    ledger = AttemptLedger()
    for offset in range(10, 20):
        ledger.begin(TP, offset)
    assert set(AttemptLedger.decode(ledger.metadata(TP, 15))) == set(range(15, 20))
    many = {offset: 1 + offset % 3 for offset in range(10**9, 10**9 + 1000)}
    encoded = AttemptLedger.encode(many)
    assert len(encoded) <= AttemptLedger.MAX_METADATA
    kept = AttemptLedger.decode(encoded)
    assert 0 < len(kept) < 1000 and min(kept.values()) == 3, "when cut, the highest counts are kept"
    assert AttemptLedger.decode("someone else's metadata") == {} and AttemptLedger.decode(None) == {}


@pytest.mark.parametrize("exc, transient", [
    (ConnectionError("reset"), True), (TimeoutError(), True), (KafkaConnectionError(), True),
    (RequestTimedOutError(), True), (httpx.ConnectError("refused"), True), (TransientError("hub away"), True),
    (ValueError("a bug"), False), (KeyError("x"), False), (TypeError(), False), (CommitFailedError(), False),
    (httpx.HTTPStatusError("500", request=httpx.Request("GET", "http://x"), response=httpx.Response(500)), False),
])
def test_only_broker_and_network_failures_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_an_explicit_retriable_attribute_wins() -> None:
    class Flaky(ValueError):
        retriable = True

    class Fatal(ConnectionError):
        retriable = False

    assert is_transient(Flaky()) and not is_transient(Fatal())


# -- a consumer with an in-memory broker -------------------------------------------------------

class FakeProducer:
    """Records what would be published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str | None, Any, float]] = []

    async def publish(self, topic: Any, key: str | None, record: Any) -> None:
        self.published.append((topic.name, key, record, time.monotonic()))

    def events(self) -> list[PhaseEvent]:
        return [r for t, _, r, _ in self.published if t == TOPICS.phase_events.name]

    def letters(self) -> list[DeadLetter]:
        return [r for t, _, r, _ in self.published if t == TOPICS.dead_letter.name]


def make_consumer(handler: Any, producer: FakeProducer, store: dict[TopicPartition, OffsetAndMetadata],
                  **options: Any) -> BusConsumer:
    consumer = BusConsumer(BusSettings(kafka_bootstrap="127.0.0.1:1"), "kiln-builder", [TOPICS.build_requested], handler,
                           producer=producer, dead_letter=TOPICS.dead_letter,  # type: ignore[arg-type]
                           failure_events=TOPICS.phase_events, retry_backoff_s=0.01, **options)

    async def commit(offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        store.update(offsets)

    async def read(tp: TopicPartition) -> OffsetAndMetadata | None:
        return store.get(tp)

    consumer._commit_offsets = commit  # type: ignore[method-assign]
    consumer._read_committed = read  # type: ignore[method-assign]
    return consumer


def record(offset: int, request_id: str) -> ConsumerRecord[bytes, bytes]:
    value = default_codec().encode(BuildRequested(request_id=request_id, image_name="reg/img:abc", repo_url="https://x/y",
                                                  ref="a" * 40, provider="git", spec="https%3A%2F%2Fx%2Fy/HEAD"))
    return ConsumerRecord(topic=TP.topic, partition=TP.partition, offset=offset, timestamp=0, timestamp_type=0,
                          key=b"reg/img:abc", value=value, checksum=None, serialized_key_size=11,
                          serialized_value_size=len(value), headers=())


async def process(consumer: BusConsumer, rec: ConsumerRecord[bytes, bytes]) -> None:
    """Deliver ``rec`` as the run loop does: markers read once for the partition, then the record."""
    if TP not in consumer._ledger.loaded:
        await consumer._load_markers(TP)
    await consumer._process(rec)


async def test_a_handler_bug_reaches_the_user_at_once_without_internals() -> None:
    calls: list[str] = []

    async def buggy(d: Any) -> None:
        calls.append(d.value.request_id)
        raise KeyError("/srv/kiln/secret-internal-path")

    producer, store = FakeProducer(), {}
    started = time.monotonic()
    await process(make_consumer(buggy, producer, store), record(0, "req-bug"))
    assert calls == ["req-bug"], "a bug is not retried: it cannot help"
    [event] = producer.events()
    assert event.phase is Phase.FAILED and event.failure_cause == "internal_error" and event.request_id == "req-bug"
    assert event.service == "builder" and event.provider == "git" and event.image_name == "reg/img:abc"
    assert "internal error" in event.message and "secret-internal-path" not in event.message and "KeyError" not in event.message
    [letter] = producer.letters()
    assert "secret-internal-path" in letter.error, "the detail is for the operators"
    at = {name: at for name, _, _, at in producer.published}
    assert at[TOPICS.phase_events.name] - started < 1.0 and at[TOPICS.phase_events.name] <= at[TOPICS.dead_letter.name]


async def test_transient_failures_are_retried_and_a_good_handler_reports_nothing() -> None:
    calls: list[int] = []

    async def flaky(d: Any) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("hub briefly away")

    producer = FakeProducer()
    await process(make_consumer(flaky, producer, {}), record(0, "req-flaky"))
    assert len(calls) == 3 and producer.published == []

    async def always_down(d: Any) -> None:
        raise ConnectionError("hub down for good")

    producer = FakeProducer()
    await process(make_consumer(always_down, producer, {}, max_attempts=3), record(0, "req-down"))
    [event] = producer.events()
    assert event.failure_cause == "internal_error" and len(producer.letters()) == 1


async def test_phase_events_set_aside_do_not_fail_anyone() -> None:
    async def buggy(d: Any) -> None:
        raise ValueError("bug")

    producer = FakeProducer()
    consumer = BusConsumer(BusSettings(kafka_bootstrap="127.0.0.1:1"), "kiln-x", [TOPICS.phase_events], buggy,
                           producer=producer, dead_letter=TOPICS.dead_letter,  # type: ignore[arg-type]
                           failure_events=TOPICS.phase_events, max_crashes=0)
    value = default_codec().encode(PhaseEvent(request_id="r", phase=Phase.READY, service="t"))
    await consumer._process(ConsumerRecord(topic=TOPICS.phase_events.name, partition=0, offset=0, timestamp=0, timestamp_type=0,
                                           key=b"r", value=value, checksum=None, serialized_key_size=1,
                                           serialized_value_size=len(value), headers=()))
    assert producer.events() == [] and len(producer.letters()) == 1


async def test_a_record_that_keeps_crashing_its_consumer_is_set_aside() -> None:
    store: dict[TopicPartition, OffsetAndMetadata] = {}
    calls: list[str] = []
    entered = asyncio.Event()

    async def dies(d: Any) -> None:
        calls.append(d.value.request_id)
        entered.set()
        await asyncio.Event().wait()  # never returns: the process is killed in here

    dead: list[asyncio.Task[None]] = []
    for crash in range(3):
        producer = FakeProducer()
        entered.clear()
        dead.append(asyncio.create_task(process(make_consumer(dies, producer, store), record(5, "req-poison"))))
        await asyncio.wait_for(entered.wait(), 5)
        assert AttemptLedger.decode(store[TP].metadata) == {5: crash + 1}, "the marker was committed before the handler ran"
        assert store[TP].offset == 5, "and never past the record"
        assert producer.published == []
    assert calls == ["req-poison"] * 3

    producer = FakeProducer()
    survivor = make_consumer(dies, producer, store)
    await asyncio.wait_for(process(survivor, record(5, "req-poison")), 5)
    assert calls == ["req-poison"] * 3, "the fourth consumer did not run it"
    [event] = producer.events()
    assert event.failure_cause == "repeated_crash" and event.request_id == "req-poison" and "3 times" in event.message
    [letter] = producer.letters()
    assert letter.source_offset == 5 and "crashed its consumer 3 time(s)" in letter.error

    # Control: the next record on the partition is handled normally, and its marker goes once it finished.
    async def fine(d: Any) -> None:
        calls.append(d.value.request_id)

    healthy = make_consumer(fine, producer, store)
    await process(healthy, record(6, "req-fine"))
    assert calls[-1] == "req-fine" and len(producer.events()) == 1
    healthy._progress[TP].next_offset = 7
    await healthy._commit()
    assert store[TP] == OffsetAndMetadata(7, "")
    for task in dead:
        task.cancel()
    await asyncio.gather(*dead, return_exceptions=True)


async def test_an_orderly_stop_is_not_counted_as_a_crash() -> None:
    store: dict[TopicPartition, OffsetAndMetadata] = {}
    entered = asyncio.Event()

    async def slow(d: Any) -> None:
        entered.set()
        await asyncio.sleep(60)

    for _ in range(5):  # more stops than max_crashes
        entered.clear()
        consumer = make_consumer(slow, FakeProducer(), store)
        consumer._progress.setdefault(TP, _PartitionProgress()).in_flight.add(5)  # as _start_task does
        task = asyncio.create_task(process(consumer, record(5, "req-slow")))
        await asyncio.wait_for(entered.wait(), 5)
        task.cancel()  # shutdown past its grace period cancels what is in hand
        await asyncio.gather(task, return_exceptions=True)
        await consumer._commit()
    assert AttemptLedger.decode(store[TP].metadata) == {}
    producer = FakeProducer()
    handled: list[str] = []

    async def quick(d: Any) -> None:
        handled.append(d.value.request_id)

    await process(make_consumer(quick, producer, store), record(5, "req-slow"))
    assert handled == ["req-slow"] and producer.published == []


async def test_records_waiting_beside_a_crash_are_not_counted_when_the_handler_says_when_work_begins() -> None:
    """The builder's case: many requests wait in its queue inside their handlers; only the one whose
    build runs (its handler, or a task it started, called begin_attempt) is counted when it dies."""
    store: dict[TopicPartition, OffsetAndMetadata] = {}
    entered: dict[str, asyncio.Event] = {"req-building": asyncio.Event(), "req-queued": asyncio.Event()}

    async def handler(d: Any) -> None:
        if d.value.request_id == "req-building":
            # As the builder does: a task started by the handler takes the build slot and says so.
            async def build() -> None:
                await begin_attempt()
                await begin_attempt()  # a second call changes nothing
            await asyncio.create_task(build())
        entered[d.value.request_id].set()
        await asyncio.Event().wait()  # both wait in hand until the process dies

    for crash in range(3):
        for event in entered.values():
            event.clear()
        consumer = make_consumer(handler, FakeProducer(), store, attempts_begin_in_handler=True)
        tasks = [asyncio.create_task(process(consumer, record(5, "req-building"))),
                 asyncio.create_task(process(consumer, record(6, "req-queued")))]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in entered.values())), 5)
        assert AttemptLedger.decode(store[TP].metadata) == {5: crash + 1}, "only the record whose work began"
        for task in tasks:
            task.cancel()  # (the process died: nothing of it runs again)
        await asyncio.gather(*tasks, return_exceptions=True)

    producer = FakeProducer()
    calls: list[str] = []

    async def fine(d: Any) -> None:
        calls.append(d.value.request_id)

    survivor = make_consumer(fine, producer, store, attempts_begin_in_handler=True)
    await process(survivor, record(5, "req-building"))
    await process(survivor, record(6, "req-queued"))
    assert calls == ["req-queued"], "the record that crashed it three times is set aside, the one that waited runs"
    [event] = producer.events()
    assert event.request_id == "req-building" and event.failure_cause == "repeated_crash"
