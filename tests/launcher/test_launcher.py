"""The launcher against the real JupyterHub, DockerSpawner and proxy of the local stack.

Launches start real servers from the base image (a cache hit: the image is in the registry); the
reported URL must answer with the token the gateway would unseal, and refuse without it.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from kilnbus import BusProducer, BusSettings, Delivery, HubLaunchRequested, Phase, PhaseEvent, Topics
from kilnbus.sealing import Sealer, new_key

from kiln_launcher.__main__ import serve
from kiln_launcher.settings import Settings

from ..bus.helpers import start_consumer, wait_until
from ..support.stack import HUB_API

pytestmark = [pytest.mark.kafka, pytest.mark.hub, pytest.mark.docker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LaunchHarness:
    settings: Settings
    topics: Topics
    producer: BusProducer
    sealer: Sealer
    phases: dict[str, list[PhaseEvent]] = field(default_factory=lambda: defaultdict(list))
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=list)

    async def collect(self, d: Delivery[PhaseEvent]) -> None:
        self.phases[d.value.request_id].append(d.value)

    async def start(self, **overrides: Any) -> None:
        stop = asyncio.Event()
        self.tasks.append((asyncio.create_task(serve(self.settings.model_copy(update=overrides), stop)), stop))
        await asyncio.sleep(2)

    async def stop(self) -> None:
        for task, stop in self.tasks:
            stop.set()
            await asyncio.wait_for(task, 60)
        self.tasks.clear()

    async def launch(self, image: str | None = None, request_id: str | None = None, client_ip: str = "127.0.0.1") -> str:
        rid = request_id or uuid.uuid4().hex
        await self.producer.publish(self.topics.hub_launch_requested, rid, HubLaunchRequested(
            request_id=rid, image_name=image or base_image(), repo_url="http://127.0.0.1:1/org/probe.git", ref="a" * 40,
            provider="git", spec="x/HEAD", ref_url="http://127.0.0.1:1/org/probe", resolved_spec="x/" + "a" * 40,
            launch_host="http://127.0.0.1:8585/", client_ip=client_ip))
        return rid

    def final(self, rid: str) -> PhaseEvent | None:
        return next((e for e in self.phases.get(rid, []) if e.phase in (Phase.READY, Phase.FAILED)), None)

    async def outcome(self, rid: str, timeout: float = 120) -> PhaseEvent:
        await wait_until(lambda: self.final(rid) is not None, timeout, f"the launch of {rid}")
        return self.final(rid)  # type: ignore[return-value]


def base_image() -> str:
    return (ROOT / ".state" / "base-image").read_text().strip()


def hub_token() -> str:
    return (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()


def hub(method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, HUB_API + path, headers={"Authorization": f"token {hub_token()}"}, timeout=30, **kw)


@pytest.fixture
async def launcher(bus_settings: BusSettings, topics: Topics, producer: BusProducer) -> AsyncIterator[LaunchHarness]:
    key = new_key()
    settings = Settings(**bus_settings.model_dump(), hub_api_url=HUB_API, hub_api_token=hub_token(), token_seal_keys=[key], retry_delay_s=0.2,
                        cull_check_interval_s=1.0,
                        # Every launch on the shared local stack comes from 127.0.0.1; the per-client quota is
                        # tested on its own, with an address of its own (test_per_client_quota_...).
                        servers_per_client=0)
    h = LaunchHarness(settings, topics, producer, Sealer([key]))
    reader = await start_consumer(bus_settings, topics, [topics.phase_events], h.collect, producer, group="launcher-test-reader")
    await h.start()
    yield h
    await h.stop()
    await reader.close()
    for rid, events in h.phases.items():  # leave no server running
        for e in events:
            if e.server_name:
                user, _, server = e.server_name.partition("/")
                hub("DELETE", f"/users/{user}/servers/{server}", json={"remove": True})
                hub("DELETE", f"/users/{user}")


async def test_launch_reports_a_url_that_needs_its_token(launcher: LaunchHarness) -> None:
    rid = await launcher.launch()
    ready = await launcher.outcome(rid)
    assert ready.phase is Phase.READY, ready.message
    launching = [e.message for e in launcher.phases[rid] if e.phase is Phase.LAUNCHING]
    assert launching[0] == "Launching server...\n" and any("Server ready" in m for m in launching)
    assert ready.url is not None and ready.url.startswith("http://127.0.0.1:8000/user/org-probe-")
    assert ready.sealed_token is not None and b"." not in ready.sealed_token[:4]  # ciphertext, not the token
    token = launcher.sealer.unseal(ready.sealed_token, request_id=rid)
    assert token.encode() not in ready.sealed_token
    assert httpx.get(ready.url + "api/status", headers={"Authorization": f"token {token}"}).status_code == 200
    assert httpx.get(ready.url + "api/status").status_code in (302, 403)
    # Launch metadata reaches the server as BinderHub passes it.
    user, _, server = ready.server_name.partition("/")  # type: ignore[union-attr]
    container = f"kiln-{user.replace('-', '-2d')}--{server.replace('-', '-2d')}"
    env = subprocess.run(["docker", "exec", container, "env"], capture_output=True, text=True).stdout
    assert "BINDER_REPO_URL=http://127.0.0.1:1/org/probe.git" in env
    assert "BINDER_PERSISTENT_REQUEST=v2/git/x/" + "a" * 40 in env


async def test_a_request_delivered_twice_starts_one_server(launcher: LaunchHarness) -> None:
    rid = uuid.uuid4().hex
    await launcher.launch(request_id=rid)
    await asyncio.sleep(0.3)
    await launcher.launch(request_id=rid)
    await launcher.outcome(rid)
    await asyncio.sleep(2)
    readies = [e for e in launcher.phases[rid] if e.phase is Phase.READY]
    user = readies[0].server_name.partition("/")[0]  # type: ignore[union-attr]
    assert len((hub("GET", f"/users/{user}").json()["servers"])) == 1


async def test_missing_image_fails_clearly(launcher: LaunchHarness) -> None:
    rid = await launcher.launch(image="127.0.0.1:5000/kiln/binder-no-such-image:" + "b" * 40)
    failed = await launcher.outcome(rid)
    assert (failed.phase, failed.failure_cause) == (Phase.FAILED, "image_missing"), failed.message
    assert "The server failed to start" in failed.message


async def test_total_quota(launcher: LaunchHarness) -> None:
    await launcher.stop()
    await launcher.start(total_quota=0)
    failed = await launcher.outcome(await launcher.launch())
    assert (failed.failure_cause, failed.status_code) == ("total_quota", 429)
    assert "Too many users on this Binder (" in failed.message


async def test_per_client_quota_counts_servers_by_the_address_in_their_user_options(launcher: LaunchHarness) -> None:
    """The count comes from the real hub's listing: each server's user options carry its client's address."""
    await launcher.stop()
    await launcher.start(servers_per_client=1, quota_check_interval_s=0)
    address = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    first = await launcher.outcome(await launcher.launch(client_ip=address))
    assert first.phase is Phase.READY, first.message
    refused = await launcher.outcome(await launcher.launch(client_ip=address))
    assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "client_quota", 429)
    other = await launcher.outcome(await launcher.launch(client_ip="2001:db8:" + uuid.uuid4().hex[:4] + "::1"))
    assert other.phase is Phase.READY, "another client is not affected"


