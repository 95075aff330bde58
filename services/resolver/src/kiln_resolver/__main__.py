"""Entry point: `kiln-resolver` or `python -m kiln_resolver`."""

from __future__ import annotations

import asyncio
import logging

from kilnbus import run_service, serve_consumer

from kiln_resolver.handler import make_handler
from kiln_resolver.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s resolver %(levelname)s %(name)s: %(message)s")
    settings = Settings()

    async def serve(stop: asyncio.Event) -> None:
        await serve_consumer(settings, "kiln-resolver", lambda t: [t.launch_requested], make_handler, stop)

    run_service(serve)


if __name__ == "__main__":
    main()
