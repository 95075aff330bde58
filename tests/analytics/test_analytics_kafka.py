"""The analytics service on the real broker: faust's tables built from the log, rebuilt by a new
consumer group and recovered by a restarted one with the same numbers; a malformed event set aside.

The fold, the index, the JSON API, the dashboard and the export are tested in memory
(test_analytics_memory.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import generate_latest

from kiln_analytics.bootstrap import build_analytics
from kiln_analytics.settings import Settings
from kiln_analytics.stream import Analytics
from kilnbus import BusProducer, BusSettings, DeadLetter, Topics, default_codec
from tests.analytics.events import month_of_requests, utc
from tests.bus.helpers import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def publish_log(producer: BusProducer, topics: Topics) -> int:
    """A month of varied requests (``month_of_requests``); returns how many requests it holds."""
    requests = month_of_requests()
    for events in requests:
        for event in events:
            await producer.publish(topics.phase_events, event.request_id, event)
    return len(requests)


def numbers(analytics: Analytics) -> dict[str, Any]:
    index = analytics.index
    since, until = utc(2026, 1, 1).timestamp(), utc(2027, 1, 1).timestamp()
    return {"totals": index.totals(), "days": index.launches("day", since, until),
            "repos": index.by_repo(since, until, 10), "failures": index.failures(since, until),
            "phases": index.phase_timings(since, until), "providers": index.by_provider(since, until)}


@pytest.fixture
async def analytics_factory(bus_settings: BusSettings) -> AsyncIterator[Any]:
    started: list[Analytics] = []

    async def start(group: str) -> Analytics:
        settings = Settings(kafka_bootstrap=bus_settings.kafka_bootstrap, topic_prefix=bus_settings.topic_prefix,
                            topic_partitions=bus_settings.topic_partitions, analytics_group=bus_settings.topic_prefix + group)
        analytics = build_analytics(settings)
        await analytics.app.start()
        started.append(analytics)
        return analytics

    yield start
    for analytics in started:
        await analytics.app.stop()


async def wait_for(analytics: Analytics, requests: int) -> None:
    await wait_until(lambda: analytics.ready and analytics.index.totals()["requests"] == requests
                     and analytics.index.totals()["in_progress"] == 0, 90, f"{requests} finished requests")


async def test_tables_rebuilt_by_a_new_group_and_recovered_by_a_restart(
        producer: BusProducer, topics: Topics, bus_settings: BusSettings, analytics_factory: Any) -> None:
    requests = await publish_log(producer, topics)
    await producer.send_raw(topics.phase_events.name, b"req-bad", b"\x00not avro at all")

    first = await analytics_factory("analytics-a")
    await wait_for(first, requests)
    expected = numbers(first)
    assert expected["totals"] == {"requests": 30, "ready": 18, "failed": 12, "in_progress": 0, "running_servers": 12}
    assert expected["failures"] == {"build_failed": 6, "repo_not_found": 6}
    assert expected["phases"]["building"]["count"] == 6 and expected["phases"]["total"]["count"] == 30
    await first.app.stop()

    # A new consumer group reads the log from its start and arrives at the same numbers.
    fresh = await analytics_factory("analytics-b")
    await wait_for(fresh, requests)
    assert numbers(fresh) == expected

    # The first group restarted: its table comes back from the changelog, not from re-reading the log.
    again = await analytics_factory("analytics-a")
    await wait_for(again, requests)
    assert numbers(again) == expected

    # The malformed event was set aside once per group, with where it came from.
    letters = await read_dead_letters(bus_settings, topics, 2)
    assert {letter.consumer_group for letter in letters} == {bus_settings.topic_prefix + "analytics-a",
                                                            bus_settings.topic_prefix + "analytics-b"}
    assert all(letter.value == b"\x00not avro at all" and letter.source_topic == topics.phase_events.name
               for letter in letters)
    # The running-servers gauge reads the live index at each scrape.
    assert "kiln_running_servers 12.0" in generate_latest().decode()


async def read_dead_letters(settings: BusSettings, topics: Topics, count: int) -> list[DeadLetter]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topics.dead_letter.name, **settings.client_kwargs(),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        batches = 0
        while len(letters) < count and batches < 40:
            batches += 1
            for records in (await consumer.getmany(timeout_ms=500)).values():
                letters += [default_codec().decode(r.value, DeadLetter) for r in records]  # type: ignore[misc]
    finally:
        await consumer.stop()
    return letters
