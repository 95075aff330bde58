"""Kiln end to end, as a user meets it: the running local stack (`make up`), its public API and pages.

Repositories are real git repositories served by the stack's git server (.state/git-repos); builds
run on the real engine and registry, servers on the real JupyterHub.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from ..support.githost import make_repo
from ..support.terminal import terminal_run

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "http://127.0.0.1:8585"
GIT = "http://127.0.0.1:8765"
ANALYTICS = "http://127.0.0.1:8590"


def spec_for(repos: Path, name: str) -> str:
    return quote(f"{GIT}/{repos.name}/{name}", safe="") + "/HEAD"


async def launch(spec: str, timeout: float = 600, provider: str = "git") -> list[dict[str, Any]]:
    """Follow /build/<provider>/<spec> to its end, as an API client would; return the events."""
    events: list[dict[str, Any]] = []
    async with (httpx.AsyncClient(timeout=timeout) as client,
                client.stream("GET", f"{GATEWAY}/build/{provider}/{spec}", headers={"Accept": "text/event-stream"}) as r):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events


def server_answers(ready: dict[str, Any]) -> None:
    url, token = ready["url"], ready["token"]
    assert httpx.get(url + "api/status", headers={"Authorization": f"token {token}"}, timeout=10).status_code == 200
    assert httpx.get(url + "api/status", timeout=10).status_code in (302, 403)


async def test_requirements_repository_cold_then_from_cache(repos: Path) -> None:
    make_repo(repos, "reqs", {"requirements.txt": f"toolz==0.12.1\n# {uuid.uuid4().hex}\n", "index.ipynb": "{}"})
    cold = await launch(spec_for(repos, "reqs"))
    phases = [e["phase"] for e in cold]
    assert phases[-1] == "ready", cold[-3:]
    assert {"waiting", "fetching", "building", "pushing", "built", "launching"} <= set(phases)
    server_answers(cold[-1])
    # JupyterLab's terminal on the launched server (a login shell): the repository's Python and its package.
    printed = await terminal_run(cold[-1]["url"], cold[-1]["token"],
                                 "python -c 'import sys, toolz; print(sys.executable, toolz.__version__)'; command -v jupyter")
    assert printed.split() == ["/srv/venv/bin/python", "0.12.1", "/srv/venv/bin/jupyter"], printed
    again = await launch(spec_for(repos, "reqs"))
    assert [e["phase"] for e in again if e["phase"] in ("built", "ready")] == ["built", "ready"]
    assert again[0]["message"] == "Found built image, launching...\n", "the second launch skips the build"
    assert again[-1]["url"] != cold[-1]["url"], "each launch has its own server"
    server_answers(again[-1])


async def test_dockerfile_repository(repos: Path) -> None:
    dockerfile = "FROM kiln/base:latest\nCOPY --chown=1000:1000 . /home/jovyan/\n"
    make_repo(repos, "docker", {"Dockerfile": dockerfile, "notes.md": "# notes\n"})
    events = await launch(spec_for(repos, "docker"))
    assert events[-1]["phase"] == "ready", events[-3:]
    assert any("Using Dockerfile" in e.get("message", "") for e in events)
    server_answers(events[-1])


async def test_failing_build_says_why(repos: Path) -> None:
    make_repo(repos, "broken", {"requirements.txt": "no-such-package-for-kiln-e2e==1.0\n"})
    events = await launch(spec_for(repos, "broken"))
    assert events[-1]["phase"] == "failed"
    assert "pip could not install no-such-package-for-kiln-e2e==1.0" in events[-1]["message"]


async def test_unknown_repository_and_banned_spec(repos: Path) -> None:
    events = await launch(spec_for(repos, "does-not-exist"))
    assert events[-1]["phase"] == "failed" and "not found" in events[-1]["message"]
    events = await launch(quote("http://10.0.0.1/internal.git", safe="") + "/HEAD")
    assert events[-1]["phase"] == "failed" and "private network" in events[-1]["message"]


async def test_ten_concurrent_launches_of_one_uncached_repository(repos: Path) -> None:
    make_repo(repos, "crowd", {"requirements.txt": f"six==1.16.0\n# {uuid.uuid4().hex}\n", "a.ipynb": "{}"})
    results = await asyncio.gather(*(launch(spec_for(repos, "crowd")) for _ in range(10)))
    assert all(r[-1]["phase"] == "ready" for r in results), [r[-1] for r in results]
    assert len({r[-1]["url"] for r in results}) == 10, "ten servers"
    builds = [set(re.findall(r"Running in ([0-9a-f]{12})", "".join(e.get("message", "") for e in r))) for r in results]
    built = [b for b in builds if b]
    assert built and all(b == built[0] for b in built), "one build, seen by every stream that waited for it"
    for r in results:
        server_answers(r[-1])


async def test_analytics_and_metrics_tell_what_happened(repos: Path) -> None:
    """The analytics service and every service's /metrics, read after two launches of one repository."""
    make_repo(repos, "counted", {"index.ipynb": "{}", "id.txt": uuid.uuid4().hex})
    for _ in range(2):
        events = await launch(spec_for(repos, "counted"))
        assert events[-1]["phase"] == "ready", events[-3:]
    repo_url = f"{GIT}/{repos.name}/counted"
    async with httpx.AsyncClient(base_url=ANALYTICS, timeout=30) as client:
        deadline = asyncio.get_running_loop().time() + 60
        while True:  # analytics reads the log on its own; it may be a moment behind the gateway
            days = (await client.get("/api/v1/launches", params={"repo": repo_url, "window": "day"})).json()
            if sum(b["success"] for b in days["buckets"]) == 2 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        assert sum(b["success"] for b in days["buckets"]) == 2, days
        phases = (await client.get("/api/v1/phases", params={"repo": repo_url})).json()["phases"]
        assert phases["building"]["count"] == 1 and phases["launching"]["count"] == 2
        assert phases["total"]["p95"] > phases["launching"]["p50"] > 0
        exported = [json.loads(line) for line in (await client.get("/api/v1/export/launches.jsonl")).text.splitlines()]
        mine = [e for e in exported if repos.name in e["spec"] and "counted" in e["spec"]]
        assert len(mine) == 2 and {e["provider"] for e in mine} == {"Git"}
        listed = (await client.get("/api/v1/repos", params={"limit": 1000})).json()["repos"]
        assert {"provider": "git", "repo": repo_url, "launches": 2, "failures": 0} in listed
        page = await client.get("/")  # the stack's log holds other repositories too: the top ten may not be ours
        assert page.status_code == 200 and page.text.count("<svg") == 4
    scraped = {name: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
               for name, port in (("gateway", 8585), ("analytics", 8590), ("resolver", 9101), ("builder", 9102),
                                  ("launcher", 9103))}
    assert f'binderhub_build_count_total{{provider="git",repo="{repo_url}",status="success"}} 1.0' in scraped["builder"]
    assert 'binderhub_launch_time_seconds_count{retries="0",status="success"}' in scraped["launcher"]
    assert 'kiln_resolver_outcomes_total{outcome="cached",provider="git"}' in scraped["resolver"]
    assert 'binderhub_launch_count_total{provider="git",status="success"}' in scraped["gateway"]
    assert "kiln_running_servers" in scraped["analytics"]


@pytest.mark.browser
async def test_v2_page_in_chromium_to_jupyterlab_with_the_files(repos: Path) -> None:
    from playwright.async_api import async_playwright

    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# E2E notebook from Kiln"]}]}
    make_repo(repos, "lab", {"requirements.txt": "six==1.16.0\n", "hello.ipynb": json.dumps(notebook)})
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"),
                                          args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = await browser.new_page()
        await page.goto(f"{GATEWAY}/")
        await page.select_option("#provider", "git")
        await page.fill("#repo", f"{GIT}/{repos.name}/lab")
        await page.fill("#path", "hello.ipynb")
        await page.click("#launch")
        await page.wait_for_url("**/user/**/doc/tree/hello.ipynb**", timeout=300_000)
        await page.wait_for_function("document.body.innerText.includes('E2E notebook from Kiln')", timeout=60_000)
        assert "hello.ipynb" in await page.title()
        await browser.close()
