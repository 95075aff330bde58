"""Entry point: `kiln-launcher` or `python -m kiln_launcher`."""

from __future__ import annotations

import asyncio
import logging

from kilnbus import BusProducer, Topics, ensure_topics, run_service, serve_consumer
from kilnbus.consumer import Handler
from kilnbus.follow import LogFollower
from kilnbus.sealing import Sealer

from kiln_launcher.handler import Launcher
from kiln_launcher.hub import Hub
from kiln_launcher.servers import Servers, caught_up_or_stopped
from kiln_launcher.settings import Settings


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings)
    hub = Hub(settings.hub_api_url, settings.hub_api_token, settings.retries, settings.retry_delay_s)
    sealer = Sealer(settings.token_seal_keys)
    servers = Servers()
    follower = LogFollower(settings, topics.phase_events, servers.apply)  # type: ignore[arg-type]
    await follower.start()
    launcher: Launcher | None = None

    def make_handler(producer: BusProducer, topics: Topics) -> Handler:
        nonlocal launcher
        launcher = Launcher(settings, producer, topics, hub, sealer)
        launcher.watch_culled(servers, settings.cull_check_interval_s, stop)
        return launcher.handle

    try:
        # Serve (and watch for culled servers) only once the projection holds the whole log.
        if not await caught_up_or_stopped(follower.caught_up, stop):
            return
        # A launch waits on the hub for seconds: many are in hand at once.
        await serve_consumer(settings, "kiln-launcher", lambda t: [t.hub_launch_requested], make_handler, stop,
                             max_in_flight=64, shutdown_grace_s=20)
    finally:
        if launcher is not None:
            await launcher.aclose()  # the culler watcher: cancelled and awaited
        await follower.stop()
        await hub.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    run_service(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
