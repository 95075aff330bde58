"""Entry point: `kiln-gateway` or `python -m kiln_gateway`."""

from __future__ import annotations

import logging

from kiln_gateway import bootstrap


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway %(levelname)s %(name)s: %(message)s")
    bootstrap.main()


if __name__ == "__main__":
    main()
