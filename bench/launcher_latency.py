"""Launcher benchmark: cache-hit launch latency from the request on the bus to ``ready``.

Against floors measured in the same run, on the same image (the base image, already built):
- the hub directly: create a user, start a server through the REST API, follow progress to ready;
- a bare `docker run` of the image until its Jupyter server answers HTTP.
Target: Kiln adds at most 15% to the direct hub spawn (p50).

    .venv/bin/python bench/launcher_latency.py [--launches 20]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln_launcher.bootstrap import run as serve
from kiln_launcher.settings import Settings
from kilnbus import BusProducer, BusSettings, Delivery, HubLaunchRequested, Phase, PhaseEvent, Topics, ensure_topics
from kilnbus.sealing import new_key
from tests.bus.helpers import start_consumer
from tests.support.stack import HUB_API, use_local_kafka_admin

use_local_kafka_admin()  # the local broker wants its admin

ROOT = Path(__file__).resolve().parents[1]
API = HUB_API
IMAGE = (ROOT / ".state" / "base-image").read_text().strip()
TOKEN = (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def hub_direct(client: httpx.AsyncClient) -> tuple[float, str]:
    user = f"bench-direct-{uuid.uuid4().hex[:8]}"
    t = time.perf_counter()
    await client.post(f"/users/{user}")
    await client.post(f"/users/{user}/servers/s", json={"image": IMAGE})
    async with client.stream("GET", f"/users/{user}/servers/s/progress", timeout=None) as r:
        async for line in r.aiter_lines():
            if '"ready": true' in line:
                break
    return time.perf_counter() - t, user


def docker_run() -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"bench-{uuid.uuid4().hex[:8]}"
    t = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--rm", "--network", "host", "--name", name, IMAGE, "jupyter", "server",
                    "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--IdentityProvider.token=x"], check=True, capture_output=True)
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    elapsed = time.perf_counter() - t
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=20)
    args = parser.parse_args()
    bus = BusSettings(topic_prefix=f"bench-launch-{uuid.uuid4().hex[:8]}.")
    await ensure_topics(bus)
    topics = Topics(bus.topic_prefix)
    settings = Settings(**bus.model_dump(), hub_api_url=HUB_API, hub_api_token=TOKEN, token_seal_keys=[new_key()])
    headers = {"Authorization": f"token {TOKEN}"}
    direct, bare, kiln = [], [], []
    cleanup: list[str] = []
    ready: dict[str, float] = {}

    async def collect(d: Delivery[PhaseEvent]) -> None:
        if d.value.phase in (Phase.READY, Phase.FAILED):
            ready[d.value.request_id] = time.perf_counter()
            if d.value.phase is Phase.FAILED:
                print("failed:", d.value.message)
            if d.value.server_name:
                cleanup.append(d.value.server_name.partition("/")[0])

    stop = asyncio.Event()
    launcher = asyncio.create_task(serve(settings, stop))
    async with httpx.AsyncClient(base_url=API, headers=headers, timeout=60) as client, BusProducer(bus) as producer:
        reader = await start_consumer(bus, topics, [topics.phase_events], collect, producer, group="bench-launch-reader")
        await asyncio.sleep(3)

        async def remove(user: str) -> None:
            await client.request("DELETE", f"/users/{user}/servers/s", json={"remove": True})
            for _ in range(50):
                if (await client.delete(f"/users/{user}")).status_code in (204, 404):
                    return
                await asyncio.sleep(0.2)

        for i in range(args.launches):  # interleaved, so that load and caches treat all three alike
            bare.append(docker_run())
            elapsed, user = await hub_direct(client)
            direct.append(elapsed)
            await client.request("DELETE", f"/users/{user}/servers/s", json={"remove": True})
            await client.delete(f"/users/{user}")
            rid = uuid.uuid4().hex
            t = time.perf_counter()
            await producer.publish(topics.hub_launch_requested, rid, HubLaunchRequested(
                request_id=rid, image_name=IMAGE, repo_url="http://127.0.0.1:1/org/bench.git", ref="a" * 40,
                provider="git", spec="x/HEAD"))
            while rid not in ready:
                await asyncio.sleep(0.01)
            kiln.append(ready[rid] - t)
            while cleanup:
                user = cleanup.pop()
                server = (await client.get(f"/users/{user}")).json().get("servers", {})
                for name in server:
                    await client.request("DELETE", f"/users/{user}/servers/{name}", json={"remove": True})
                await asyncio.sleep(1)
                await client.delete(f"/users/{user}")
        await reader.close()
    stop.set()
    await launcher

    print(f"launcher benchmark: {args.launches} cache-hit launches of the base image, interleaved with the floors\n")
    for name, values in (("Kiln launcher, request to ready", kiln), ("hub API directly, to ready", direct),
                         ("bare docker run, until it answers", bare)):
        print(f"  {name:36} p50 {pct(values, .5):5.2f} s   p95 {pct(values, .95):5.2f} s   mean {statistics.fmean(values):5.2f} s")
    added = pct(kiln, .5) / pct(direct, .5) - 1
    print(f"\n  [{'met' if added <= 0.15 else 'MISSED'}] Kiln adds {added:+.0%} to the direct hub spawn at p50 (target at most +15%)")


if __name__ == "__main__":
    asyncio.run(main())
