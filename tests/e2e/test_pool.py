"""Warm pools on the real stack: a server started ahead of time, handed to one launch only.

The launcher is restarted with a pool for one image (``KILN_POOL_IMAGES``); the servers are real
JupyterHub servers of an image built on Kiln's base image, whose ``kiln_handover`` extension takes
the launch's environment. What is checked is behaviour (which server a launch gets, who can use
it, what it knows), never times: those are bench/system.py's.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support.githost import make_repo
from ..support.stack import HUB_API
from ..support.terminal import terminal_run
from .conftest import ROOT, KilnServices
from .test_binder import launch, server_answers, spec_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]
METRICS_PORT = int(os.environ.get("KILN_LAUNCHER_METRICS_PORT", "9103"))
NOTEBOOK = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'


def hub() -> httpx.Client:
    token = (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()
    return httpx.Client(base_url=HUB_API, headers={"Authorization": f"token {token}"}, timeout=30)


def warm_servers(image: str) -> set[str]:
    """The hub's servers that a launcher's pool started for ``image`` (handed over or not)."""
    with hub() as client:
        users = client.get("/users", params={"state": "active"}).json()
    return {f"{u['name']}/{name}" for u in users for name, s in (u.get("servers") or {}).items()
            if (s.get("user_options") or {}).get("kiln_pool") and s["user_options"].get("image") == image}


def pool_ready() -> float:
    """Warm servers the launcher says are ready to hand over (its /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).text
    found = re.search(r'^kiln_pool_servers\{state="ready"\} ([0-9.]+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for(predicate: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.25)
    return value


@pytest.fixture(scope="module")
def pooled(kiln_services: KilnServices, repos: Path) -> Iterator[tuple[str, str, set[str]]]:
    """A repository built once, the launcher restarted with a warm pool of one for its image, and
    the servers its tests were handed (they stay their users')."""
    make_repo(repos, "pooled", {"README.md": "warm\n", "index.ipynb": NOTEBOOK})
    spec = spec_for(repos, "pooled")
    events = asyncio.run(launch(spec))
    assert events[-1]["phase"] == "ready", events[-3:]
    image = events[-1]["image"]
    kiln_services.restart("launcher", {"KILN_POOL_SIZE": "1", "KILN_POOL_IMAGES": f'["{image}"]',
                                       "KILN_POOL_TOP_IMAGES": "0", "KILN_POOL_CHECK_INTERVAL_S": "0.5"})
    try:
        yield spec, image, set()
    finally:
        kiln_services.restart("launcher")  # the suite's pool size 0: it retires its warm servers


async def test_a_launch_gets_the_warm_server_and_only_its_token_opens_it(pooled: tuple[str, str, set[str]]) -> None:
    spec, image, handed = pooled
    wait_for(lambda: pool_ready() == 1)
    (warm,) = warm_servers(image) - handed
    handed.add(warm)
    events = await launch(spec)
    ready = events[-1]
    assert ready["phase"] == "ready" and ready.get("warm") is True, events[-3:]
    assert [e.get("warm") for e in events if e["phase"] == "launching"] == [True]
    user, server = warm.split("/")
    assert ready["url"].endswith(f"/user/{user}/{server}/")
    server_answers(ready)  # its token opens it; no token does not
    # The hand-over endpoint answers the user's own token only, and only once.
    handover = ready["url"] + "kiln/handover"
    async with httpx.AsyncClient(timeout=10) as client:
        mine = {"Authorization": f"token {ready['token']}"}
        assert (await client.get(handover, headers=mine)).json() == {"handed": True}
        again = await client.post(handover, headers=mine, json={"environment": {"BINDER_CLIENT_IP": "203.0.113.1"}})
        assert again.status_code == 409
        assert (await client.post(handover, json={"environment": {}})).status_code in (302, 403)
    # The launch's own environment reached the server: kernels and terminals see it.
    printed = await terminal_run(ready["url"], ready["token"], 'echo "$BINDER_REQUEST|$BINDER_REPO_URL|$BINDER_CLIENT_IP"')
    request, repo_url, client_ip = printed.strip().split("|")
    assert request == f"v2/git/{spec}" and repo_url.endswith("/pooled") and client_ip == "127.0.0.1", printed


async def test_a_used_warm_server_is_replaced_and_never_handed_out_again(pooled: tuple[str, str, set[str]]) -> None:
    spec, image, handed = pooled
    got: list[str] = []
    for _ in range(2):
        wait_for(lambda: pool_ready() == 1)
        (before,) = warm_servers(image) - handed
        ready = (await launch(spec))[-1]
        assert ready.get("warm") is True, ready
        name = "/".join(ready["url"].rstrip("/").split("/")[-2:])
        assert name == before and name not in handed
        handed.add(name)
        got.append(name)
    # A fresh one waits for the next launch, and the ones handed over are still their users'.
    wait_for(lambda: pool_ready() == 1)
    assert len(warm_servers(image) - handed) == 1 and handed <= warm_servers(image)
