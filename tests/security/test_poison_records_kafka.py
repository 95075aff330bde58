"""Against the real broker: a request that kills its consumer process is set aside after three
crashes, and a handler bug reaches the user as a ``failed`` event within seconds.

The crashing consumer is a separate process whose handler calls ``os._exit(137)`` (what an OOM
kill looks like from outside: no exception, no cleanup, no commit); each run is a new process, as
a restarted or another replica would be.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from kilnbus import BuildRequested, BusProducer, BusSettings, DeadLetter, Delivery, Phase, PhaseEvent, Topics

from ..bus.helpers import start_consumer, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CRASHING_CONSUMER = textwrap.dedent(
    """
    import asyncio, os, sys
    from kilnbus import BusConsumer, BusProducer, BusSettings, Topics, run_service

    # A static member, as the local stack runs each service: each restart takes the partition back at once.
    settings = BusSettings(kafka_bootstrap=sys.argv[1], topic_prefix=sys.argv[2], topic_partitions=3,
                           kafka_group_instance_id="poisoned-builder")
    topics = Topics(settings.topic_prefix)
    out = open(sys.argv[3], "a", buffering=1)

    async def main(stop):
        async with BusProducer(settings) as producer:
            async def handle(d):
                out.write(f"handling {d.value.request_id}\\n")
                if d.value.request_id == "poison":
                    os._exit(137)  # killed mid-handler: nothing after this runs
            consumer = BusConsumer(settings, settings.group_id("kiln-builder"), [topics.build_requested], handle, producer=producer,
                                   dead_letter=topics.dead_letter, failure_events=topics.phase_events, max_crashes=3,
                                   session_timeout_ms=6000, heartbeat_interval_ms=1000)
            await consumer.start()
            await consumer.run(stop)

    run_service(main)
    """
)


def request(rid: str) -> BuildRequested:
    return BuildRequested(request_id=rid, image_name="reg/poison:1", repo_url="https://example.org/r", ref="a" * 40,
                          provider="git", spec="https%3A%2F%2Fexample.org%2Fr/HEAD")


async def test_a_request_that_kills_its_consumer_three_times_is_set_aside(
    bus_settings: BusSettings, topics: Topics, producer: BusProducer, tmp_path: Path
) -> None:
    for rid in ("before", "poison", "after"):  # one key, one partition: "after" waits behind "poison"
        await producer.publish(topics.build_requested, "reg/poison:1", request(rid))
    script, out = tmp_path / "consumer.py", tmp_path / "out.txt"
    script.write_text(CRASHING_CONSUMER)
    out.touch()
    command = [sys.executable, str(script), bus_settings.kafka_bootstrap, bus_settings.topic_prefix, str(out)]
    for run in range(1, 4):
        proc = subprocess.Popen(command)
        try:
            assert await asyncio.to_thread(proc.wait, 90) == 137, f"run {run} was killed by the poison request"
        finally:
            proc.kill()
        assert out.read_text().count("handling poison") == run
    proc = subprocess.Popen(command)
    try:
        await wait_until(lambda: "handling after" in out.read_text(), 90, "the request behind the poison one")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    lines = out.read_text().splitlines()
    assert lines.count("handling poison") == 3, "set aside on the fourth delivery without running it"
    assert lines.count("handling before") == 1 and lines.count("handling after") == 1

    events: list[PhaseEvent] = []
    letters: list[DeadLetter] = []

    async def collect(d: Delivery[Any]) -> None:
        (events if isinstance(d.value, PhaseEvent) else letters).append(d.value)

    reader = await start_consumer(bus_settings, topics, [topics.phase_events, topics.dead_letter], collect, producer,
                                  group="poison-reader", max_crashes=0)
    await wait_until(lambda: bool(events) and bool(letters), 30, "the failed event and the dead letter")
    await reader.close()
    assert [(e.request_id, e.phase, e.failure_cause) for e in events] == [("poison", Phase.FAILED, "repeated_crash")]
    assert letters[0].consumer_group == bus_settings.group_id("kiln-builder") and "crashed its consumer 3 time(s)" in letters[0].error


async def test_a_handler_bug_is_a_failed_event_within_seconds(
    bus_settings: BusSettings, topics: Topics, producer: BusProducer
) -> None:
    handled: list[str] = []

    async def handle(d: Delivery[BuildRequested]) -> None:
        if d.value.request_id == "buggy":
            raise AttributeError("'NoneType' object has no attribute 'internal_detail'")
        handled.append(d.value.request_id)

    events: list[PhaseEvent] = []

    async def collect(d: Delivery[PhaseEvent]) -> None:
        events.append(d.value)

    reader = await start_consumer(bus_settings, topics, [topics.phase_events], collect, producer, group="events-reader")
    service = await start_consumer(bus_settings, topics, [topics.build_requested], handle, producer, group=bus_settings.group_id("kiln-builder"),
                                   failure_events=topics.phase_events)
    await asyncio.sleep(3)  # both have joined their groups
    sent = time.monotonic()
    await producer.publish(topics.build_requested, "k", request("buggy"))
    await producer.publish(topics.build_requested, "k", request("fine"))
    await wait_until(lambda: bool(events) and "fine" in handled, 30, "the failed event and the next request")
    elapsed = time.monotonic() - sent
    await service.close()
    await reader.close()
    assert elapsed < 10
    [event] = events
    assert (event.request_id, event.phase, event.failure_cause) == ("buggy", Phase.FAILED, "internal_error")
    assert "internal_detail" not in event.message and "NoneType" not in event.message
    assert service.consumer.dead_lettered == 1
