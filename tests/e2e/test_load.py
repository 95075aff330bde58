"""Load, bounded and on loopback: 200 concurrent clients launching cached repositories for 2 minutes.

The launcher runs with a total quota (the configured limit a public Binder has), so launches beyond
it are refused with BinderHub's "Too many users" answer; each client that gets a server stops it
again, as a user closing the tab would have it culled. Checked: every stream ends (ready, or failed
with the quota's 429), no other error, and each service's memory is flat from the first half of the
run to the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support.githost import make_repo
from ..support.stack import HUB_API
from .conftest import KilnServices
from .test_binder import GATEWAY, ROOT, launch, spec_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow, pytest.mark.load]
CLIENTS = 200
DURATION_S = 120
QUOTA = 8
STREAM_LIMIT_S = 150  # a stream not ended by then is lost


def memory_mb(services: KilnServices) -> dict[str, float]:
    out = {}
    for name, container in services.containers.items():
        stats = container.get_wrapped_container().stats(stream=False)
        mem = stats["memory_stats"]
        # usage less the page cache, as `docker stats` shows it
        out[name] = (mem["usage"] - mem.get("stats", {}).get("inactive_file", 0)) / 2**20
    return out


class Tally:
    def __init__(self) -> None:
        self.ready = 0
        self.quota = 0
        self.other: list[str] = []
        self.lost = 0


async def client(n: int, specs: list[str], deadline: float, tally: Tally, hub: httpx.AsyncClient) -> None:
    rng = random.Random(n)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=STREAM_LIMIT_S)) as http:
        while time.monotonic() < deadline:
            last: dict[str, Any] | None = None
            try:
                async with http.stream("GET", f"{GATEWAY}/build/git/{rng.choice(specs)}",
                                       headers={"Accept": "text/event-stream"}) as r:
                    if r.status_code != 200 and r.status_code != 429:
                        tally.other.append(f"HTTP {r.status_code}")
                    async for line in r.aiter_lines():
                        if line.startswith("data:"):
                            last = json.loads(line[5:])
            except httpx.ReadTimeout:
                tally.lost += 1
                continue
            if last is None or last["phase"] not in ("ready", "failed"):
                tally.lost += 1
            elif last["phase"] == "ready":
                tally.ready += 1
                user, server = last["url"].rstrip("/").split("/")[-2:]
                await hub.delete(f"/users/{user}/servers/{server}", params={"remove": "true"})
            elif last.get("status_code") == 429:
                tally.quota += 1
            else:
                tally.other.append(last["message"][:200])
            await asyncio.sleep(rng.uniform(1, 3))  # a person reading the page before trying again


async def test_200_clients_for_two_minutes(repos: Path, kiln_services: KilnServices) -> None:
    specs = []
    for i in range(3):
        make_repo(repos, f"load{i}", {"README.md": uuid.uuid4().hex})
        specs.append(spec_for(repos, f"load{i}"))
    # Built once, side by side: every launch below is a cache hit.
    for events in await asyncio.gather(*(launch(spec) for spec in specs)):
        assert events[-1]["phase"] == "ready", events[-3:]
    # The quota a public Binder configures, and no per-address rate limit (every client here is 127.0.0.1).
    # The hub, slowed by the storm, is retried as in production (4 s, doubling), not as the suite's other tests do.
    kiln_services.restart_many({"launcher": {"KILN_TOTAL_QUOTA": str(QUOTA), "KILN_RETRY_DELAY_S": "4"},
                                "gateway": {"KILN_RATE_LIMIT": "0"}})
    token = (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()
    tally = Tally()
    try:
        async with httpx.AsyncClient(base_url=HUB_API, headers={"Authorization": f"token {token}"}, timeout=30) as hub:
            start = time.monotonic()
            deadline = start + DURATION_S
            clients = [asyncio.create_task(client(n, specs, deadline, tally, hub)) for n in range(CLIENTS)]
            await asyncio.sleep(DURATION_S / 2)
            middle = memory_mb(kiln_services)
            await asyncio.wait_for(asyncio.gather(*clients), DURATION_S / 2 + STREAM_LIMIT_S + 30)
            end = memory_mb(kiln_services)
    finally:
        kiln_services.restart_many({"launcher": None, "gateway": None})
    print(f"\nload: {tally.ready} ready, {tally.quota} refused by the quota, {tally.lost} lost, "
          f"{len(tally.other)} other; memory MB middle {middle} end {end}")
    assert tally.lost == 0 and tally.other == [], tally.other[:5]
    # Two cores also serve the request storm, so servers start slowly; at least a quota's worth must.
    assert tally.ready >= QUOTA, "servers kept being launched under the load"
    assert tally.quota > 0, "200 clients against a quota of 8 must meet it"
    for name in end:
        assert end[name] <= middle[name] * 1.3 + 25, f"{name} grew from {middle[name]:.0f} to {end[name]:.0f} MB"
