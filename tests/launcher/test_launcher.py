"""The launcher against the real JupyterHub, DockerSpawner and proxy of the local stack, on Kafka.

Only what needs the real hub is here: a launch that starts a real server from the base image (a
cache hit: the image is in the registry), whose reported URL must answer with the token the gateway
would unseal and refuse without it; the spawner's own failure for a missing image; and the hub's
listing of servers with the address each was launched from. The launcher's handling of requests
(quotas, retries, redelivery, culled servers, an unreachable hub) is tested against a stand-in hub
on the in-memory bus (test_launcher_units.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln_launcher.bootstrap import run as serve
from kiln_launcher.settings import Settings
from kilnbus import BusSettings, HubLaunchRequested, KafkaBus, Phase, PhaseEvent
from kilnbus.sealing import Sealer, new_key

from ..bus.bus_support import read_all, read_until
from ..support.stack import HUB_API

pytestmark = [pytest.mark.kafka, pytest.mark.hub, pytest.mark.docker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LaunchHarness:
    settings: Settings
    bus: KafkaBus
    sealer: Sealer
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=list)

    def start(self, **overrides: Any) -> None:
        """A launcher process; it takes requests from the log whenever it has joined its group."""
        stop = asyncio.Event()
        self.tasks.append((asyncio.create_task(serve(self.settings.model_copy(update=overrides), stop)), stop))

    async def stop(self) -> None:
        for task, stop in self.tasks:
            stop.set()
            await asyncio.wait_for(task, 60)
        self.tasks.clear()

    async def launch(self, image: str | None = None, client_ip: str = "127.0.0.1") -> str:
        rid = uuid.uuid4().hex
        await self.bus.publish(self.bus.topics.hub_launch_requested, rid, HubLaunchRequested(
            request_id=rid, image_name=image or base_image(), repo_url="http://127.0.0.1:1/org/probe.git", ref="a" * 40,
            provider="git", spec="x/HEAD", ref_url="http://127.0.0.1:1/org/probe", resolved_spec="x/" + "a" * 40,
            launch_host="http://127.0.0.1:8585/", client_ip=client_ip))
        return rid

    async def events(self, rid: str, timeout: float = 120) -> list[PhaseEvent]:
        """The request's events up to its outcome (ready or failed)."""
        def done(events: list[PhaseEvent]) -> bool:
            return any(e.request_id == rid and e.phase in (Phase.READY, Phase.FAILED) for e in events)

        events = await read_until(self.bus, self.bus.topics.phase_events, done, timeout)
        return [e for e in events if e.request_id == rid]

    async def outcome(self, rid: str, timeout: float = 120) -> PhaseEvent:
        return (await self.events(rid, timeout))[-1]


def base_image() -> str:
    return (ROOT / ".state" / "base-image").read_text().strip()


def hub_token() -> str:
    return (ROOT / ".state" / "hub" / "launcher-token").read_text().strip()


def hub(method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, HUB_API + path, headers={"Authorization": f"token {hub_token()}"}, timeout=30, **kw)


@pytest.fixture
async def launcher(bus_settings: BusSettings) -> AsyncIterator[LaunchHarness]:
    key = new_key()
    settings = Settings(**bus_settings.model_dump(), hub_api_url=HUB_API, hub_api_token=hub_token(), token_seal_keys=[key],
                        retry_delay_s=0.2,
                        # Every launch on the shared local stack comes from 127.0.0.1; the per-client quota is
                        # tested on its own, with an address of its own (test_per_client_quota_...).
                        servers_per_client=0)
    async with KafkaBus(bus_settings) as bus:
        h = LaunchHarness(settings, bus, Sealer([key]))
        yield h
        await h.stop()
        events = await read_all(bus, bus.topics.phase_events)
    for server_name in {e.server_name for e in events if isinstance(e, PhaseEvent) and e.server_name}:  # leave no server running
        user, _, server = server_name.partition("/")
        hub("DELETE", f"/users/{user}/servers/{server}", json={"remove": True})
        hub("DELETE", f"/users/{user}")


async def test_launch_reports_a_url_that_needs_its_token(launcher: LaunchHarness) -> None:
    launcher.start()
    rid = await launcher.launch()
    events = await launcher.events(rid)
    ready = events[-1]
    assert ready.phase is Phase.READY, ready.message
    launching = [e.message for e in events if e.phase is Phase.LAUNCHING]
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


async def test_missing_image_fails_clearly(launcher: LaunchHarness) -> None:
    """The spawner's own words for an image it cannot pull are classified as a missing image."""
    launcher.start()
    rid = await launcher.launch(image="127.0.0.1:5000/kiln/binder-no-such-image:" + "b" * 40)
    failed = await launcher.outcome(rid)
    assert (failed.phase, failed.failure_cause) == (Phase.FAILED, "image_missing"), failed.message
    assert "The server failed to start" in failed.message


async def test_per_client_quota_counts_servers_by_the_address_in_their_user_options(launcher: LaunchHarness) -> None:
    """The count comes from the real hub's listing: each server's user options carry its client's address."""
    launcher.start(servers_per_client=1, quota_check_interval_s=0)
    address = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    first = await launcher.outcome(await launcher.launch(client_ip=address))
    assert first.phase is Phase.READY, first.message
    refused = await launcher.outcome(await launcher.launch(client_ip=address))
    assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "client_quota", 429)
    other = await launcher.outcome(await launcher.launch(client_ip="2001:db8:" + uuid.uuid4().hex[:4] + "::1"))
    assert other.phase is Phase.READY, "another client is not affected"
