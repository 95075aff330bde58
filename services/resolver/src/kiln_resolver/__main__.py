"""Entry point: `kiln-resolver` or `python -m kiln_resolver`."""

from __future__ import annotations

import asyncio
import logging

import kilnbus
from kiln_resolver.handler import Resolver
from kiln_resolver.providers import make_providers
from kiln_resolver.registry import Registry
from kiln_resolver.running import RunningServers
from kiln_resolver.settings import Settings
from kilnbus import Bus, KafkaBus, Routes, run_service

log = logging.getLogger("kiln_resolver")


async def run(bus: Bus, resolver: Resolver, stop: asyncio.Event) -> None:
    """Serve launch requests on ``bus`` until ``stop``, once the resolver's count of running servers holds the log."""
    await resolver.running.start()
    try:
        # Quotas counted from half the log under-count: consume launch requests only once it is all in.
        if not await resolver.running.wait_caught_up(stop):
            return
        # Resolutions wait on networks (APIs, git servers): several run at once.
        await kilnbus.serve(bus, "kiln-resolver", Routes({bus.topics.launch_requested: resolver.handle}), stop,
                            max_in_flight=16)
    finally:
        await resolver.running.stop()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The resolver on Kafka, with the providers and the registry its settings name, until ``stop``."""
    providers = make_providers(settings)
    registry = Registry(settings.registry_url, settings.registry_username, settings.registry_password,
                        settings.registry_token_url, settings.registry_not_found_401)
    try:
        async with KafkaBus(settings) as bus:
            await run(bus, Resolver(settings, bus, providers, registry, RunningServers(bus)), stop)
    finally:
        await providers.aclose()
        await registry.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s resolver %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    run_service(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
