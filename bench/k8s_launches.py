"""Launches on the Kubernetes test cluster (deploy/k8s, Kiln installed by kiln.sh), in one run:

1. Cache-hit launches on the local stack (`make up`), one after another: request to `ready`, p50/p95
   (the same-run baseline the cluster's figure stands beside).
2. The same on the cluster, through its gateway's NodePort: request to `ready`, p50/p95.
3. Launches per minute on the cluster with 1, 2 and 3 launcher and builder replicas: ``--clients``
   clients launching a cached image back to back for ``--sustain-s`` seconds each, every server
   stopped once ready. The 1-replica row is the baseline of the other two.

Every server is stopped (through the hub's API, with the launcher's token) before the run ends, and
the replicas are set back to 1.

    .venv/bin/python bench/k8s_launches.py [--launches 5] [--clients 4] [--sustain-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
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
from tests.support.k8s import Kiln, cached_spec, cluster_of_this_checkout, installed_kiln, state_file
from tests.support.stack import HUB_API

LOCAL_GATEWAY = "http://127.0.0.1:8585/"
LOCAL_GIT = "http://127.0.0.1:8765"
NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'
CACHED_URL = "http://git.kiln-test.invalid/lab/bench.git"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def launch(client: httpx.AsyncClient, gateway: str, spec: str) -> tuple[float, dict[str, Any]]:
    """Seconds from the request to its last event, and that event."""
    started, last = time.perf_counter(), {}
    async with client.stream("GET", f"{gateway}build/git/{spec}", headers={"Accept": "text/event-stream"}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                last = json.loads(line[5:])
                if last["phase"] in ("ready", "failed"):
                    break
    return time.perf_counter() - started, last


async def stop(hub: httpx.AsyncClient, ready: dict[str, Any]) -> None:
    user, server = ready["url"].rstrip("/").split("/")[-2:]
    await hub.delete(f"users/{user}/servers/{server}", params={"remove": "true"})


async def sequential(gateway: str, spec: str, hub: httpx.AsyncClient, count: int) -> list[float]:
    seconds = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=900)) as client:
        for _ in range(count):
            took, last = await launch(client, gateway, spec)
            assert last.get("phase") == "ready", last
            seconds.append(took)
            await stop(hub, last)
    return seconds


async def sustained(kiln: Kiln, spec: str, hub: httpx.AsyncClient, clients: int, duration: float) -> tuple[int, int]:
    """Launches that reached ready, and those that did not, in ``duration`` seconds of ``clients`` loops."""
    done, failed = 0, 0
    deadline = time.perf_counter() + duration

    async def loop() -> None:
        nonlocal done, failed
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=900)) as client:
            while time.perf_counter() < deadline:
                _, last = await launch(client, kiln.url, spec)
                if last.get("phase") == "ready":
                    done += 1
                    await stop(hub, last)
                else:
                    failed += 1

    await asyncio.gather(*(loop() for _ in range(clients)))
    return done, failed


def scale(kiln: Kiln, replicas: int) -> None:
    deployments = ["deployment/kiln-launcher", "deployment/kiln-builder"]
    kiln.cluster.kubectl("-n", kiln.namespace, "scale", *deployments, f"--replicas={replicas}")
    for d in deployments:
        kiln.cluster.kubectl("-n", kiln.namespace, "rollout", "status", d, "--timeout=300s", timeout=320)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sustain-s", type=float, default=60)
    args = parser.parse_args()
    kiln = installed_kiln(cluster_of_this_checkout())
    sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]  # a commit of its own: an image name no other run used
    cached_spec(kiln, CACHED_URL, sha)
    k8s_spec = f"{quote(CACHED_URL, safe='')}/{sha}"

    root = ROOT / ".state" / "git-repos" / f"bench{uuid.uuid4().hex[:6]}"
    make_repo(root, "cached", {"README.md": uuid.uuid4().hex, "index.ipynb": NOTEBOOK})
    local_spec = quote(f"{LOCAL_GIT}/{root.name}/cached", safe="") + "/HEAD"
    local_token = (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()
    k8s_token = state_file("k8s/hub-launcher-token")
    results: dict[str, Any] = {}
    async with (httpx.AsyncClient(base_url=HUB_API.rstrip("/") + "/", timeout=60,
                                  headers={"Authorization": f"token {local_token}"}) as local_hub,
                httpx.AsyncClient(base_url=f"{kiln.hub_url}/hub/api/", timeout=60,
                                  headers={"Authorization": f"token {k8s_token}"}) as k8s_hub):
        await sequential(LOCAL_GATEWAY, local_spec, local_hub, 1)  # builds it; the launches below are cache hits
        await sequential(kiln.url, k8s_spec, k8s_hub, 1)  # the node pulls the image once
        results["local_cache_hit"] = await sequential(LOCAL_GATEWAY, local_spec, local_hub, args.launches)
        results["k8s_cache_hit"] = await sequential(kiln.url, k8s_spec, k8s_hub, args.launches)
        try:
            for replicas in (1, 2, 3):
                scale(kiln, replicas)
                done, failed = await sustained(kiln, k8s_spec, k8s_hub, args.clients, args.sustain_s)
                results[f"per_minute_{replicas}"] = {"ready": done, "failed": failed,
                                                     "per_minute": done * 60 / args.sustain_s}
        finally:
            scale(kiln, 1)

    print(f"\nKiln launches, local stack and Kubernetes test cluster ({time.strftime('%Y-%m-%d')})")
    for name in ("local_cache_hit", "k8s_cache_hit"):
        values = results[name]
        print(f"  {name:<16} p50 {statistics.median(values):6.2f} s  p95 {pct(values, 0.95):6.2f} s  (n={len(values)})")
    base = results["per_minute_1"]["per_minute"] or 1
    for replicas in (1, 2, 3):
        row = results[f"per_minute_{replicas}"]
        print(f"  {replicas} launcher+builder: {row['per_minute']:5.1f} launches/min ({row['ready']} ready, "
              f"{row['failed']} not; x{row['per_minute'] / base:.2f} of 1 replica), {args.clients} clients")


if __name__ == "__main__":
    asyncio.run(main())
