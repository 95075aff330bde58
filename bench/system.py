"""Whole-system benchmark on the running local stack (`make up`), through the public API, in one run:

1. Floor: a bare `docker run` of a built image until its Jupyter server answers (what any launch of
   that image costs at least on this engine).
2. Cache-hit launches through Kiln with warm pools off, one after another: request to `ready`,
   p50/p95 (each server is stopped before the next launch).
3. Pool hits: the launcher restarted with a warm pool of one for a cached image; each launch waits
   until a warm server is ready (the launcher's /metrics), then request to `ready`, p50/p95.
4. Cold build and launch of the reference repository (requirements.txt with numpy, pandas and
   matplotlib, plus a notebook), request to `ready`.
5. Sustained launches per minute: 8 clients launching cached repositories back to back for 60 s,
   each stopping its server once it is ready (warm pools off: 8 clients outrun any pool).

The launcher is restarted with the settings each part needs (deploy/local/services.sh), and with
the stack's own settings at the end.

    .venv/bin/python bench/system.py [--launches 20] [--sustain-s 60] [--skip-cold]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.githost import make_repo
from tests.support.stack import HUB_API, use_local_kafka_admin

use_local_kafka_admin()  # the local broker wants its admin

GATEWAY = "http://127.0.0.1:8585"
GIT = "http://127.0.0.1:8765"
LAUNCHER_METRICS = f"http://127.0.0.1:{os.environ.get('KILN_LAUNCHER_METRICS_PORT', '9103')}/metrics"
NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def launch(spec: str) -> tuple[float, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    started = time.perf_counter()
    async with (httpx.AsyncClient(timeout=httpx.Timeout(10, read=900)) as client,
                client.stream("GET", f"{GATEWAY}/build/git/{spec}", headers={"Accept": "text/event-stream"}) as r):
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return time.perf_counter() - started, events


async def stop_server(hub: httpx.AsyncClient, ready: dict[str, Any]) -> None:
    user, server = ready["url"].rstrip("/").split("/")[-2:]
    await hub.delete(f"/users/{user}/servers/{server}", params={"remove": "true"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bare_docker_run(image: str, isolated: bool = False) -> float:
    """Seconds from `docker run` until the image's Jupyter server answers /api/status.

    ``isolated``: the way Kiln runs servers (the user network, uid 1000, no capabilities, no new
    privileges, memory, CPU and process limits), so the cost of isolation itself is measured.
    """
    port, name = free_port(), f"kiln-bench-{uuid.uuid4().hex[:6]}"
    if isolated:
        where = ["--network", "kiln-users", "--user", "1000", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                 "--pids-limit", "1024", "--memory", "2g", "--cpus", "1"]
        ip, port = "0.0.0.0", 8888
    else:
        where, ip = ["--network", "host"], "127.0.0.1"
    started = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--rm", *where, "--name", name, image, "jupyter", "server",
                    f"--ip={ip}", f"--port={port}", "--IdentityProvider.token=", "--ServerApp.password="],
                   check=True, capture_output=True)
    host = "127.0.0.1"
    if isolated:
        host = subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
                              check=True, capture_output=True, text=True).stdout.strip()
    try:
        while True:
            try:
                if httpx.get(f"http://{host}:{port}/api/status", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > 120:
                raise RuntimeError("the bare container never answered")
            time.sleep(0.05)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def restart_launcher(env: dict[str, str]) -> None:
    """The local stack's launcher, restarted with ``env`` over the stack's settings."""
    for action in ("stop", "start"):
        subprocess.run(["bash", str(ROOT / "deploy/local/services.sh"), action, "launcher"], check=True,
                       capture_output=True, env={**os.environ, **env})


def pool_ready() -> float:
    """Warm servers the launcher says are ready to hand over."""
    text = httpx.get(LAUNCHER_METRICS, timeout=5).text
    found = re.search(r'^kiln_pool_servers\{state="ready"\} ([0-9.]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def until_pool_ready(timeout: float = 120) -> None:
    deadline = time.perf_counter() + timeout
    while pool_ready() < 1:
        if time.perf_counter() > deadline:
            raise RuntimeError("no warm server became ready")
        await asyncio.sleep(0.1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--sustain-s", type=float, default=60)
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()
    root = ROOT / ".state" / "git-repos" / f"bench{uuid.uuid4().hex[:6]}"
    token = (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()
    results: dict[str, Any] = {}
    restart_launcher({"KILN_POOL_SIZE": "0"})
    try:
        async with httpx.AsyncClient(base_url=HUB_API, headers={"Authorization": f"token {token}"}, timeout=60) as hub:
            specs = []
            for i in range(3):
                make_repo(root, f"cached{i}", {"README.md": uuid.uuid4().hex, "index.ipynb": NOTEBOOK})
                specs.append(quote(f"{GIT}/{root.name}/cached{i}", safe="") + "/HEAD")
                _, events = await launch(specs[-1])  # builds it: the launches measured below are cache hits
                assert events[-1]["phase"] == "ready", events[-3:]
                await stop_server(hub, events[-1])
            image = next(e["imageName"] for e in events if e.get("imageName"))

            floor, isolated_floor = [], []
            for _ in range(5):  # interleaved, so both see the same machine
                floor.append(bare_docker_run(image))
                isolated_floor.append(bare_docker_run(image, isolated=True))
            hits = []
            for i in range(args.launches):
                seconds, events = await launch(specs[i % len(specs)])
                assert events[-1]["phase"] == "ready", events[-3:]
                hits.append(seconds)
                await stop_server(hub, events[-1])
            results["floor"] = floor
            results["isolated_floor"] = isolated_floor
            results["cache_hit"] = hits

            restart_launcher({"KILN_POOL_SIZE": "1", "KILN_POOL_IMAGES": json.dumps([image]), "KILN_POOL_TOP_IMAGES": "0",
                              "KILN_POOL_CHECK_INTERVAL_S": "0.2"})
            pooled = []
            for _ in range(args.launches):
                await until_pool_ready()
                seconds, events = await launch(specs[-1])
                assert events[-1]["phase"] == "ready" and events[-1].get("warm") is True, events[-3:]
                pooled.append(seconds)
                await stop_server(hub, events[-1])
            results["pool_hit"] = pooled
            restart_launcher({"KILN_POOL_SIZE": "0"})

            if not args.skip_cold:
                make_repo(root, "reference", {"requirements.txt": f"# {uuid.uuid4().hex}\nnumpy==2.3.5\npandas==2.3.3\n"
                                              "matplotlib==3.10.7\n", "index.ipynb": NOTEBOOK})
                seconds, events = await launch(quote(f"{GIT}/{root.name}/reference", safe="") + "/HEAD")
                assert events[-1]["phase"] == "ready", events[-3:]
                results["cold"] = seconds
                await stop_server(hub, events[-1])

            done: list[float] = []
            deadline = time.perf_counter() + args.sustain_s

            async def worker(n: int) -> None:
                while time.perf_counter() < deadline:
                    seconds, events = await launch(specs[n % len(specs)])
                    if events and events[-1]["phase"] == "ready":
                        done.append(seconds)
                        await stop_server(hub, events[-1])

            await asyncio.gather(*(worker(n) for n in range(8)))
            results["sustained_per_min"] = len(done) * 60 / args.sustain_s
            results["sustained_p50"] = statistics.median(done) if done else None
    finally:
        shutil.rmtree(root, ignore_errors=True)
        restart_launcher({})

    print("\nwhole system, cache-hit launch, request to ready:")
    print(f"  floor (bare docker run until the server answers, 5 runs): p50 {pct(floor, .5):.2f} s, "
          f"p95 {pct(floor, .95):.2f} s")
    print(f"  floor, isolated as Kiln's servers are (5 runs):          p50 {pct(isolated_floor, .5):.2f} s, "
          f"p95 {pct(isolated_floor, .95):.2f} s  ({pct(isolated_floor, .5) / pct(floor, .5):.2f}x the floor at p50)")
    print(f"  Kiln, no warm server ({len(hits)} launches):              p50 {pct(hits, .5):.2f} s, "
          f"p95 {pct(hits, .95):.2f} s  ({pct(hits, .5) / pct(floor, .5):.2f}x the floor at p50)")
    print(f"  Kiln, warm pool hit ({len(pooled)} launches):               p50 {pct(pooled, .5):.2f} s, "
          f"p95 {pct(pooled, .95):.2f} s  ({pct(pooled, .5) / pct(floor, .5):.2f}x the floor at p50)")
    if "cold" in results:
        print(f"cold build and launch of the reference repository: {results['cold']:.1f} s")
    print(f"sustained: {results['sustained_per_min']:.0f} launches per minute with 8 clients "
          f"(p50 {results['sustained_p50']:.2f} s each)")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    (out / f"system-{stamp}.json").write_text(json.dumps({"machine": platform.platform(), **results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
