"""Entry point: `kiln-analytics` or `python -m kiln_analytics`."""

from __future__ import annotations

import logging

import uvicorn

from kiln_analytics.api import create_app
from kiln_analytics.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s analytics %(levelname)s %(name)s: %(message)s")
    for chatty in ("faust", "mode", "aiokafka"):  # their INFO is a line per partition per rebalance
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # "producer buffer full" is faust waiting for the changelog to drain during a rebuild: expected
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.analytics_host, port=settings.analytics_port, log_level="warning")


if __name__ == "__main__":
    main()
