"""Resolver benchmark: resolutions per second for cached refs, and launch-requested -> next event latency.

One resolver (the real service loop, in this process) on a topic prefix of its own, resolving a
real repository served by the loopback git host over the git provider. Floor from the same run:
``git ls-remote`` against the same server, which is what an uncached git resolution costs at least.

    .venv/bin/python bench/resolver_throughput.py [--requests 2000] [--latency 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln_resolver.bootstrap import run as serve
from kiln_resolver.settings import Settings
from kilnbus import (
    BusProducer,
    BusSettings,
    KafkaLogReader,
    LaunchRequested,
    PhaseEvent,
    Topics,
    default_codec,
    ensure_topics,
)
from tests.support.githost import make_repo, start_githost
from tests.support.stack import use_local_kafka_admin

use_local_kafka_admin()  # the local broker wants its admin


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency", type=int, default=200)
    args = parser.parse_args()
    bootstrap = os.environ.get("KILN_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    with tempfile.TemporaryDirectory() as tmp:
        make_repo(Path(tmp), "org/bench", {"requirements.txt": "six\n"})
        host = start_githost(Path(tmp))
        url = f"{host.url}/org/bench"
        spec = f"{quote(url, safe='')}/HEAD"

        floor = []
        for _ in range(50):
            t = time.perf_counter()
            subprocess.run(["git", "ls-remote", url, "HEAD"], check=True, capture_output=True)
            floor.append((time.perf_counter() - t) * 1000)

        bus = BusSettings(kafka_bootstrap=bootstrap, topic_prefix=f"bench-res-{uuid.uuid4().hex[:8]}.")
        topics = Topics(bus.topic_prefix)
        await ensure_topics(bus)
        # The local registry wants credentials (token auth): the resolver's own pull account, as services.sh gives it.
        puller = Path(__file__).resolve().parents[1] / ".state" / "secrets" / "registry-puller"
        login = {"registry_username": "puller", "registry_password": puller.read_text().strip()} if puller.exists() else {}
        settings = Settings(**bus.model_dump(), allowed_private_hosts=["127.0.0.1"], resolve_cache_s=3600,
                            image_prefix=f"127.0.0.1:5000/bench{uuid.uuid4().hex[:6]}/binder-", **login)
        stop = asyncio.Event()
        resolver = asyncio.create_task(serve(settings, stop))
        first_seen: dict[str, float] = {}
        answered = asyncio.Event()
        target = 0

        codec = default_codec()

        async def watch(reader: KafkaLogReader) -> None:
            # Group-less, as the gateway's router reads phase events: the time an event can reach a user.
            async for record in reader:
                event = codec.decode(record.value, expect=PhaseEvent)
                assert isinstance(event, PhaseEvent)
                if event.request_id not in first_seen:
                    first_seen[event.request_id] = time.perf_counter()
                    if len(first_seen) >= target:
                        answered.set()

        async with BusProducer(bus) as producer, KafkaLogReader(bus, [topics.phase_events], start="end") as reader:
            watcher = asyncio.create_task(watch(reader))
            await asyncio.sleep(3)

            async def run(n: int, paced: bool) -> dict[str, float]:
                nonlocal target
                sent: dict[str, float] = {}
                target = len(first_seen) + n
                answered.clear()
                for _ in range(n):
                    rid = uuid.uuid4().hex
                    sent[rid] = time.perf_counter()
                    fut = await producer.send(topics.launch_requested, rid, LaunchRequested(request_id=rid, provider="git", spec=spec))
                    if paced:
                        await fut
                        while rid not in first_seen:
                            await asyncio.sleep(0.0005)
                await asyncio.wait_for(answered.wait(), 300)
                return sent

            await run(20, paced=True)  # warm: resolution cached, registry client connected
            sent = await run(args.latency, paced=True)
            latency = [(first_seen[r] - t) * 1000 for r, t in sent.items()]
            start = time.perf_counter()
            sent = await run(args.requests, paced=False)
            rate = args.requests / (max(first_seen[r] for r in sent) - start)
            watcher.cancel()
        stop.set()
        await resolver
        host.server.shutdown()

    print("resolver benchmark: git provider, cached ref, registry check per request (image not built)\n")
    print(f"  launch-requested -> first phase event   p50 {pct(latency, .5):6.2f} ms   p99 {pct(latency, .99):6.2f} ms")
    print(f"  floor: git ls-remote, same server       p50 {pct(floor, .5):6.2f} ms   p99 {pct(floor, .99):6.2f} ms")
    print(f"  resolutions per second, one resolver    {rate:,.0f}/s over {args.requests} requests")


if __name__ == "__main__":
    asyncio.run(main())
