"""Entry point: `kiln-builder` or `python -m kiln_builder`."""

from __future__ import annotations

import asyncio
import logging

from kilnbus import BusProducer, Topics, run_service, serve_consumer
from kilnbus.consumer import Handler

from kiln_builder.executor import DockerExecutor
from kiln_builder.handler import Builder
from kiln_builder.settings import Settings


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    auth = {"username": settings.registry_username, "password": settings.registry_password} if settings.registry_username else None
    executor = DockerExecutor(settings.docker_url or None, settings.build_memory_limit, auth)

    def make_handler(producer: BusProducer, topics: Topics) -> Handler:
        return Builder(settings, producer, topics, executor).handle

    # Requests wait for their build inside the handler (their offsets are committed when it ends),
    # so many are in hand at once: the queue and the attachments live in kiln_builder.builds.
    await serve_consumer(settings, "kiln-builder", lambda t: [t.build_requested], make_handler, stop,
                         max_in_flight=256, shutdown_grace_s=10)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s builder %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    run_service(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
