"""The delivery contract every ``Bus`` keeps, run on MemoryBus and (marked ``kafka``) on KafkaBus.

Keys and partitions, order per key, retries, the error tree's outcomes (failed events, dead
letters), records a handler returns, undecodable records, and group-less readers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kilnbus import (
    BuildRequested,
    Bus,
    DeadLetter,
    Delivery,
    KafkaBus,
    LaunchRequested,
    LogFollower,
    MemoryBus,
    NotFound,
    Outgoing,
    Phase,
    PhaseEvent,
    PhaseReporter,
    Record,
    Routes,
    Unavailable,
)

from ..conftest import delete_topics
from .bus_support import Collector, kafka_settings, publish_raw, read_all, read_until, running

PARTITIONS = 3  # the Kafka tests' topics have 3; the memory bus is made alike so keys land alike


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "memory":
        async with MemoryBus(partitions=PARTITIONS) as memory:
            yield memory
        return
    settings = kafka_settings(request.getfixturevalue("kafka_bootstrap"))
    try:
        async with KafkaBus(settings) as kafka:
            yield kafka
    finally:
        await delete_topics(settings.kafka_bootstrap, settings.topic_prefix)


def group(bus: Bus, name: str = "kiln-test") -> str:
    return bus.settings.group_id(name)


def event(rid: str, phase: Phase = Phase.WAITING) -> PhaseEvent:
    return PhaseEvent(request_id=rid, phase=phase, service="test")


def launch(rid: str) -> LaunchRequested:
    return LaunchRequested(request_id=rid, provider="gh", spec="org/repo/HEAD")


async def test_a_key_keeps_its_partition_and_its_order(bus: Bus) -> None:
    topic = bus.topics.phase_events
    positions = {}
    sent: dict[str, list[str]] = {}
    for i in range(40):
        key = f"key-{i % 8}"
        pos = await bus.publish(topic, key, event(f"{key}/{i}"))
        positions.setdefault(key, set()).add(pos.partition)
        sent.setdefault(key, []).append(f"{key}/{i}")
    assert all(len(parts) == 1 for parts in positions.values()), positions
    assert len({p for parts in positions.values() for p in parts}) > 1, "control: keys do spread over partitions"
    # Kafka's default partitioner, as the memory bus computes it: same key, same partition on either bus.
    twin = MemoryBus(partitions=PARTITIONS)
    assert all(parts == {twin.partition_for(topic, key)} for key, parts in positions.items())

    seen: Collector[str] = Collector()

    async def handle(d: Delivery[PhaseEvent]) -> None:
        await seen.add(d.value.request_id)

    async with running(bus, group(bus), Routes({topic: handle})):
        await seen.wait(lambda items: len(items) == 40, what="all 40 events")
    for key, rids in sent.items():
        assert [r for r in seen.items if r.startswith(key + "/")] == rids


async def test_publish_returns_where_the_record_landed(bus: Bus) -> None:
    first = await bus.publish(bus.topics.phase_events, "same", event("a"))
    second = await bus.publish(bus.topics.phase_events, "same", event("b"))
    assert first.topic == bus.topics.phase_events.name and first.partition == second.partition
    assert second.offset == first.offset + 1


async def test_publish_refuses_a_record_on_the_wrong_topic(bus: Bus) -> None:
    with pytest.raises(TypeError, match="carries PhaseEvent"):
        await bus.publish(bus.topics.phase_events, "x", launch("r"))


async def test_transient_failures_are_retried_and_kiln_errors_are_outcomes(bus: Bus) -> None:
    """One key, so each record is reached only once the one before it was dealt with."""
    attempts: dict[str, int] = {}
    handled: Collector[str] = Collector()

    async def handle(d: Delivery[LaunchRequested]) -> None:
        rid = d.value.request_id
        attempts[rid] = attempts.get(rid, 0) + 1
        if rid == "flaky" and attempts[rid] < 3:
            raise ConnectionError("hub briefly away")
        if rid == "unavailable":
            raise Unavailable("The hub is not answering; please try again later.")
        if rid == "missing":
            raise NotFound("No repository org/repo on GitHub.")
        if rid == "bug":
            raise KeyError("/srv/internal-detail")
        await handled.add(rid)

    topic = bus.topics.launch_requested
    for rid in ("flaky", "unavailable", "missing", "bug", "after"):
        await bus.publish(topic, "one-key", launch(rid))
    async with running(bus, group(bus), Routes({topic: handle}), max_attempts=3, service="test"):
        await handled.wait(lambda items: "after" in items, what="the request after the failing ones")
    assert handled.items == ["flaky", "after"]
    assert attempts == {"flaky": 3, "unavailable": 3, "missing": 1, "bug": 1, "after": 1}

    failed = await read_until(bus, bus.topics.phase_events, lambda evs: len(evs) >= 3)
    by_rid = {e.request_id: e for e in failed}
    assert set(by_rid) == {"unavailable", "missing", "bug"}, "the two that succeeded report nothing"
    assert all(e.phase is Phase.FAILED and e.service == "test" for e in failed)
    assert (by_rid["missing"].failure_cause, by_rid["missing"].status_code) == ("not_found", 404)
    assert by_rid["missing"].message == "No repository org/repo on GitHub.\n"
    assert (by_rid["unavailable"].failure_cause, by_rid["unavailable"].status_code) == ("unavailable", 503)
    assert (by_rid["bug"].failure_cause, by_rid["bug"].status_code) == ("internal_error", 500)
    assert "internal-detail" not in by_rid["bug"].message and "internal error" in by_rid["bug"].message
    assert by_rid["missing"].provider == "gh" and by_rid["missing"].spec == "org/repo/HEAD"

    # Dead letters were written before "after" was reached; a NotFound is an outcome, not poison.
    letters = await read_all(bus, bus.topics.dead_letter)
    assert sorted(letter.error.split(":")[0] for letter in letters) == ["KeyError", "kilnbus.errors.Unavailable"]
    assert all(isinstance(letter, DeadLetter) and letter.consumer_group == group(bus) for letter in letters)


async def test_an_undecodable_record_is_set_aside_and_the_next_one_handled(bus: Bus) -> None:
    handled: Collector[str] = Collector()

    async def handle(d: Delivery[PhaseEvent]) -> None:
        await handled.add(d.value.request_id)

    topic = bus.topics.phase_events
    await publish_raw(bus, topic, b"req-1", b'{"phase": "ready"}')
    await bus.publish(topic, "req-1", event("req-1"))
    async with running(bus, group(bus), Routes({topic: handle}), failure_events=None):
        await handled.wait(lambda items: items == ["req-1"], what="the valid event after the garbage")
    [letter] = await read_until(bus, bus.topics.dead_letter, lambda letters: len(letters) >= 1)
    assert letter.source_topic == topic.name and letter.key == b"req-1" and letter.value == b'{"phase": "ready"}'
    assert "not Avro single-object encoded" in letter.error


async def test_records_a_handler_returns_are_published_in_order(bus: Bus) -> None:
    reporter = PhaseReporter(bus, bus.topics, "resolver")

    async def resolve(d: Delivery[LaunchRequested]) -> list[Outgoing]:
        req = d.value
        build = BuildRequested(request_id=req.request_id, image_name=f"reg/{req.request_id}:1", repo_url="https://x/y",
                               ref="a" * 40, provider=req.provider, spec=req.spec)
        return [reporter.event(req, Phase.RESOLVED, message="resolved\n"),
                Outgoing(bus.topics.build_requested, build.image_name, build),
                reporter.event(req, Phase.WAITING)]

    async def nothing(d: Delivery[Any]) -> None:
        return None

    await bus.publish(bus.topics.launch_requested, "r1", launch("r1"))
    async with running(bus, group(bus), Routes({bus.topics.launch_requested: resolve, bus.topics.build_requested: nothing})):
        events = await read_until(bus, bus.topics.phase_events, lambda evs: len(evs) >= 2)
        [build] = await read_until(bus, bus.topics.build_requested, lambda builds: len(builds) >= 1)
    assert [(e.phase, e.service, e.provider, e.spec) for e in events] == [
        (Phase.RESOLVED, "resolver", "gh", "org/repo/HEAD"), (Phase.WAITING, "resolver", "gh", "org/repo/HEAD")]
    assert build.image_name == "reg/r1:1"


async def test_a_reader_catches_up_then_follows(bus: Bus) -> None:
    topic = bus.topics.phase_events
    for i in range(5):
        await bus.publish(topic, f"k{i}", event(f"e{i}"))
    got: list[str] = []
    late = asyncio.Event()

    def apply(record: Record) -> None:
        assert isinstance(record, PhaseEvent)
        got.append(record.request_id)
        if record.request_id == "late":
            late.set()

    follower = LogFollower(bus, topic, apply)
    await follower.start()
    try:
        await asyncio.wait_for(follower.caught_up.wait(), 30)
        assert sorted(got) == [f"e{i}" for i in range(5)], "caught up means every record at start was applied"
        await bus.publish(topic, "k-late", event("late"))
        await asyncio.wait_for(late.wait(), 30)
        assert got[-1] == "late" and len(got) == 6
    finally:
        await follower.stop()


async def test_a_reader_starts_at_given_offsets_or_at_the_end(bus: Bus) -> None:
    topic = bus.topics.phase_events
    positions = [await bus.publish(topic, "one", event(f"e{i}")) for i in range(4)]
    third = positions[2]
    async with bus.reader([topic], start={(third.topic, third.partition): third.offset}) as reader:
        assert reader.end_offsets == {(third.topic, third.partition): positions[-1].offset + 1}
        entries = [await anext(reader), await anext(reader)]
    assert [e.offset for e in entries] == [third.offset, third.offset + 1]
    assert [e.key for e in entries] == ["one", "one"]

    async with bus.reader([topic], start="end") as reader:
        assert reader.caught_up.is_set(), "nothing to read before the end"
        await bus.publish(topic, "one", event("new"))
        entry = await asyncio.wait_for(anext(reader), 30)
    assert entry.offset == positions[-1].offset + 1, "only what came after the reader started"
