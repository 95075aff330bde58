"""Faults on the running stack: each service's container killed with SIGKILL mid-request, then restarted.

Every request must still end (here: in ``ready``) within a bounded time, once, with nothing built
or launched twice; a client of a restarted gateway resumes its stream with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support.githost import make_repo
from .conftest import KilnServices
from .test_binder import GATEWAY, GIT, server_answers, spec_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]
TICKING = "#!/bin/bash\nfor i in $(seq 1 {n}); do echo tick $i; sleep 1; done\n"


class Stream:
    """An API client following one launch, keeping every event with its id as it arrives."""

    def __init__(self, spec: str, last_event_id: str | None = None) -> None:
        self.events: list[tuple[str | None, dict[str, Any]]] = []
        self.closed = asyncio.Event()
        headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_event_id} if last_event_id else {})
        self.task = asyncio.create_task(self._run(spec, headers))

    async def _run(self, spec: str, headers: dict[str, str]) -> None:
        try:
            async with (httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
                        client.stream("GET", f"{GATEWAY}/build/git/{spec}", headers=headers) as r):
                event_id = None
                async for line in r.aiter_lines():
                    if line.startswith("id: "):
                        event_id = line[4:]
                    elif line.startswith("data:"):
                        self.events.append((event_id, json.loads(line[5:])))
        except httpx.HTTPError:
            pass  # the gateway went away: the test decides what that means
        finally:
            self.closed.set()

    def phases(self) -> list[str]:
        return [e["phase"] for _, e in self.events]

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; saw {self.phases()[-8:]}"
            await asyncio.sleep(0.1)


def one_ready(stream: Stream) -> dict[str, Any]:
    readies = [e for _, e in stream.events if e["phase"] == "ready"]
    assert len(readies) == 1, stream.phases()
    return readies[0]


async def test_resolver_killed_then_restarted(repos: Path, kiln_services: KilnServices) -> None:
    make_repo(repos, "f-resolver", {"requirements.txt": "six==1.16.0\n", "id": uuid.uuid4().hex})
    kiln_services.kill9("resolver")
    try:
        stream = Stream(spec_for(repos, "f-resolver"))
        await asyncio.sleep(2)
        assert stream.events == [], "nobody resolved it while the resolver was down"
    finally:
        kiln_services.restart("resolver")
    await asyncio.wait_for(stream.closed.wait(), 240)
    server_answers(one_ready(stream))


async def test_builder_killed_mid_build_then_restarted(repos: Path, kiln_services: KilnServices) -> None:
    make_repo(repos, "f-builder", {"postBuild": TICKING.format(n=6), "id": uuid.uuid4().hex})
    stream = Stream(spec_for(repos, "f-builder"))
    try:
        await stream.until(lambda: any("tick 2" in e.get("message", "") for _, e in stream.events), 180, "the build to run")
        kiln_services.kill9("builder")
    finally:
        kiln_services.restart("builder")
    await asyncio.wait_for(stream.closed.wait(), 300)
    assert stream.phases().count("built") == 1, "built is said once, after the rebuilt image was pushed"
    server_answers(one_ready(stream))


async def test_launcher_killed_mid_launch_then_restarted(repos: Path, kiln_services: KilnServices) -> None:
    make_repo(repos, "f-launcher", {"README.md": uuid.uuid4().hex})
    warm = Stream(spec_for(repos, "f-launcher"))  # builds the image, so the next launch is a cache hit
    await asyncio.wait_for(warm.closed.wait(), 300)
    stream = Stream(spec_for(repos, "f-launcher"))
    try:
        await stream.until(lambda: "launching" in stream.phases(), 60, "the launch to start")
        kiln_services.kill9("launcher")
    finally:
        kiln_services.restart("launcher")
    await asyncio.wait_for(stream.closed.wait(), 240)
    server_answers(one_ready(stream))


async def test_gateway_restarted_client_resumes_with_last_event_id(repos: Path, kiln_services: KilnServices) -> None:
    make_repo(repos, "f-gateway", {"postBuild": TICKING.format(n=8), "id": uuid.uuid4().hex})
    spec = spec_for(repos, "f-gateway")
    first = Stream(spec)
    try:
        await first.until(lambda: any("tick 1" in e.get("message", "") for _, e in first.events), 180, "the build to run")
        kiln_services.kill9("gateway")
    finally:
        kiln_services.restart("gateway")
    await asyncio.wait_for(first.closed.wait(), 30)
    assert "ready" not in first.phases()
    last_id = next(i for i, _ in reversed(first.events) if i)
    resumed = Stream(spec, last_event_id=last_id)
    await asyncio.wait_for(resumed.closed.wait(), 300)
    ready = one_ready(resumed)
    seen = [i for i, _ in first.events if i] + [i for i, _ in resumed.events if i]
    assert len(seen) == len(set(seen)), "nothing delivered twice across the reconnect"
    assert resumed.phases()[-1] == "ready"
    server_answers(ready)


async def test_analytics_killed_mid_request_then_restarted(repos: Path, kiln_services: KilnServices) -> None:
    """Analytics is off the request path: the launch is not held up, and the restarted service,
    recovering its table from the changelog and reading on from its offsets, counts it."""
    make_repo(repos, "f-analytics", {"README.md": uuid.uuid4().hex})
    repo_url = f"{GIT}/{repos.name}/f-analytics"
    stream = Stream(spec_for(repos, "f-analytics"))
    try:
        await stream.until(lambda: len(stream.events) > 0, 120, "the first event")
        kiln_services.kill9("analytics")
        await asyncio.wait_for(stream.closed.wait(), 300)
        server_answers(one_ready(stream))
    finally:
        kiln_services.restart("analytics")
    async with httpx.AsyncClient(base_url="http://127.0.0.1:8590", timeout=10) as client:
        deadline = time.monotonic() + 60
        while True:
            days = (await client.get("/api/v1/launches", params={"repo": repo_url, "window": "day"})).json()["buckets"]
            if sum(b["success"] for b in days) == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert sum(b["success"] for b in days) == 1, days
