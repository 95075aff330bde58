"""The resolver's composition root: the one place that builds real clients from the settings.

``run`` makes the git-host providers, the registry client and the Kafka bus, hands them to
``Resolver`` and serves its routes with ``run_on`` until ``stop``, then closes them. ``run_on`` takes
any bus and resolver, so the fast tier (tests/resolver, tests/chain) serves the same routes the same
way on a ``MemoryBus`` with fake ports.
"""

from __future__ import annotations

import asyncio

from kiln_resolver.handler import Resolver
from kiln_resolver.providers import make_providers
from kiln_resolver.registry import Registry
from kiln_resolver.running import RunningServers
from kiln_resolver.service import GROUP, SERVE_OPTIONS, routes
from kiln_resolver.settings import Settings
from kilnbus import Bus, KafkaBus, serve


async def run_on(bus: Bus, resolver: Resolver, stop: asyncio.Event) -> None:
    """Serve launch requests on ``bus`` until ``stop``, once the resolver's count of running servers holds the log."""
    await resolver.running.start()
    try:
        # Quotas counted from half the log under-count: consume launch requests only once it is all in.
        if not await resolver.running.wait_caught_up(stop):
            return
        await serve(bus, GROUP, routes(bus.topics, resolver), stop, **SERVE_OPTIONS)
    finally:
        await resolver.running.stop()
        await resolver.private.aclose()


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The resolver on Kafka, with the providers and the registry its settings name, until ``stop``."""
    providers = make_providers(settings)
    registry = Registry(settings.registry_url, settings.registry_username, settings.registry_password,
                        settings.registry_token_url, settings.registry_not_found_401)
    try:
        async with KafkaBus(settings) as bus:
            await run_on(bus, Resolver(settings, bus, providers, registry, RunningServers(bus)), stop)
    finally:
        await providers.aclose()
        await registry.aclose()
