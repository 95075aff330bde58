"""The bus helpers against the real Kafka broker: delivery, dead letters, commits and restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from kilnbus import BusProducer, BusSettings, DeadLetter, Delivery, Phase, PhaseEvent, Topics

from .helpers import start_consumer, wait_until
from .test_codec import SAMPLES

pytestmark = pytest.mark.kafka


async def committed(settings: BusSettings, group: str, topic: str) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)
    finally:
        await admin.close()


async def test_every_schema_through_kafka_and_back(bus_settings: BusSettings, topics: Topics, producer: BusProducer) -> None:
    by_topic = {
        "LaunchRequested": topics.launch_requested, "BuildRequested": topics.build_requested,
        "HubLaunchRequested": topics.hub_launch_requested, "PhaseEvent": topics.phase_events,
        "DeadLetter": topics.dead_letter,
    }
    got: list[Any] = []

    async def handle(d: Delivery[Any]) -> None:
        got.append(d.value)

    running = await start_consumer(bus_settings, topics, list(by_topic.values()), handle, producer)
    for record in SAMPLES:
        await producer.publish(by_topic[type(record).__name__], getattr(record, "request_id", "dl"), record)
    await wait_until(lambda: len(got) == len(SAMPLES), 30, "all samples")
    await running.close()
    assert sorted(map(repr, got)) == sorted(map(repr, SAMPLES))


async def test_publish_refuses_a_record_on_the_wrong_topic(producer: BusProducer, topics: Topics) -> None:
    with pytest.raises(TypeError, match="carries PhaseEvent"):
        await producer.publish(topics.phase_events, "x", SAMPLES[0])


async def test_undecodable_message_is_set_aside_and_consumer_goes_on(
    bus_settings: BusSettings, topics: Topics, producer: BusProducer
) -> None:
    got: list[PhaseEvent] = []

    async def handle(d: Delivery[PhaseEvent]) -> None:
        got.append(d.value)

    running = await start_consumer(bus_settings, topics, [topics.phase_events], handle, producer)
    await producer.send_raw(topics.phase_events.name, b"req-1", b'{"phase": "ready"}')
    await producer.publish(topics.phase_events, "req-1", PhaseEvent(request_id="req-1", phase=Phase.READY, service="t"))
    await wait_until(lambda: len(got) == 1, 30, "the valid event after the garbage")
    await running.close()
    assert running.consumer.dead_lettered == 1

    letters: list[DeadLetter] = []

    async def collect(d: Delivery[DeadLetter]) -> None:
        letters.append(d.value)

    reader = await start_consumer(bus_settings, topics, [topics.dead_letter], collect, producer, group="dlq-reader")
    await wait_until(lambda: len(letters) == 1, 30, "the dead letter")
    await reader.close()
    letter = letters[0]
    assert letter.source_topic == topics.phase_events.name
    assert letter.value == b'{"phase": "ready"}' and letter.key == b"req-1"
    assert "not Avro single-object encoded" in letter.error
    assert letter.consumer_group == "test-group"
    # The garbage counts as dealt with: nothing is redelivered to the group.
    assert await committed(bus_settings, "test-group", topics.phase_events.name) == 2


async def test_failing_handler_is_retried_then_set_aside(bus_settings: BusSettings, topics: Topics, producer: BusProducer) -> None:
    attempts: dict[str, int] = {}
    done: list[str] = []

    async def handle(d: Delivery[PhaseEvent]) -> None:
        rid = d.value.request_id
        attempts[rid] = attempts.get(rid, 0) + 1
        if rid == "flaky" and attempts[rid] < 3:
            raise ConnectionError("hub briefly away")
        if rid == "broken":
            raise ValueError("this event can never be handled")
        done.append(rid)

    running = await start_consumer(bus_settings, topics, [topics.phase_events], handle, producer,
                                   max_attempts=4, retry_backoff_s=0.01)
    for rid in ("flaky", "broken", "after"):
        # One key, one partition: "after" is only reached once "broken" has been set aside.
        await producer.publish(topics.phase_events, "same-key", PhaseEvent(request_id=rid, phase=Phase.WAITING, service="t"))
    await wait_until(lambda: "after" in done, 30, "the event after the broken one")
    await running.close()
    assert done == ["flaky", "after"]
    # A connection error is retried; a bug (ValueError) is not: retrying cannot help, so it is set aside at once.
    assert attempts == {"flaky": 3, "broken": 1, "after": 1}
    assert running.consumer.dead_lettered == 1


async def test_stopped_consumer_resumes_from_committed_offset(
    bus_settings: BusSettings, topics: Topics, producer: BusProducer
) -> None:
    """A member stopped mid-stream and a new one in its place: every event handled exactly once."""
    n = 300
    calls: list[str] = []
    seen: set[str] = set()
    stop_after = 120

    async def handle(d: Delivery[PhaseEvent]) -> None:
        calls.append(d.value.request_id)  # an idempotent handler would skip repeats; count them all here
        seen.add(d.value.request_id)
        if len(calls) == stop_after:
            first.stop.set()

    first = await start_consumer(bus_settings, topics, [topics.phase_events], handle, producer)
    futures = [await producer.send(topics.phase_events, f"k{i % 17}", PhaseEvent(request_id=f"e{i}", phase=Phase.BUILDING, service="t"))
               for i in range(n)]
    await asyncio.gather(*futures)
    await asyncio.wait_for(first.task, 30)
    assert stop_after <= len(calls) < n
    second = await start_consumer(bus_settings, topics, [topics.phase_events], handle, producer)
    await wait_until(lambda: len(seen) == n, 60, "all events after the restart")
    await asyncio.sleep(0.5)  # anything redelivered would arrive now
    await second.close()
    assert len(calls) == n, f"{len(calls) - n} event(s) handled twice"
    assert await committed(bus_settings, "test-group", topics.phase_events.name) == n


async def test_a_record_in_hand_when_its_partition_moves_is_stopped_not_run_twice_at_once(
    bus_settings: BusSettings, topics: Topics, producer: BusProducer
) -> None:
    """A second member joins while the first holds a long record (a build): past the grace the first
    stops it, and the member that then owns the partition handles it again. Never two at once, and
    the group settles with both members in it (it once dropped the busy member over and over)."""
    active: set[str] = set()
    overlaps: list[set[str]] = []
    events: list[str] = []
    long_first = asyncio.Event()

    def handler(member: str) -> Any:
        async def handle(d: Delivery[PhaseEvent]) -> None:
            active.add(member)
            if len(active) > 1:
                overlaps.append(set(active))
            events.append(f"start {member}")
            try:
                if not long_first.is_set():
                    long_first.set()
                    await asyncio.sleep(120)  # the first handling outlasts the grace
                events.append(f"done {member}")
            except asyncio.CancelledError:
                events.append(f"cancelled {member}")
                raise
            finally:
                active.discard(member)
        return handle

    grace: dict[str, Any] = {"max_in_flight": 4, "shutdown_grace_s": 2.0, "cancel_on_revoke": True}
    a = await start_consumer(bus_settings, topics, [topics.phase_events], handler("a"), producer, **grace)
    await producer.publish(topics.phase_events, "k", PhaseEvent(request_id="long", phase=Phase.BUILDING, service="t"))
    await wait_until(lambda: events == ["start a"], 30, "the first member to take the record")
    b = await start_consumer(bus_settings, topics, [topics.phase_events], handler("b"), producer, **grace)
    try:
        await wait_until(lambda: any(e.startswith("done") for e in events), 60, "the record handled to the end")
        assert events[:2] == ["start a", "cancelled a"], events
        assert not overlaps, overlaps
        admin = AIOKafkaAdminClient(**bus_settings.client_kwargs())
        await admin.start()
        try:
            async def members() -> int:
                described = await admin.describe_consumer_groups(["test-group"])
                return len(described[0].groups[0][5])  # (error, group, state, protocol type, protocol, members, ...)
            deadline = asyncio.get_running_loop().time() + 30
            while await members() != 2:
                assert asyncio.get_running_loop().time() < deadline, "both members in the group"
                await asyncio.sleep(0.2)
        finally:
            await admin.close()
    finally:
        await a.close()
        await b.close()
    assert [e for e in events if e.startswith("done")] == events[-1:], events


CONSUMER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from kilnbus import BusConsumer, BusProducer, BusSettings, Topics, run_service

    settings = BusSettings(kafka_bootstrap=sys.argv[1], topic_prefix=sys.argv[2], topic_partitions=3)
    topics = Topics(settings.topic_prefix)
    out = open(sys.argv[3], "a", buffering=1)

    async def main(stop):
        async with BusProducer(settings) as producer:
            async def handle(d):
                out.write(f"start {d.value.request_id}\\n")
                await asyncio.sleep(1.0)  # long enough that SIGTERM lands mid-event
                out.write(f"done {d.value.request_id}\\n")
            consumer = BusConsumer(settings, "sigterm-group", [topics.phase_events], handle,
                                   producer=producer, dead_letter=topics.dead_letter)
            await consumer.start()
            await consumer.run(stop)
        out.write("exited\\n")

    run_service(main)
    """
)


