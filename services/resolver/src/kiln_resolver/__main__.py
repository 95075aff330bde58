"""Entry point: `kiln-resolver` or `python -m kiln_resolver`."""

from __future__ import annotations

import asyncio
import logging

from kilnbus import BusProducer, Topics, ensure_topics, run_service, serve_consumer
from kilnbus.consumer import Handler

from kiln_resolver.handler import Resolver
from kiln_resolver.policy import Policy
from kiln_resolver.providers import make_providers
from kiln_resolver.registry import Registry
from kiln_resolver.running import RunningServers
from kiln_resolver.settings import Settings

log = logging.getLogger("kiln_resolver")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings)
    running = RunningServers(settings, topics.phase_events)
    await running.start()
    registry = Registry(settings.registry_url, settings.registry_username, settings.registry_password,
                        settings.registry_token_url, settings.registry_not_found_401)
    providers = make_providers(settings)

    def make_handler(producer: BusProducer, topics: Topics) -> Handler:
        return Resolver(settings, producer, topics, providers, registry, Policy(settings), running).handle

    try:
        # Quotas counted from half the log under-count: consume launch requests only once it is all in.
        if not await running.wait_caught_up(stop):
            return
        # Resolutions wait on networks (APIs, git servers): several run at once.
        await serve_consumer(settings, "kiln-resolver", lambda t: [t.launch_requested], make_handler, stop, max_in_flight=16)
    finally:
        await running.stop()
        await providers.aclose()
        await registry.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s resolver %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    run_service(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
