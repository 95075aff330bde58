"""Entry point: `kiln-builder` or `python -m kiln_builder`."""

from __future__ import annotations

import asyncio
import logging

from kilnbus import run_service, serve_consumer

from kiln_builder.handler import make_handler
from kiln_builder.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s builder %(levelname)s %(name)s: %(message)s")
    settings = Settings()

    async def serve(stop: asyncio.Event) -> None:
        await serve_consumer(settings, "kiln-builder", lambda t: [t.build_requested], make_handler, stop)

    run_service(serve)


if __name__ == "__main__":
    main()
