"""The analytics service on the real broker: tables built from the log, rebuilt by a new consumer
group and recovered by a restarted one with the same numbers; a malformed event set aside; the
JSON API, the dashboard and the export answering from what was read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from kiln_analytics.api import create_app
from kiln_analytics.settings import Settings
from kiln_analytics.stream import Analytics
from kilnbus import BusProducer, BusSettings, DeadLetter, Topics, default_codec

from tests.analytics.events import history, utc
from tests.bus.helpers import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ODD = 'https://git.example.org/<script>alert("x")</script>/ünï cödé'
SCHEMA = json.loads((Path(__file__).parent / "launch_v6.schema.json").read_text())


async def publish_log(producer: BusProducer, topics: Topics) -> int:
    """A month of varied requests; returns how many requests it holds."""
    n = 0
    start = utc(2026, 5, 1)
    for i in range(30):
        kind = i % 5
        kwargs: dict[str, Any] = {}
        if kind == 1:
            kwargs = {"build": True}
        elif kind == 2:
            kwargs = {"build": True, "outcome": "failed", "cause": "build_failed", "provider": "gl",
                      "repo": "https://gitlab.com/g/x", "spec": "g/x/HEAD"}
        elif kind == 3:
            kwargs = {"outcome": "failed", "cause": "repo_not_found"}
        elif kind == 4:
            kwargs = {"provider": "git", "repo": ODD, "spec": "odd/HEAD", "stopped": True}
        for event in history(f"req-{i}", start + timedelta(hours=7 * i), **kwargs):
            await producer.publish(topics.phase_events, event.request_id, event)
        n += 1
    return n


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
        analytics = Analytics(settings)
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


async def test_api_page_and_export(producer: BusProducer, topics: Topics, analytics_factory: Any) -> None:
    requests = await publish_log(producer, topics)
    analytics = await analytics_factory("analytics-api")
    await wait_for(analytics, requests)
    app = create_app(analytics.settings, analytics)
    period = {"since": "2026-04-01", "until": "2027-01-01T00:00:00Z"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://analytics") as client:
        summary = (await client.get("/api/v1/summary", params=period)).json()
        assert summary["totals"]["ready"] == 18 and summary["by_provider"] == {"gh": 18, "gl": 6, "git": 6}

        repo = (await client.get("/api/v1/launches", params={**period, "window": "day", "repo": ODD})).json()
        assert sum(b["success"] for b in repo["buckets"]) == 6 and repo["repo"] == ODD

        phases = (await client.get("/api/v1/phases", params=period)).json()["phases"]
        assert phases["pushing"]["p50"] == pytest.approx(3.0)

        one = (await client.get("/api/v1/requests/req-1")).json()
        assert one["spans"] == pytest.approx({"resolving": 1, "queued": 2, "building": 15, "pushing": 3,
                                              "launching": 4.3, "total": 25.3}, abs=0.01)
        assert (await client.get("/api/v1/requests/nope")).status_code == 404

        bad = await client.get("/api/v1/launches", params={"window": "fortnight"})
        assert bad.status_code == 400 and "window" in bad.json()["error"]
        assert (await client.get("/api/v1/summary", params={"since": "yesterday-ish"})).status_code == 400
        assert (await client.get("/", params={"since": "2027-01-01", "until": "2026-01-01"})).status_code == 400

        page = await client.get("/", params=period)
        assert page.status_code == 200
        assert '<script>alert("x")' not in page.text and "&lt;script&gt;" in page.text
        assert "ünï cödé" in page.text and page.text.count("<svg") == 4

        export = await client.get("/api/v1/export/launches.jsonl", params=period)
        lines = export.text.splitlines()
        assert len(lines) == 18
        for line in lines:
            jsonschema.validate(json.loads(line), SCHEMA)

        metrics = (await client.get("/metrics")).text
        assert "kiln_running_servers 12.0" in metrics


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
