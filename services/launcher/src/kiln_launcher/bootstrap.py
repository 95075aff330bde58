"""The launcher's composition root: the one place that builds real clients from the settings.

``run`` makes the hub client and the Kafka bus and serves the launcher with ``run_on`` until
``stop``, then closes them. ``run_on`` takes any bus and hub, so the fast tier (tests/launcher,
tests/chain) serves the same routes the same way on a ``MemoryBus`` with a fake hub.
"""

from __future__ import annotations

import asyncio
import socket

from kiln_launcher.demand import RecentLaunches
from kiln_launcher.handler import Launcher
from kiln_launcher.hub import Hub
from kiln_launcher.servers import Servers
from kiln_launcher.service import GROUP, SERVE_OPTIONS, routes
from kiln_launcher.settings import Settings
from kilnbus import Bus, KafkaBus, LogFollower, PhaseEvent, serve
from kilnbus.sealing import Sealer


async def run_on(bus: Bus, settings: Settings, hub: Hub, stop: asyncio.Event) -> None:
    """Serve hub launch requests on ``bus`` until ``stop``, once the projection of running servers holds the log."""
    servers = Servers()
    demand = RecentLaunches(settings.pool_window_s)

    def apply(event: PhaseEvent) -> None:
        servers.apply(event)
        demand.apply(event)

    follower = LogFollower(bus, bus.topics.phase_events, apply)  # type: ignore[arg-type]
    await follower.start()
    launcher = Launcher(settings, bus, hub, Sealer(settings.token_seal_keys), servers, demand, pool_owner(settings))
    try:
        # Serve (and watch for culled servers, fill pools) only once the projections hold the whole log.
        if not await follower.wait_caught_up(stop):
            return
        launcher.watch_culled(servers, settings.cull_check_interval_s, stop)
        launcher.keep_pools(stop)
        await serve(bus, GROUP, routes(bus.topics, launcher), stop, **SERVE_OPTIONS)
    finally:
        await launcher.aclose()  # the culler watcher and a hub listing: cancelled and awaited
        await follower.stop()


def pool_owner(settings: Settings) -> str:
    """The name this launcher's warm servers carry: its static member name, else its host's (a pod's) name."""
    return settings.kafka_group_instance_id or socket.gethostname()


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The launcher on Kafka, against the hub its settings name, until ``stop``."""
    hub = Hub(settings.hub_api_url, settings.hub_api_token, settings.retries, settings.retry_delay_s,
              settings.hub_proxy_url or settings.hub_public_url)
    try:
        async with KafkaBus(settings) as bus:
            await run_on(bus, settings, hub, stop)
    finally:
        await hub.aclose()
