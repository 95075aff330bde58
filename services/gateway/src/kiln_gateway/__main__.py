"""Entry point: `kiln-gateway` or `python -m kiln_gateway`."""

from __future__ import annotations

import logging

import uvicorn

from kiln_gateway.app import create_app
from kiln_gateway.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port, log_level="info")


if __name__ == "__main__":
    main()
