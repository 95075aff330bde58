"""What the dispatcher does when the broker refuses a record for good (too large, not allowed):
the user still hears of the failure, the record is set aside, and the partition moves on. In memory."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, TopicAuthorizationFailedError

from kilnbus import DeadLetter, KilnError, LaunchRequested, Phase, PhaseEvent, PhaseReporter, Topics, default_codec
from kilnbus.dispatch import FAILURE_MESSAGE_CHARS, Dispatcher, cut_message

TOPICS = Topics("kiln.")


class Raw:
    def __init__(self, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.key, self.value, self.timestamp = (
            TOPICS.launch_requested.name, 0, 7, b"r1", value, 0)


class Broker:
    """Takes what ``refuse`` lets through; ``flaky`` connection errors first."""

    def __init__(self, refuse: Any = lambda topic, record: None, flaky: int = 0) -> None:
        self.refuse = refuse
        self.flaky = flaky
        self.published: list[Any] = []

    async def publish(self, topic: Any, key: Any, record: Any) -> None:
        if self.flaky:
            self.flaky -= 1
            raise KafkaConnectionError("broker away")
        if (error := self.refuse(topic, record)) is not None:
            raise error
        self.published.append(record)


def dispatcher(broker: Broker, message: str, error: type[Exception] | None = None) -> Dispatcher:
    async def handler(_: Any) -> None:
        if error is not None:
            raise error(message)  # a bug: set aside
        raise KilnError(message, cause="spawn_failed")

    return Dispatcher(group="kiln-launcher", topics=[TOPICS.launch_requested], handler=handler, publisher=broker,
                      dead_letter=TOPICS.dead_letter, codec=default_codec(), failure_events=TOPICS.phase_events,
                      retry_backoff_s=0.001, max_backoff_s=0.001)


RAW = Raw(default_codec().encode(LaunchRequested(request_id="r1", provider="gh", spec="a/b/HEAD")))


def events(broker: Broker) -> list[PhaseEvent]:
    return [r for r in broker.published if isinstance(r, PhaseEvent)]


def letters(broker: Broker) -> list[DeadLetter]:
    return [r for r in broker.published if isinstance(r, DeadLetter)]


async def test_a_huge_failure_message_is_cut_with_a_marker() -> None:
    broker = Broker(refuse=lambda t, r: MessageSizeTooLargeError() if len(getattr(r, "message", "")) > 1_000_000 else None)
    huge = "The server failed to start: " + "x" * 1_100_000 + " because the image is missing"
    await asyncio.wait_for(dispatcher(broker, huge).process(RAW), 5)
    [event] = events(broker)
    assert len(event.message) <= FAILURE_MESSAGE_CHARS + 1 and "characters of this message cut" in event.message
    assert event.message.startswith("The server failed to start: ")
    assert event.message.endswith("because the image is missing\n"), "its end (often the reason) is kept"
    assert letters(broker) == [], "an outcome, not poison"
    # Control: a message within the bound goes out as it is.
    assert cut_message("short") == "short"
    broker = Broker()
    await dispatcher(broker, "The server failed to start: image missing").process(RAW)
    assert [e.message for e in events(broker)] == ["The server failed to start: image missing\n"]


async def test_a_failed_event_refused_for_good_becomes_a_short_one_and_a_dead_letter() -> None:
    # The broker refuses any event longer than 300 characters, for ever.
    broker = Broker(refuse=lambda t, r: MessageSizeTooLargeError() if len(getattr(r, "message", "")) > 300 else None)
    await asyncio.wait_for(dispatcher(broker, "why: " + "y" * 2000).process(RAW), 5)
    [event] = events(broker)
    assert (event.failure_cause, event.status_code) == ("spawn_failed", 500)
    assert event.message.startswith("This launch failed, and Kiln could not deliver the reason")
    [letter] = letters(broker)
    assert (letter.source_offset, letter.value) == (7, RAW.value) and "MessageSizeTooLargeError" in letter.error


async def test_a_retriable_broker_error_is_still_waited_out() -> None:
    broker = Broker(flaky=3)  # control for the above: the broker away is not a refusal
    await asyncio.wait_for(dispatcher(broker, "The server failed to start: image missing").process(RAW), 5)
    assert [e.message for e in events(broker)] == ["The server failed to start: image missing\n"]
    assert letters(broker) == []


async def test_a_broker_refusing_everything_does_not_hold_the_partition_for_ever() -> None:
    broker = Broker(refuse=lambda t, r: TopicAuthorizationFailedError())
    d = dispatcher(broker, "The server failed to start")
    await asyncio.wait_for(d.process(RAW), 5)  # it returns: the record is passed over, the log keeps it
    assert broker.published == [] and d.dead_lettered == 0
    # Control: a refused full letter is written again without the message.
    broker = Broker(refuse=lambda t, r: MessageSizeTooLargeError() if isinstance(r, DeadLetter) and r.value else None)
    d = dispatcher(broker, "a bug", RuntimeError)
    await asyncio.wait_for(d.process(RAW), 5)
    [letter] = letters(broker)
    assert letter.value is None and letter.source_offset == 7 and d.dead_lettered == 1
    assert [e.failure_cause for e in events(broker)] == ["internal_error"]


def test_the_reporter_cuts_failure_messages_and_no_others() -> None:
    reporter = PhaseReporter(Broker(), TOPICS, "builder")
    failed = reporter.event("r1", Phase.FAILED, message="The build failed: " + "l" * 50_000 + "\nlast line\n").record
    assert isinstance(failed, PhaseEvent) and len(failed.message) <= FAILURE_MESSAGE_CHARS
    assert failed.message.endswith("last line\n") and "characters of this message cut" in failed.message
    line = reporter.event("r1", Phase.BUILDING, message="l" * 5000).record  # control: log lines are the builder's to cut
    assert isinstance(line, PhaseEvent) and line.message == "l" * 5000
