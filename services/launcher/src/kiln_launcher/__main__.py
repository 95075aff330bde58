"""Entry point: `kiln-launcher` or `python -m kiln_launcher`."""

from __future__ import annotations

import asyncio
import logging

from kilnbus import run_service, serve_consumer

from kiln_launcher.handler import make_handler
from kiln_launcher.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(levelname)s %(name)s: %(message)s")
    settings = Settings()

    async def serve(stop: asyncio.Event) -> None:
        await serve_consumer(settings, "kiln-launcher", lambda t: [t.hub_launch_requested], make_handler, stop)

    run_service(serve)


if __name__ == "__main__":
    main()
