"""The launcher owns its culler watcher and the hub client closes: in memory, no hub, no Kafka."""

from __future__ import annotations

import asyncio
from typing import Any

from kiln_launcher.handler import Launcher
from kiln_launcher.hub import Hub
from kiln_launcher.servers import Servers
from kiln_launcher.settings import Settings
from kilnbus import MemoryBus, Phase, PhaseEvent
from kilnbus.sealing import Sealer, new_key


class SlowHub:
    """Answers the culler watcher's question only once ``answer`` is set; says when it was interrupted."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()
        self.interrupted = False

    async def user(self, name: str) -> dict[str, Any] | None:
        self.asked.set()
        try:
            await self.answer.wait()
        except asyncio.CancelledError:
            self.interrupted = True
            raise
        return None  # the user is gone: its server was culled

    async def active_servers(self) -> Any:
        raise AssertionError("not asked here")


def running_servers() -> Servers:
    servers = Servers()
    servers.apply(PhaseEvent(request_id="r1", phase=Phase.READY, service="launcher", server_name="u1/binder-1",
                             url="http://127.0.0.1:8000/user/u1/binder-1/"))
    assert servers.running == {"r1": "u1/binder-1"}
    return servers


def make_launcher(hub: SlowHub, bus: MemoryBus) -> Launcher:
    key = new_key()
    settings = Settings(token_seal_keys=[key], cull_check_interval_s=0.01)
    return Launcher(settings, bus, hub, Sealer([key]))  # type: ignore[arg-type]


def reported(bus: MemoryBus) -> list[tuple[str, Phase]]:
    return [(e.request_id, e.phase) for e in bus.records(bus.topics.phase_events) if isinstance(e, PhaseEvent)]


async def test_positive_control_the_watcher_reports_a_culled_server() -> None:
    hub, bus = SlowHub(), MemoryBus()
    launcher = make_launcher(hub, bus)
    launcher.watch_culled(running_servers(), 0.01, asyncio.Event())
    hub.answer.set()
    async with bus.changed:
        await asyncio.wait_for(bus.changed.wait_for(lambda: bool(reported(bus))), 5)
    assert reported(bus) == [("r1", Phase.STOPPED)]
    await launcher.aclose()


async def test_aclose_cancels_and_awaits_the_culler_watcher() -> None:
    hub, bus = SlowHub(), MemoryBus()
    launcher = make_launcher(hub, bus)
    launcher.watch_culled(running_servers(), 0.01, asyncio.Event())  # the service's stop is never set
    async with asyncio.timeout(5):
        await hub.asked.wait()
    assert not hub.interrupted, "control: the watcher is mid-question until stopped"
    await launcher.aclose()
    assert hub.interrupted, "cancelled, and awaited: it has ended by the time aclose returns"
    hub.answer.set()
    await asyncio.sleep(0)
    assert reported(bus) == [], "a stopped watcher reports nothing more"


async def test_the_hub_client_is_closed() -> None:
    hub = Hub("http://127.0.0.1:1/hub/api", "token")
    assert not hub._client.is_closed
    await hub.aclose()
    assert hub._client.is_closed
