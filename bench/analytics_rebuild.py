"""Analytics benchmark: rebuilding every table from a log of phase events, beside raw aiokafka.

One run, one broker, one log (a topic prefix of its own, deleted afterwards):
- raw aiokafka, bytes: the whole log read by a bare consumer, nothing decoded. The transport's floor.
- raw aiokafka + Avro: the same, each event decoded by Kiln's codec. What any Python reader pays.
- analytics: the faust service (a new consumer group, so every table is built from the log),
  timed from start until every request in the log is in its table and index.

The log is shaped like Kiln's: per request accepted, resolved, launching and ready (or failed); one
request in four builds, with fetching, 20 building log lines and pushing.

    .venv/bin/python bench/analytics_rebuild.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import resource
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kilnbus import BusSettings, Phase, PhaseEvent, Topics, default_codec, ensure_topics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import delete_topics

BOOTSTRAP = os.environ.get("KILN_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
KAFKA = BusSettings(kafka_bootstrap=BOOTSTRAP).client_kwargs()  # as the local broker's admin (tests.conftest)
PARTITIONS = 6


def request_events(i: int, start: datetime) -> list[PhaseEvent]:
    rid = f"bench-{i:09d}"
    t = start

    def at(seconds: float, phase: Phase, **fields: object) -> PhaseEvent:
        nonlocal t
        t += timedelta(seconds=seconds)
        return PhaseEvent(request_id=rid, phase=phase, service="bench", timestamp=t, **fields)  # type: ignore[arg-type]

    repo = f"https://github.com/org{i % 97}/repo{i % 1013}"
    events = [at(0, Phase.ACCEPTED, provider="gh", spec=f"org{i % 97}/repo{i % 1013}/HEAD", launch_host="bench"),
              at(0.4, Phase.RESOLVED, repo_url=repo, ref="f" * 40)]
    if i % 4 == 0:
        events.append(at(1, Phase.FETCHING, message="Cloning\n"))
        events += [at(0.5, Phase.BUILDING, message=f"Step {k}/20 : RUN something\n") for k in range(20)]
        events += [at(5, Phase.PUSHING, message="Pushing\n"), at(3, Phase.BUILT, image_name="img")]
    else:
        events.append(at(0.1, Phase.BUILT, image_name="img"))
    events.append(at(0.2, Phase.LAUNCHING, message="Launching server...\n"))
    if i % 10 == 9:
        events.append(at(2, Phase.FAILED, failure_cause="spawn_failed", message="failed\n"))
    else:
        events.append(at(3, Phase.READY, server_name=f"u{i}/binder", url="http://hub/user/x/"))
    return events


async def produce_log(topic: str, target: int) -> tuple[int, int]:
    """Write at least ``target`` events; returns (events, requests)."""
    codec = default_codec()
    producer = AIOKafkaProducer(**KAFKA, linger_ms=20, max_batch_size=512 * 1024,
                                compression_type=None, acks=1)
    await producer.start()
    start = datetime(2026, 5, 1, tzinfo=UTC)
    events = requests = 0
    pending: list[asyncio.Future[object]] = []
    try:
        while events < target:
            for event in request_events(requests, start + timedelta(seconds=30 * requests)):
                pending.append(await producer.send(topic, codec.encode(event), key=event.request_id.encode()))
                events += 1
            requests += 1
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return events, requests


async def raw_read(topic: str, events: int, decode: bool) -> float:
    codec = default_codec()
    consumer = AIOKafkaConsumer(topic, **KAFKA, group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False, max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < events:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                seen += len(records)
                if decode:
                    for record in records:
                        codec.decode(record.value, PhaseEvent)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def analytics_rebuild(prefix: str, events: int, requests: int) -> tuple[float, float]:
    """Seconds until the analytics tables hold every request; and the peak RSS in MB of this process."""
    from kiln_analytics import metrics
    from kiln_analytics.bootstrap import build_analytics
    from kiln_analytics.settings import Settings

    settings = Settings(kafka_bootstrap=BOOTSTRAP, topic_prefix=prefix, topic_partitions=PARTITIONS,
                        analytics_group=prefix + "analytics")
    analytics = build_analytics(settings)
    before = metrics.EVENTS._value.get()
    started = time.perf_counter()
    await analytics.app.start()
    try:
        while metrics.EVENTS._value.get() - before < events or len(analytics.index) < requests:
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
        totals = analytics.index.totals()
        assert totals["requests"] == requests and totals["in_progress"] == 0, totals
    finally:
        await analytics.app.stop()
    return elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)  # changelog backpressure, expected
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix)
    await ensure_topics(BusSettings(kafka_bootstrap=BOOTSTRAP, topic_prefix=prefix, topic_partitions=PARTITIONS))
    try:
        t0 = time.perf_counter()
        events, requests = await produce_log(topics.phase_events.name, args.events)
        print(f"log: {events:,} events of {requests:,} requests written in {time.perf_counter() - t0:.0f} s")
        raw_s = await raw_read(topics.phase_events.name, events, decode=False)
        avro_s = await raw_read(topics.phase_events.name, events, decode=True)
        faust_s, rss = await analytics_rebuild(prefix, events, requests)
    finally:
        await delete_topics(BOOTSTRAP, prefix)
    rows = [("raw aiokafka, bytes", raw_s), ("raw aiokafka + Avro decode", avro_s), ("analytics (faust), tables rebuilt", faust_s)]
    print(f"\n{'reader':36} {'seconds':>9} {'events/s':>11}")
    for name, seconds in rows:
        print(f"{name:36} {seconds:9.1f} {events / seconds:11,.0f}")
    print(f"\nanalytics rebuild costs {faust_s / avro_s:.1f}x raw aiokafka with decoding; "
          f"peak RSS of the run {rss:.0f} MB for {requests:,} requests")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (out / f"analytics-{stamp}.json").write_text(json.dumps({
        "machine": platform.platform(), "cpus": os.cpu_count(), "events": events, "requests": requests,
        "raw_bytes_s": raw_s, "raw_avro_s": avro_s, "analytics_s": faust_s, "peak_rss_mb": rss}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
