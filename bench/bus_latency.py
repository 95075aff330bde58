"""Bus benchmark: produce-to-consume latency and one partition's throughput, raw aiokafka against kilnbus.

Three rows, same broker, durability (acks=all, idempotent producer) and message size, in one run:
- raw aiokafka, bytes: opaque pre-made payloads, auto-commit. The transport's floor.
- raw aiokafka, Avro by hand: the same single-object Avro encoding written inline with fastavro, as a
  service would have to without the helpers. The like-for-like baseline the targets are judged on.
- kilnbus: typed records, codec, commit-after-handle, dead-lettering.

    .venv/bin/python bench/bus_latency.py [--events 10000] [--rate 1000] [--throughput-events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import struct
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fastavro import schemaless_reader, schemaless_writer

from kilnbus import (
    BusConsumer,
    BusProducer,
    BusSettings,
    Delivery,
    Phase,
    PhaseEvent,
    Topics,
    default_codec,
    ensure_topics,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.stack import use_local_kafka_admin

BOOTSTRAP = os.environ.get("KILN_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
use_local_kafka_admin()
KAFKA = BusSettings(kafka_bootstrap=BOOTSTRAP).client_kwargs()  # the local broker wants its admin
SAMPLE = PhaseEvent(request_id="bench-request-0000000000000000", phase=Phase.BUILDING, service="builder",
                    message="Step 3/12 : RUN pip install --no-cache-dir -r requirements.txt" + " " * 20)
PAYLOAD_SIZE = len(default_codec().encode(SAMPLE))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def paced(n: int, rate: float, send: Callable[[int], Awaitable[None]]) -> None:
    """Call send(i) n times at ``rate`` per second, on a schedule (late calls do not shift the rest)."""
    start = time.perf_counter()
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)


async def make_topic(name: str) -> None:
    admin = AIOKafkaAdminClient(**KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()


# -- raw aiokafka ---------------------------------------------------------------------------------

async def raw_run(n: int, rate: float | None, avro: bool = False) -> tuple[list[float], float]:
    """Returns (latencies in ms, events per second end to end)."""
    codec = default_codec()
    schema, header = codec._current[PhaseEvent.AVRO_NAME]
    fields = SAMPLE.to_avro()
    fields["timestamp"] = int(SAMPLE.timestamp.timestamp() * 1000)
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    await make_topic(topic)
    producer = AIOKafkaProducer(**KAFKA, acks="all", enable_idempotence=True, linger_ms=0)
    consumer = AIOKafkaConsumer(topic, **KAFKA, group_id=topic, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    filler = b"x" * (PAYLOAD_SIZE - 8)
    latencies: list[float] = []
    done = asyncio.Event()
    first_send = 0.0
    last_seen = 0.0

    async def consume() -> None:
        nonlocal last_seen
        async for msg in consumer:
            if avro:
                body = schemaless_reader(io.BytesIO(msg.value[10:]), schema, None)
                sent = float(body["message"])
            else:
                (sent,) = struct.unpack_from("d", msg.value)
            last_seen = time.perf_counter()
            latencies.append((last_seen - sent) * 1000)
            if len(latencies) == n:
                done.set()
                return

    async def send(i: int) -> None:
        if avro:
            fields["message"] = repr(time.perf_counter())
            buf = io.BytesIO()
            buf.write(header)
            schemaless_writer(buf, schema, fields)
            value = buf.getvalue()
        else:
            value = struct.pack("d", time.perf_counter()) + filler
        await producer.send(topic, value, key=b"k")

    task = asyncio.create_task(consume())
    await asyncio.sleep(2)  # let the consumer join its group before timing starts
    first_send = time.perf_counter()
    if rate:
        await paced(n, rate, send)
    else:
        for i in range(n):
            await send(i)
    await producer.flush()
    await asyncio.wait_for(done.wait(), 120)
    await task
    await producer.stop()
    await consumer.stop()
    return latencies, n / (last_seen - first_send)


# -- kilnbus ---------------------------------------------------------------------------------------

async def kiln_run(n: int, rate: float | None, max_crashes: int = 0) -> tuple[list[float], float]:
    """kilnbus's producer and consumer. ``max_crashes`` 0: the delivery path alone (the like-for-like
    row); above 0 the consumer also commits a crash marker before each record (what the services run
    with: one more broker round trip per record, worth it on request topics, measured separately)."""
    settings = BusSettings(kafka_bootstrap=BOOTSTRAP, topic_prefix=f"bench-kiln-{uuid.uuid4().hex[:8]}.", topic_partitions=1)
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings, [topics.phase_events, topics.dead_letter])
    latencies: list[float] = []
    done = asyncio.Event()
    last_seen = 0.0

    async def handle(d: Delivery[PhaseEvent]) -> None:
        nonlocal last_seen
        last_seen = time.perf_counter()
        latencies.append((last_seen - float(d.value.message)) * 1000)
        if len(latencies) == n:
            done.set()

    async with BusProducer(settings) as producer:
        consumer = BusConsumer(settings, topics.phase_events.name, [topics.phase_events], handle,
                               producer=producer, dead_letter=topics.dead_letter, max_crashes=max_crashes)
        await consumer.start()
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))

        async def send(i: int) -> None:
            SAMPLE.message = repr(time.perf_counter())
            await producer.send(topics.phase_events, "k", SAMPLE)

        await asyncio.sleep(2)
        first_send = time.perf_counter()
        if rate:
            await paced(n, rate, send)
        else:
            for i in range(n):
                await send(i)
        await asyncio.wait_for(done.wait(), 120)
        stop.set()
        await task
    return latencies, n / (last_seen - first_send)


def summary(latencies: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(latencies, 0.50), 3), "p99_ms": round(pct(latencies, 0.99), 3),
            "mean_ms": round(statistics.fmean(latencies), 3)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1_000)
    parser.add_argument("--throughput-events", type=int, default=50_000)
    args = parser.parse_args()

    print(f"bus benchmark: {args.events} events at {args.rate:.0f}/s, then {args.throughput_events} as fast as possible;"
          f" {PAYLOAD_SIZE}-byte messages, broker {BOOTSTRAP}")
    runs = {
        "raw aiokafka, bytes": lambda n, rate: raw_run(n, rate, avro=False),
        "raw aiokafka, Avro by hand": lambda n, rate: raw_run(n, rate, avro=True),
        "kilnbus helpers": kiln_run,
        "kilnbus + crash markers": lambda n, rate: kiln_run(n, rate, max_crashes=3),
    }
    rows: dict[str, dict[str, float]] = {}
    for name, run in runs.items():
        lat, _ = await run(args.events, args.rate)
        rows[name] = summary(lat)
    for name, run in runs.items():
        _, rows[name]["throughput"] = await run(args.throughput_events, None)

    print(f"\n{'':30}{'p50 ms':>10}{'p99 ms':>10}{'events/s (1 partition)':>26}")
    for name, row in rows.items():
        print(f"{name:30}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['throughput']:>26,.0f}")
    base, floor, kiln = rows["raw aiokafka, Avro by hand"], rows["raw aiokafka, bytes"], rows["kilnbus helpers"]
    p99_added = kiln["p99_ms"] / base["p99_ms"] - 1
    tp_cost = 1 - kiln["throughput"] / base["throughput"]
    checks = [
        (f"helpers add {p99_added:+.0%} to like-for-like raw p99 (target at most +20%)", p99_added <= 0.20),
        (f"helpers cost {tp_cost:.0%} of like-for-like raw throughput (target at most 20%)", tp_cost <= 0.20),
        (f"helpers p99 {kiln['p99_ms']:.2f} ms at {args.rate:.0f}/s (target under 10 ms)", kiln["p99_ms"] < 10),
    ]
    print(f"\n  against opaque bytes: p99 {kiln['p99_ms'] / floor['p99_ms'] - 1:+.0%}, "
          f"throughput {1 - kiln['throughput'] / floor['throughput']:.0%} lower (the price of Avro in Python)")
    print()
    for text, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (out / f"bus-{stamp}.json").write_text(json.dumps({
        "when": stamp, "machine": f"{platform.node()} {os.cpu_count()} cores", "args": vars(args),
        "rows": rows,
        "targets": {text: met for text, met in checks},
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
