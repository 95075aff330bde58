"""Gateway benchmark: time to first event, 1,000 open streams, delivery latency under load.

The gateway runs as its own process (``kiln-gateway``) on a topic prefix of its own; this script
stands in for the resolver, answering each launch request with a ``waiting`` event at once, and
later publishes timed events to the open streams. Floors measured in the same run:
- HTTP: GET /versions on the same gateway (request to first byte without Kafka);
- Kafka: two produce-to-consume hops with raw aiokafka (the path a first event takes).

    .venv/bin/python bench/gateway_stream.py [--first 200] [--streams 1000] [--rate 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kilnbus import BusProducer, BusSettings, Delivery, LaunchRequested, Phase, PhaseEvent, Topics, ensure_topics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.bus.helpers import start_consumer
from tests.support.stack import use_local_kafka_admin

BOOTSTRAP = os.environ.get("KILN_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
use_local_kafka_admin()
KAFKA = BusSettings(kafka_bootstrap=BOOTSTRAP).client_kwargs()  # the local broker wants its admin


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def kafka_two_hops(n: int) -> list[float]:
    """Floor: a message produced, consumed, answered and the answer consumed, with raw aiokafka."""
    a, b = f"bench-hop-a-{uuid.uuid4().hex[:6]}", f"bench-hop-b-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(**KAFKA)
    await admin.start()
    await admin.create_topics([NewTopic(a, 1, 1), NewTopic(b, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(**KAFKA, acks="all", enable_idempotence=True)
    ca = AIOKafkaConsumer(a, **KAFKA, group_id=a, auto_offset_reset="earliest")
    cb = AIOKafkaConsumer(b, **KAFKA, group_id=b, auto_offset_reset="earliest")
    await producer.start(); await ca.start(); await cb.start()

    async def echo() -> None:
        async for msg in ca:
            await producer.send(b, msg.value)

    task = asyncio.create_task(echo())
    await asyncio.sleep(2)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await producer.send(a, b"ping")
        await cb.getone()
        times.append((time.perf_counter() - t) * 1000)
    task.cancel()
    await producer.stop(); await ca.stop(); await cb.stop()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=200)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))  # 1,000 streams need more than 1,024 files

    settings = BusSettings(kafka_bootstrap=BOOTSTRAP, topic_prefix=f"bench-gw-{uuid.uuid4().hex[:8]}.")
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings)
    port = free_port()
    env = {**os.environ, "KILN_TOPIC_PREFIX": settings.topic_prefix, "KILN_GATEWAY_PORT": str(port),
           "KILN_RATE_LIMIT": "0", "KILN_KAFKA_BOOTSTRAP": BOOTSTRAP, "KILN_STREAM_BUFFER": "256"}
    venv_bin = Path(sys.executable).parent
    gateway = subprocess.Popen([str(venv_bin / "kiln-gateway")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     limits=httpx.Limits(max_connections=args.streams + 50)) as client:
            for _ in range(200):
                try:
                    if (await client.get("/versions")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            open_requests: list[str] = []

            async with BusProducer(settings) as producer:
                async def answer(d: Delivery[LaunchRequested]) -> None:
                    open_requests.append(d.value.request_id)
                    await producer.publish(topics.phase_events, d.value.request_id, PhaseEvent(
                        request_id=d.value.request_id, phase=Phase.WAITING, service="bench", message="Waiting...\n"))

                responder = await start_consumer(settings, topics, [topics.launch_requested], answer, producer, group="bench-responder")
                await asyncio.sleep(2)

                # 1. Time to first event, against the HTTP and Kafka floors.
                http_floor, first = [], []
                for _ in range(args.first):
                    t = time.perf_counter()
                    await client.get("/versions")
                    http_floor.append((time.perf_counter() - t) * 1000)
                for _ in range(args.first):
                    t = time.perf_counter()
                    async with client.stream("GET", "/build/gh/org/repo/main", headers={"Accept": "text/event-stream"}) as r:
                        async for line in r.aiter_lines():
                            if line.startswith("data:"):
                                first.append((time.perf_counter() - t) * 1000)
                                break
                kafka_floor = await kafka_two_hops(args.first)
                await asyncio.sleep(1)
                open_requests.clear()

                # 2. Many open streams: memory per stream, CPU while idle.
                rss_before = rss_mb(gateway.pid)
                received: dict[str, list[float]] = {}
                ready = asyncio.Event()
                opened = 0

                async def hold_stream(i: int) -> None:
                    nonlocal opened
                    async with client.stream("GET", f"/build/gh/org/repo{i}/main", headers={"Accept": "text/event-stream"},
                                             timeout=None) as r:
                        async for line in r.aiter_lines():
                            if not line.startswith("data:"):
                                continue
                            body = json.loads(line[5:])
                            if body["message"] == "Waiting...\n":
                                opened += 1
                                if opened == args.streams:
                                    ready.set()
                                continue
                            sent = float(body["message"])
                            received.setdefault(body["message"], []).append((time.time() - sent) * 1000)

                holders = [asyncio.create_task(hold_stream(i)) for i in range(args.streams)]
                await asyncio.wait_for(ready.wait(), 180)
                await asyncio.sleep(3)
                rss_open = rss_mb(gateway.pid)
                cpu0, t0 = cpu_seconds(gateway.pid), time.monotonic()
                await asyncio.sleep(10)
                idle_cpu = (cpu_seconds(gateway.pid) - cpu0) / (time.monotonic() - t0) * 100

                # 3. Delivery latency with the streams open and events flowing.
                targets = list(open_requests)
                sends = int(args.rate * args.seconds)
                start = time.perf_counter()
                for i in range(sends):
                    delay = start + i / args.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    rid = random.choice(targets)
                    await producer.send(topics.phase_events, rid, PhaseEvent(
                        request_id=rid, phase=Phase.BUILDING, service="bench", message=repr(time.time())))
                await asyncio.sleep(3)
                rss_end = rss_mb(gateway.pid)
                for h in holders:
                    h.cancel()
                await asyncio.gather(*holders, return_exceptions=True)
                await responder.close()
        latencies = [v for vs in received.values() for v in vs]
    finally:
        gateway.terminate()
        gateway.wait(30)

    per_stream_kb = (rss_open - rss_before) * 1024 / args.streams
    print(f"gateway benchmark: {args.first} first events; {args.streams} streams; {args.rate:.0f} events/s for {args.seconds:.0f}s\n")
    print(f"  time to first event      p50 {pct(first, .5):6.2f} ms   p99 {pct(first, .99):6.2f} ms")
    print(f"    floor: HTTP /versions  p50 {pct(http_floor, .5):6.2f} ms   p99 {pct(http_floor, .99):6.2f} ms")
    print(f"    floor: 2 Kafka hops    p50 {pct(kafka_floor, .5):6.2f} ms   p99 {pct(kafka_floor, .99):6.2f} ms")
    print(f"  {args.streams} open streams      RSS {rss_before:.0f} MB before, {rss_open:.0f} MB open ({per_stream_kb:.1f} KiB/stream), "
          f"{rss_end:.0f} MB after load; idle CPU {idle_cpu:.1f}%")
    print(f"  delivery under load      p50 {pct(latencies, .5):6.2f} ms   p99 {pct(latencies, .99):6.2f} ms "
          f"({len(latencies)} of {sends} events delivered)")
    checks = [
        (f"first event p50 {pct(first, .5):.1f} ms (target under 20 ms)", pct(first, .5) < 20),
        (f"{args.streams} streams in {rss_open:.0f} MB RSS (target under 150 MB)", rss_open < 150),
        (f"delivery p99 {pct(latencies, .99):.1f} ms (target under 50 ms)", pct(latencies, .99) < 50),
    ]
    print()
    for text, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {text}")
    print(f"  (mean first event {statistics.fmean(first):.2f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
