"""Entry point: `kiln-launcher` or `python -m kiln_launcher`."""

from __future__ import annotations

import asyncio
import logging

import kilnbus
from kiln_launcher.handler import Launcher
from kiln_launcher.hub import Hub
from kiln_launcher.servers import Servers
from kiln_launcher.settings import Settings
from kilnbus import Bus, KafkaBus, LogFollower, Routes, run_service
from kilnbus.sealing import Sealer


async def run(bus: Bus, settings: Settings, hub: Hub, stop: asyncio.Event) -> None:
    """Serve hub launch requests on ``bus`` until ``stop``, once the projection of running servers holds the log."""
    servers = Servers()
    follower = LogFollower(bus, bus.topics.phase_events, servers.apply)  # type: ignore[arg-type]
    await follower.start()
    launcher = Launcher(settings, bus, hub, Sealer(settings.token_seal_keys))
    try:
        # Serve (and watch for culled servers) only once the projection holds the whole log.
        if not await follower.wait_caught_up(stop):
            return
        launcher.watch_culled(servers, settings.cull_check_interval_s, stop)
        # A launch waits on the hub for seconds: many are in hand at once.
        await kilnbus.serve(bus, "kiln-launcher", Routes({bus.topics.hub_launch_requested: launcher.handle}), stop,
                            max_in_flight=64, shutdown_grace_s=20)
    finally:
        await launcher.aclose()  # the culler watcher and a hub listing: cancelled and awaited
        await follower.stop()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The launcher on Kafka, against the hub its settings name, until ``stop``."""
    hub = Hub(settings.hub_api_url, settings.hub_api_token, settings.retries, settings.retry_delay_s)
    try:
        async with KafkaBus(settings) as bus:
            await run(bus, settings, hub, stop)
    finally:
        await hub.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    run_service(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