async def test_sigterm_finishes_the_event_in_hand_and_commits(
    bus_settings: BusSettings, topics: Topics, producer: BusProducer, tmp_path: Path
) -> None:
    for i in range(5):
        await producer.publish(topics.phase_events, "one-key", PhaseEvent(request_id=f"s{i}", phase=Phase.WAITING, service="t"))
    script, out = tmp_path / "consumer.py", tmp_path / "out.txt"
    script.write_text(CONSUMER_SCRIPT)
    out.touch()
    proc = subprocess.Popen([sys.executable, str(script), bus_settings.kafka_bootstrap, bus_settings.topic_prefix, str(out)])
    try:
        await wait_until(lambda: "start s1" in out.read_text(), 60, "the second event to start")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        proc.kill()
    lines = out.read_text().splitlines()
    assert lines[-1] == "exited"
    assert lines[:-1] == ["start s0", "done s0", "start s1", "done s1"], "the event in hand was finished, no new one begun"
    assert await committed(bus_settings, "sigterm-group", topics.phase_events.name) == 2


STATIC_MEMBER_SCRIPT = textwrap.dedent(
    """
    import sys
    from kilnbus import BusConsumer, BusProducer, BusSettings, Topics, run_service

    settings = BusSettings(kafka_bootstrap=sys.argv[1], topic_prefix=sys.argv[2], topic_partitions=3,
                           kafka_group_instance_id="static-member-1")
    topics = Topics(settings.topic_prefix)
    out = open(sys.argv[3], "a", buffering=1)

    async def main(stop):
        async with BusProducer(settings) as producer:
            async def handle(d):
                out.write(f"handled {d.value.request_id}\\n")
            consumer = BusConsumer(settings, "static-group", [topics.phase_events], handle, producer=producer,
                                   dead_letter=topics.dead_letter, session_timeout_ms=60000, heartbeat_interval_ms=3000)
            await consumer.start()
            await consumer.run(stop)

    run_service(main)
    """
)


