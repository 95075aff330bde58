"""Entry point: `kiln-gateway` or `python -m kiln_gateway`."""

from __future__ import annotations

import logging

import uvicorn

from kiln_gateway.app import create_app
from kiln_gateway.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    # uvicorn's own proxy handling is off: by default it believes X-Forwarded-For from 127.0.0.1,
    # which lets any local process pose as any client. The gateway decides from trusted_proxies.
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port, log_level="info",
                proxy_headers=False)


if __name__ == "__main__":
    main()