async def test_unreachable_hub_fails_after_retries(launcher: LaunchHarness) -> None:
    await launcher.stop()
    await launcher.start(hub_api_url="http://127.0.0.1:9/hub/api", retries=2)
    failed = await launcher.outcome(await launcher.launch())
    assert (failed.failure_cause, failed.status_code) == ("hub_unreachable", 503)
    assert "JupyterHub cannot be reached" in failed.message


async def test_culled_server_is_reported_stopped(launcher: LaunchHarness) -> None:
    rid = await launcher.launch()
    ready = await launcher.outcome(rid)
    user, _, server = ready.server_name.partition("/")  # type: ignore[union-attr]
    # What the idle culler does to an idle server and its temporary user:
    hub("DELETE", f"/users/{user}/servers/{server}", json={"remove": True})
    await asyncio.sleep(1)
    hub("DELETE", f"/users/{user}")
    await wait_until(lambda: any(e.phase is Phase.STOPPED for e in launcher.phases[rid]), 20, "the stopped event")
    stopped = next(e for e in launcher.phases[rid] if e.phase is Phase.STOPPED)
    assert stopped.server_name == ready.server_name and stopped.service == "launcher"


async def test_quota_count_asks_the_hub_once_for_many_requests() -> None:
    """The total quota's count: concurrent requests share one hub listing, started launches add up,
    and the hub is asked again once the count is older than its interval. ``listing`` stands in for
    the hub's GET /users (the call itself is tested against the real hub above)."""
    from kiln_launcher.quota import RunningCount

    asked = 0

    async def listing() -> int:
        nonlocal asked
        asked += 1
        await asyncio.sleep(0.05)
        return 3

    running = RunningCount(listing, max_age_s=0.3)
    assert await asyncio.gather(*(running.count() for _ in range(50))) == [3] * 50
    assert asked == 1
    running.started()
    running.started()
    assert await running.count() == 5 and asked == 1
    await asyncio.sleep(0.35)
    assert await running.count() == 3 and asked == 2, "a fresh answer replaces the local additions"