async def test_a_static_member_killed_and_restarted_takes_its_partitions_back_at_once(
    bus_settings: BusSettings, topics: Topics, producer: BusProducer, tmp_path: Path
) -> None:
    """With ``kafka_group_instance_id`` (as the local stack runs each service) a member killed with
    SIGKILL and started again is handed its partitions without waiting out the dead one's session
    (60 s here): the record published while it was down is handled well within that."""
    script, out = tmp_path / "consumer.py", tmp_path / "out.txt"
    script.write_text(STATIC_MEMBER_SCRIPT)
    out.touch()
    command = [sys.executable, str(script), bus_settings.kafka_bootstrap, bus_settings.topic_prefix, str(out)]
    await producer.publish(topics.phase_events, "k", PhaseEvent(request_id="before", phase=Phase.WAITING, service="t"))
    first = subprocess.Popen(command)
    try:
        await wait_until(lambda: "handled before" in out.read_text(), 60, "the first member to handle a record")
    finally:
        first.kill()
        await asyncio.to_thread(first.wait, 30)
    await producer.publish(topics.phase_events, "k", PhaseEvent(request_id="after", phase=Phase.WAITING, service="t"))
    second = subprocess.Popen(command)
    try:
        # A dynamic member would wait for the dead member's 60-s session to end before any assignment.
        await wait_until(lambda: "handled after" in out.read_text(), 30, "the restarted member to handle the next record")
    finally:
        second.terminate()
        await asyncio.to_thread(second.wait, 30)


@pytest.fixture
def fault_broker(repo_root: Path) -> Any:
    """A broker of its own (ports 19092/19093, its own data) that a test may stop and start."""
    env = {"KILN_KAFKA_INSTANCE": "faults", "KILN_KAFKA_PORT": "19092", "KILN_KAFKA_CONTROLLER_PORT": "19093"}
    script = str(repo_root / "deploy" / "local" / "kafka.sh")

    def ctl(action: str) -> None:
        subprocess.run(["bash", script, action], env={**os.environ, **env}, check=True, capture_output=True, timeout=180)

    ctl("start")
    yield ctl
    ctl("stop")


@pytest.mark.slow
async def test_broker_restart_mid_stream_loses_nothing(fault_broker: Any) -> None:
    settings = BusSettings(kafka_bootstrap="127.0.0.1:19092", topic_prefix=f"restart-{os.getpid()}-{id(fault_broker)}.",
                           topic_partitions=2)
    topics = Topics(settings.topic_prefix)
    from kilnbus import ensure_topics

    await ensure_topics(settings)
    got: dict[str, int] = {}

    async def handle(d: Delivery[PhaseEvent]) -> None:
        got[d.value.request_id] = got.get(d.value.request_id, 0) + 1

    n = 200
    async with BusProducer(settings) as producer:
        running = await start_consumer(settings, topics, [topics.phase_events], handle, producer)

        async def publish_all() -> None:
            for i in range(n):
                await producer.publish(topics.phase_events, f"k{i % 5}", PhaseEvent(request_id=f"r{i}", phase=Phase.BUILDING, service="t"))
                await asyncio.sleep(0.01)

        publisher = asyncio.create_task(publish_all())
        await wait_until(lambda: len(got) >= 50, 60, "the first events")
        await asyncio.to_thread(fault_broker, "stop")
        await asyncio.sleep(1.0)  # producer and consumer now face a dead broker
        await asyncio.to_thread(fault_broker, "start")
        await asyncio.wait_for(publisher, 150)
        await wait_until(lambda: len(got) == n, 90, "every event after the restart")
        await running.close()
    assert set(got) == {f"r{i}" for i in range(n)}
